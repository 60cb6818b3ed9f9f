package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// The pre-auth command grammar the proxy needs (RFC 3501 section 9):
// tag SP command *(SP argument) CRLF, where an argument is an atom, a quoted
// string, a literal ({N} synchronizing, {N+} non-synchronizing, RFC 7888) or
// a parenthesized list of those (for ID).

// argKind is the syntactic form an argument arrived in.
type argKind int

const (
	argAtom argKind = iota
	argString
	argList
)

// arg is one parsed command argument.
type arg struct {
	kind argKind
	s    string // atom or string value
	list []arg  // argList elements
}

// command is one parsed pre-auth command.
type command struct {
	tag  string
	name string // upper case
	args []arg
}

// maxLiteralsPerCommand bounds how many literals one command may carry, so
// a client cannot chain continuation lines forever.
const maxLiteralsPerCommand = 8

// maxListDepth bounds nested parenthesized lists.
const maxListDepth = 8

// errLineTooLong is returned when a line exceeds the configured limit.
var errLineTooLong = errors.New("line too long")

// syntaxError is a malformed command. tag is empty when even the tag could
// not be read. fatal means the connection cannot be resynchronized (data
// may follow that we did not read), so the session must end.
type syntaxError struct {
	tag   string
	msg   string
	code  string // optional RFC 5530 code, e.g. TOOBIG
	fatal bool
}

func (e *syntaxError) Error() string { return e.msg }

// commandReader reads pre-auth commands from a client.
type commandReader struct {
	br *bufio.Reader
	// cont asks the client for a synchronizing literal's data.
	cont       func() error
	maxLine    int
	maxLiteral int
}

// read returns the next command. Errors are *syntaxError for malformed
// input, errLineTooLong, or I/O errors.
func (r *commandReader) read() (*command, error) {
	line, err := readLine(r.br, r.maxLine)
	if err != nil {
		return nil, err
	}
	p := &commandParser{r: r, buf: line}
	return p.command()
}

// readLine reads one line of at most max bytes (excluding CRLF) and returns
// it without its line ending. A bare LF is accepted as a line ending.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > max+2 {
			return nil, errLineTooLong
		}
		line = append(line, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > max { // a bare LF ending left room for one more byte
		return nil, errLineTooLong
	}
	return line, nil
}

type commandParser struct {
	r        *commandReader
	buf      []byte
	pos      int
	tag      string
	literals int
}

func (p *commandParser) fail(format string, args ...any) error {
	return &syntaxError{tag: p.tag, msg: fmt.Sprintf(format, args...)}
}

func (p *commandParser) command() (*command, error) {
	tag := p.atom(isTagChar)
	if tag == "" {
		return nil, &syntaxError{msg: "missing command tag", fatal: true}
	}
	p.tag = tag
	if !p.consume(' ') {
		return nil, p.fail("missing command name")
	}
	name := p.atom(isAtomChar)
	if name == "" {
		return nil, p.fail("missing command name")
	}
	cmd := &command{tag: tag, name: strings.ToUpper(name)}
	for !p.atEnd() {
		if !p.consume(' ') {
			return nil, p.fail("expected a space before argument %d", len(cmd.args)+1)
		}
		a, err := p.arg(0)
		if err != nil {
			return nil, err
		}
		cmd.args = append(cmd.args, a)
	}
	return cmd, nil
}

func (p *commandParser) atEnd() bool { return p.pos >= len(p.buf) }

func (p *commandParser) peek() byte { return p.buf[p.pos] }

func (p *commandParser) consume(b byte) bool {
	if p.atEnd() || p.buf[p.pos] != b {
		return false
	}
	p.pos++
	return true
}

func (p *commandParser) atom(valid func(byte) bool) string {
	start := p.pos
	for !p.atEnd() && valid(p.peek()) {
		p.pos++
	}
	return string(p.buf[start:p.pos])
}

func (p *commandParser) arg(depth int) (arg, error) {
	if p.atEnd() {
		return arg{}, p.fail("missing argument")
	}
	switch p.peek() {
	case '"':
		s, err := p.quoted()
		return arg{kind: argString, s: s}, err
	case '{':
		s, err := p.literal()
		return arg{kind: argString, s: s}, err
	case '(':
		if depth >= maxListDepth {
			return arg{}, p.fail("lists nested too deeply")
		}
		p.pos++
		var list []arg
		for !p.consume(')') {
			if len(list) > 0 && !p.consume(' ') {
				return arg{}, p.fail("expected a space or ) in list")
			}
			a, err := p.arg(depth + 1)
			if err != nil {
				return arg{}, err
			}
			list = append(list, a)
		}
		return arg{kind: argList, list: list}, nil
	}
	a := p.atom(isAstringChar)
	if a == "" {
		return arg{}, p.fail("unexpected character %q", p.peek())
	}
	return arg{kind: argAtom, s: a}, nil
}

func (p *commandParser) quoted() (string, error) {
	p.pos++ // opening quote
	// Without escapes (the usual case), the string is one slice of the
	// line: one copy, and no growing buffer left behind with a password's
	// bytes in it.
	if n := bytes.IndexAny(p.buf[p.pos:], "\"\\\r\n\x00"); n >= 0 && p.buf[p.pos+n] == '"' {
		s := string(p.buf[p.pos : p.pos+n])
		p.pos += n + 1
		return s, nil
	}
	var sb strings.Builder
	for {
		if p.atEnd() {
			return "", p.fail("unterminated quoted string")
		}
		b := p.peek()
		p.pos++
		switch b {
		case '"':
			return sb.String(), nil
		case '\\':
			if p.atEnd() || (p.peek() != '\\' && p.peek() != '"') {
				return "", p.fail("bad escape in quoted string")
			}
			sb.WriteByte(p.peek())
			p.pos++
		case '\r', '\n', 0:
			return "", p.fail("control character in quoted string")
		default:
			sb.WriteByte(b)
		}
	}
}

// literal reads {N} or {N+} at the end of the current line, then N bytes,
// then the rest of the command from the next line.
func (p *commandParser) literal() (string, error) {
	end := bytes.IndexByte(p.buf[p.pos:], '}')
	if end < 0 || p.pos+end+1 != len(p.buf) {
		return "", p.fail("literal must end the line")
	}
	spec := string(p.buf[p.pos+1 : p.pos+end])
	nonSync := strings.HasSuffix(spec, "+")
	spec = strings.TrimSuffix(spec, "+")
	n, err := strconv.ParseUint(spec, 10, 32)
	if err != nil || spec == "" || spec[0] == '+' {
		return "", &syntaxError{tag: p.tag, msg: "bad literal size", fatal: nonSync}
	}
	p.literals++
	if n > uint64(p.r.maxLiteral) || p.literals > maxLiteralsPerCommand {
		// A synchronizing literal was not sent yet: refusing it keeps the
		// session in step. A non-synchronizing one is already on its way.
		return "", &syntaxError{tag: p.tag, msg: "literal too large", code: "TOOBIG", fatal: nonSync}
	}
	if !nonSync {
		if err := p.r.cont(); err != nil {
			return "", err
		}
	}
	data, err := readLiteral(p.r.br, int(n))
	if err != nil {
		return "", fmt.Errorf("reading literal: %w", err)
	}
	rest, err := readLine(p.r.br, p.r.maxLine)
	if err != nil {
		return "", err
	}
	p.buf, p.pos = rest, 0
	return string(data), nil
}

// literalChunk is how much of a literal is read (and allocated) at a time.
const literalChunk = 4096

// readLiteral reads n bytes, growing its buffer as they arrive rather than
// allocating n up front: a client that announces a large literal and sends
// nothing costs no more than its command line.
func readLiteral(br *bufio.Reader, n int) ([]byte, error) {
	data := make([]byte, 0, min(n, literalChunk))
	for len(data) < n {
		k := min(n-len(data), literalChunk)
		data = slices.Grow(data, k)
		got, err := io.ReadFull(br, data[len(data):len(data)+k])
		data = data[:len(data)+got]
		if err != nil {
			return nil, err
		}
	}
	return data, nil
}

// isAtomChar reports ATOM-CHAR: any CHAR except atom-specials (RFC 3501).
func isAtomChar(b byte) bool {
	switch b {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return b > 0x1f && b < 0x7f
}

// isAstringChar reports ASTRING-CHAR: ATOM-CHAR or resp-specials (']').
func isAstringChar(b byte) bool { return isAtomChar(b) || b == ']' }

// isTagChar reports the characters a tag may hold: ASTRING-CHAR except '+'.
func isTagChar(b byte) bool { return isAstringChar(b) && b != '+' }
