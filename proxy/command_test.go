package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// Limits for the commandReader tests: small, so the boundaries are cheap
// to reach.
const (
	testMaxLine    = 64
	testMaxLiteral = 16
)

// errReadBeforeContinuation is what gatedReader returns when the parser
// reads data the client would only send after a continuation request.
var errReadBeforeContinuation = errors.New("read past the data sent before the continuation request")

// gatedReader plays a client that waits for "+" before sending a
// synchronizing literal: segment i+1 becomes readable only after the i-th
// continuation request. Reading past the last segment gives io.EOF.
type gatedReader struct {
	segments []string
	open     int // segments[:open] may be read
	cur      int // segment being read
	off      int // offset in segments[cur]
}

func (g *gatedReader) Read(p []byte) (int, error) {
	for g.cur < len(g.segments) && g.off == len(g.segments[g.cur]) {
		if g.cur+1 >= len(g.segments) {
			return 0, io.EOF
		}
		if g.cur+1 >= g.open {
			return 0, errReadBeforeContinuation
		}
		g.cur, g.off = g.cur+1, 0
	}
	if g.cur >= len(g.segments) {
		return 0, io.EOF
	}
	n := copy(p, g.segments[g.cur][g.off:])
	g.off += n
	return n, nil
}

// commandReaderTest is one input to commandReader.read. segments[0] is what
// the client sends first; each later segment is sent after one more
// continuation request ("+"), as a client waiting for it would.
type commandReaderTest struct {
	name       string
	segments   []string
	maxLine    int // testMaxLine when 0
	maxLiteral int // testMaxLiteral when 0
	want       *command
	// err is the expected error: a *syntaxError (tag, code and fatal are
	// compared, not the message) or a sentinel matched with errors.Is.
	err   error
	conts int // continuation requests expected
	// rest, when not nil, is what must be left unread after the command.
	rest *string
}

func atomArg(s string) arg    { return arg{kind: argAtom, s: s} }
func strArg(s string) arg     { return arg{kind: argString, s: s} }
func listArg(l ...arg) arg    { return arg{kind: argList, list: l} }
func strPtr(s string) *string { return &s }
func wantCmd(tag, name string, args ...arg) *command {
	return &command{tag: tag, name: name, args: args}
}

// nested returns depth nested parentheses around x, e.g. "((x))".
func nestedParens(depth int) string {
	return strings.Repeat("(", depth) + "x" + strings.Repeat(")", depth)
}

func nestedArg(depth int) arg {
	a := atomArg("x")
	for i := 0; i < depth; i++ {
		a = listArg(a)
	}
	return a
}

// literalChain returns a command with n one-byte literals, each sent the
// way sync says, as segments for gatedReader.
func literalChain(n int, sync bool) []string {
	segs := []string{"a X"}
	for i := 0; i < n; i++ {
		if sync {
			segs[len(segs)-1] += " {1}\r\n"
			segs = append(segs, "v")
		} else {
			segs[len(segs)-1] += " {1+}\r\nv"
		}
	}
	segs[len(segs)-1] += "\r\n"
	return segs
}

// exactLine returns "a NOOP xxx…" padded to exactly n bytes.
func exactLine(n int) string {
	const prefix = "a NOOP "
	return prefix + strings.Repeat("x", n-len(prefix))
}

var commandReaderTests = []commandReaderTest{
	// Atoms.
	{name: "no arguments", segments: []string{"a1 NOOP\r\n"}, want: wantCmd("a1", "NOOP")},
	{name: "name upper-cased", segments: []string{"a1 capability\r\n"}, want: wantCmd("a1", "CAPABILITY")},
	{name: "atom arguments", segments: []string{"A001 LOGIN fred p@ss!#w]rd\r\n"},
		want: wantCmd("A001", "LOGIN", atomArg("fred"), atomArg("p@ss!#w]rd"))},
	{name: "tag with odd characters", segments: []string{"a.1-x NOOP\r\n"}, want: wantCmd("a.1-x", "NOOP")},
	{name: "bare LF line ending", segments: []string{"a1 NOOP\nb1 NOOP\n"}, want: wantCmd("a1", "NOOP"), rest: strPtr("b1 NOOP\n")},
	{name: "next command stays buffered", segments: []string{"a1 NOOP\r\na2 LOGOUT\r\n"},
		want: wantCmd("a1", "NOOP"), rest: strPtr("a2 LOGOUT\r\n")},

	// Quoted strings.
	{name: "quoted", segments: []string{`a LOGIN "fred" "a b"` + "\r\n"},
		want: wantCmd("a", "LOGIN", strArg("fred"), strArg("a b"))},
	{name: "quoted with escapes", segments: []string{`a LOGIN "fr\"ed" "pa\\ss\"\\"` + "\r\n"},
		want: wantCmd("a", "LOGIN", strArg(`fr"ed`), strArg(`pa\ss"\`))},
	{name: "empty quoted", segments: []string{`a LOGIN "" ""` + "\r\n"},
		want: wantCmd("a", "LOGIN", strArg(""), strArg(""))},
	{name: "quoted 8-bit", segments: []string{"a LOGIN \"j\xc3\xb6rg\" x\r\n"},
		want: wantCmd("a", "LOGIN", strArg("j\xc3\xb6rg"), atomArg("x"))},
	{name: "bad escape", segments: []string{`a LOGIN "a\b" x` + "\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "escape at end of line", segments: []string{`a LOGIN "a\` + "\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "unterminated quote", segments: []string{`a LOGIN "abc` + "\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "NUL in quoted", segments: []string{"a LOGIN \"a\x00b\" x\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "CR in quoted", segments: []string{"a LOGIN \"a\rb\" x\r\n"}, err: &syntaxError{tag: "a"}},

	// Synchronizing literals: exactly one "+" each, data kept byte for byte.
	{name: "sync literal", segments: []string{"a LOGIN fred {11}\r\n", "p\r\nw\x00\xff\xe9 rd\n\r\n"},
		want: wantCmd("a", "LOGIN", atomArg("fred"), strArg("p\r\nw\x00\xff\xe9 rd\n")), conts: 1, rest: strPtr("")},
	{name: "sync literal then more arguments", segments: []string{"a LOGIN {4}\r\n", "fred \"pw\"\r\nb NOOP\r\n"},
		want: wantCmd("a", "LOGIN", strArg("fred"), strArg("pw")), conts: 1, rest: strPtr("b NOOP\r\n")},
	{name: "two sync literals", segments: []string{"a LOGIN {4}\r\n", "fred {3}\r\n", "p w\r\n"},
		want: wantCmd("a", "LOGIN", strArg("fred"), strArg("p w")), conts: 2},
	{name: "empty sync literal", segments: []string{"a LOGIN {0}\r\n", " x\r\n"},
		want: wantCmd("a", "LOGIN", strArg(""), atomArg("x")), conts: 1},
	{name: "sync literal at the size limit", segments: []string{"a LOGIN x {16}\r\n", "0123456789abcdef\r\n"},
		want: wantCmd("a", "LOGIN", atomArg("x"), strArg("0123456789abcdef")), conts: 1},
	{name: "sync literal with leading zeros", segments: []string{"a LOGIN x {003}\r\n", "abc\r\n"},
		want: wantCmd("a", "LOGIN", atomArg("x"), strArg("abc")), conts: 1},

	// Non-synchronizing literals (RFC 7888): no "+".
	{name: "LITERAL+", segments: []string{"a LOGIN {4+}\r\nfred {5+}\r\np\r\n\x00w\r\n"},
		want: wantCmd("a", "LOGIN", strArg("fred"), strArg("p\r\n\x00w")), conts: 0},
	{name: "LITERAL+ then sync", segments: []string{"a LOGIN {4+}\r\nfred {2}\r\n", "pw\r\n"},
		want: wantCmd("a", "LOGIN", strArg("fred"), strArg("pw")), conts: 1},

	// Lists (ID).
	{name: "ID with list and NIL", segments: []string{`a ID ("name" "Thunderbird" "version" NIL)` + "\r\n"},
		want: wantCmd("a", "ID", listArg(strArg("name"), strArg("Thunderbird"), strArg("version"), atomArg("NIL")))},
	{name: "ID NIL", segments: []string{"a ID NIL\r\n"}, want: wantCmd("a", "ID", atomArg("NIL"))},
	{name: "empty list", segments: []string{"a ID ()\r\n"}, want: wantCmd("a", "ID", listArg())},
	{name: "literal in list", segments: []string{"a ID ({4+}\r\nname \"x\")\r\n"},
		want: wantCmd("a", "ID", listArg(strArg("name"), strArg("x")))},
	{name: "lists nested to the limit", segments: []string{"a ID " + nestedParens(maxListDepth) + "\r\n"},
		want: wantCmd("a", "ID", nestedArg(maxListDepth))},
	{name: "lists nested too deeply", segments: []string{"a ID " + nestedParens(maxListDepth+1) + "\r\n"},
		err: &syntaxError{tag: "a"}},
	{name: "unterminated list", segments: []string{"a ID (x\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "list without space", segments: []string{`a ID ("a""b")` + "\r\n"}, err: &syntaxError{tag: "a"}},

	// Literal errors.
	{name: "literal not at end of line", segments: []string{"a LOGIN {4} x\r\n", "fred\r\n"},
		err: &syntaxError{tag: "a"}, conts: 0},
	{name: "sync literal too large", segments: []string{"a LOGIN x {17}\r\nb NOOP\r\n"},
		err: &syntaxError{tag: "a", code: "TOOBIG"}, conts: 0, rest: strPtr("b NOOP\r\n")},
	{name: "huge sync literal", segments: []string{"a LOGIN x {4294967295}\r\n"},
		err: &syntaxError{tag: "a", code: "TOOBIG"}, conts: 0},
	{name: "LITERAL+ too large", segments: []string{"a LOGIN x {17+}\r\n0123456789abcdefg\r\n"},
		err: &syntaxError{tag: "a", code: "TOOBIG", fatal: true}},
	{name: "literals at the per-command limit", segments: literalChain(maxLiteralsPerCommand, true),
		want: wantCmd("a", "X", repeatArg(strArg("v"), maxLiteralsPerCommand)...), conts: maxLiteralsPerCommand},
	{name: "too many sync literals", segments: literalChain(maxLiteralsPerCommand+1, true),
		err: &syntaxError{tag: "a", code: "TOOBIG"}, conts: maxLiteralsPerCommand},
	{name: "too many LITERAL+", segments: literalChain(maxLiteralsPerCommand+1, false),
		err: &syntaxError{tag: "a", code: "TOOBIG", fatal: true}},
	{name: "literal size -1", segments: []string{"a LOGIN x {-1}\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "literal size empty", segments: []string{"a LOGIN x {}\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "literal size 1a", segments: []string{"a LOGIN x {1a}\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "literal size +1", segments: []string{"a LOGIN x {+1}\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "literal size overflow", segments: []string{"a LOGIN x {99999999999}\r\n"}, err: &syntaxError{tag: "a"}},
	{name: "LITERAL+ size -1", segments: []string{"a LOGIN x {-1+}\r\n"}, err: &syntaxError{tag: "a", fatal: true}},
	{name: "LITERAL+ size empty", segments: []string{"a LOGIN x {+}\r\n"}, err: &syntaxError{tag: "a", fatal: true}},
	{name: "LITERAL+ size 1++", segments: []string{"a LOGIN x {1++}\r\n"}, err: &syntaxError{tag: "a", fatal: true}},

	// Tag and command name.
	{name: "empty line", segments: []string{"\r\n"}, err: &syntaxError{fatal: true}},
	{name: "missing tag", segments: []string{" NOOP\r\n"}, err: &syntaxError{fatal: true}},
	{name: "tag +", segments: []string{"+ NOOP\r\n"}, err: &syntaxError{fatal: true}},
	{name: "tag *", segments: []string{"* NOOP\r\n"}, err: &syntaxError{fatal: true}},
	{name: "missing command name", segments: []string{"a1\r\n"}, err: &syntaxError{tag: "a1"}},
	{name: "empty command name", segments: []string{"a1 \r\n"}, err: &syntaxError{tag: "a1"}},
	{name: "trailing space", segments: []string{"a1 NOOP \r\n"}, err: &syntaxError{tag: "a1"}},
	{name: "two spaces", segments: []string{"a1 LOGIN  x y\r\n"}, err: &syntaxError{tag: "a1"}},
	{name: "stray special", segments: []string{"a1 LOGIN x %\r\n"}, err: &syntaxError{tag: "a1"}},

	// Line length.
	{name: "line at the limit", segments: []string{exactLine(testMaxLine) + "\r\n"},
		want: wantCmd("a", "NOOP", atomArg(strings.Repeat("x", testMaxLine-len("a NOOP ")))), rest: strPtr("")},
	{name: "line one byte over the limit", segments: []string{exactLine(testMaxLine+1) + "\r\n"}, err: errLineTooLong},
	{name: "line at the limit, bare LF", segments: []string{exactLine(testMaxLine) + "\n"},
		want: wantCmd("a", "NOOP", atomArg(strings.Repeat("x", testMaxLine-len("a NOOP "))))},
	{name: "line one byte over the limit, bare LF", segments: []string{exactLine(testMaxLine+1) + "\n"}, err: errLineTooLong},
	{name: "line far over the limit", segments: []string{exactLine(10*testMaxLine) + "\r\n"}, err: errLineTooLong},
	{name: "line after a literal over the limit", segments: []string{"a LOGIN {1+}\r\nx " + strings.Repeat("y", testMaxLine) + "\r\n"},
		err: errLineTooLong},

	// Truncated input.
	{name: "EOF", segments: []string{""}, err: io.EOF},
	{name: "EOF mid-line", segments: []string{"a1 NOO"}, err: io.ErrUnexpectedEOF},
	{name: "EOF mid-literal", segments: []string{"a LOGIN x {10}\r\n", "abc"}, err: io.ErrUnexpectedEOF, conts: 1},
	{name: "EOF mid-LITERAL+", segments: []string{"a LOGIN x {10+}\r\nabc"}, err: io.ErrUnexpectedEOF},
}

func repeatArg(a arg, n int) []arg {
	var args []arg
	for i := 0; i < n; i++ {
		args = append(args, a)
	}
	return args
}

// checkErr reports whether got matches want as commandReaderTest.err
// describes it.
func checkErr(got, want error) error {
	if want == nil {
		if got != nil {
			return fmt.Errorf("error %v, want none", got)
		}
		return nil
	}
	if wantSyn, ok := want.(*syntaxError); ok {
		var syn *syntaxError
		if !errors.As(got, &syn) {
			return fmt.Errorf("error %v (%T), want a syntax error", got, got)
		}
		if syn.tag != wantSyn.tag || syn.code != wantSyn.code || syn.fatal != wantSyn.fatal {
			return fmt.Errorf("syntax error %q: tag %q code %q fatal %v, want tag %q code %q fatal %v",
				syn.msg, syn.tag, syn.code, syn.fatal, wantSyn.tag, wantSyn.code, wantSyn.fatal)
		}
		if syn.msg == "" {
			return errors.New("syntax error without a message")
		}
		return nil
	}
	if !errors.Is(got, want) {
		return fmt.Errorf("error %v, want %v", got, want)
	}
	return nil
}

func TestCommandReader(t *testing.T) {
	// 16 is bufio's smallest buffer: lines then span several ReadSlice
	// chunks.
	for _, bufSize := range []int{16, 4096} {
		for _, tc := range commandReaderTests {
			t.Run(fmt.Sprintf("%s/buf%d", tc.name, bufSize), func(t *testing.T) {
				g := &gatedReader{segments: tc.segments, open: 1}
				br := bufio.NewReaderSize(g, bufSize)
				conts := 0
				r := &commandReader{br: br, maxLine: tc.maxLine, maxLiteral: tc.maxLiteral,
					cont: func() error {
						conts++
						g.open++
						return nil
					}}
				if r.maxLine == 0 {
					r.maxLine = testMaxLine
				}
				if r.maxLiteral == 0 {
					r.maxLiteral = testMaxLiteral
				}
				got, err := r.read()
				if e := checkErr(err, tc.err); e != nil {
					t.Error(e)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("command = %+v, want %+v", got, tc.want)
				}
				if conts != tc.conts {
					t.Errorf("%d continuation requests, want %d", conts, tc.conts)
				}
				if tc.rest != nil {
					g.open = len(g.segments)
					rest, err := io.ReadAll(br)
					if err != nil {
						t.Fatal(err)
					}
					if string(rest) != *tc.rest {
						t.Errorf("left unread %q, want %q", rest, *tc.rest)
					}
				}
			})
		}
	}
}

// TestCommandReaderContinuationError: a failed continuation request ends
// the read with that error and consumes no literal data.
func TestCommandReaderContinuationError(t *testing.T) {
	errWrite := errors.New("write failed")
	br := bufio.NewReader(strings.NewReader("a LOGIN x {3}\r\nabc\r\n"))
	r := &commandReader{br: br, maxLine: testMaxLine, maxLiteral: testMaxLiteral,
		cont: func() error { return errWrite }}
	if c, err := r.read(); !errors.Is(err, errWrite) || c != nil {
		t.Fatalf("read = %+v, %v, want %v", c, err, errWrite)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "abc\r\n" {
		t.Errorf("left unread %q, want the literal data", rest)
	}
}

// TestCommandReaderResync: after a non-fatal syntax error the next command
// reads normally; this is what lets the session answer BAD and go on.
func TestCommandReaderResync(t *testing.T) {
	in := "a1 LOGIN x {99}\r\n" + `a2 LOGIN "a\b" x` + "\r\na3 ID (x\r\na4 NOOP\r\n"
	r := &commandReader{br: bufio.NewReader(strings.NewReader(in)), maxLine: testMaxLine, maxLiteral: testMaxLiteral,
		cont: func() error { t.Error("continuation requested"); return nil }}
	for _, tag := range []string{"a1", "a2", "a3"} {
		var syn *syntaxError
		if _, err := r.read(); !errors.As(err, &syn) || syn.fatal || syn.tag != tag {
			t.Fatalf("read = %v, want a non-fatal syntax error for %s", err, tag)
		}
	}
	if c, err := r.read(); err != nil || !reflect.DeepEqual(c, wantCmd("a4", "NOOP")) {
		t.Fatalf("read = %+v, %v, want a4 NOOP", c, err)
	}
	if _, err := r.read(); err != io.EOF {
		t.Fatalf("read at end = %v, want io.EOF", err)
	}
}

// Fuzz limits: small enough for the fuzzer to reach them.
const (
	fuzzMaxLine    = 128
	fuzzMaxLiteral = 64
)

// FuzzCommandReader feeds arbitrary client bytes to commandReader. It must
// not panic, must stay within its limits, and what it returns must read
// back the same when written out again.
func FuzzCommandReader(f *testing.F) {
	for _, s := range []string{
		"a1 CAPABILITY\r\n",
		"a1 NOOP\r\na2 LOGOUT\r\n",
		"A001 LOGIN fred secret\r\n",
		`a1 LOGIN "fred" "se\"cr\\et"` + "\r\n",
		"a1 LOGIN {4}\r\nfred {6}\r\nsecret\r\n",
		"a1 LOGIN {4+}\r\nfred {6+}\r\nsec\x00\xff\r\n",
		`a1 ID ("name" "Thunderbird" "version" "115.0" "vendor" NIL)` + "\r\n",
		"a1 ID NIL\r\n",
		"a1 AUTHENTICATE PLAIN AGNvbGxlY3RvcgBwdw==\r\n",
		"a1 STARTTLS\r\n",
		"a1 SELECT INBOX\r\n",
		"a1 ID ((((((((((x))))))))))\r\n",
		"a1 LOGIN x {999}\r\n",
		"a1 LOGIN x {65+}\r\n",
		"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"a1 LOGIN \"unterminated\r\n",
		"a1 X {1+}\r\na {1+}\r\nb {1+}\r\nc {1+}\r\nd {1+}\r\ne {1+}\r\nf {1+}\r\ng {1+}\r\nh {1+}\r\ni\r\n",
		"a1 NOOP\n" + strings.Repeat("x", fuzzMaxLine) + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		br := bufio.NewReaderSize(src, 16)
		conts := 0
		r := &commandReader{br: br, maxLine: fuzzMaxLine, maxLiteral: fuzzMaxLiteral,
			cont: func() error { conts++; return nil }}
		consumed := func() int { return len(data) - src.Len() - br.Buffered() }
		// One command is one line, then for each literal its data and
		// the next line; each line may end in CR LF (the limit excludes
		// it) and, with a bare LF, hold one more byte.
		const maxCommand = fuzzMaxLine + 2 + maxLiteralsPerCommand*(fuzzMaxLiteral+fuzzMaxLine+2)
		for {
			before, contsBefore := consumed(), conts
			c, err := r.read()
			if n := consumed() - before; n > maxCommand {
				t.Fatalf("one command consumed %d bytes, limit %d", n, maxCommand)
			}
			if n := conts - contsBefore; n > maxLiteralsPerCommand {
				t.Fatalf("%d continuation requests for one command", n)
			}
			if err != nil {
				var syn *syntaxError
				switch {
				case errors.As(err, &syn):
					if syn.msg == "" {
						t.Fatalf("syntax error without message")
					}
					if syn.code != "" && syn.code != "TOOBIG" {
						t.Fatalf("syntax error code %q", syn.code)
					}
					if !syn.fatal && syn.tag == "" {
						t.Fatalf("non-fatal syntax error %q without a tag to answer", syn.msg)
					}
					if syn.fatal {
						return
					}
					continue
				case errors.Is(err, errLineTooLong), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
					return
				default:
					t.Fatalf("unexpected error %v", err)
				}
			}
			checkFuzzCommand(t, c)
		}
	})
}

// checkFuzzCommand checks a parsed command's invariants and that it reads
// back unchanged from its canonical form.
func checkFuzzCommand(t *testing.T, c *command) {
	t.Helper()
	if c.tag == "" || c.name == "" || c.name != strings.ToUpper(c.name) {
		t.Fatalf("bad command %+v", c)
	}
	if len(c.tag)+1+len(c.name) > fuzzMaxLine {
		t.Fatalf("tag and name longer than a line: %+v", c)
	}
	var check func(a arg, depth int)
	check = func(a arg, depth int) {
		switch a.kind {
		case argAtom:
			if a.s == "" || len(a.s) > fuzzMaxLine {
				t.Fatalf("atom of %d bytes", len(a.s))
			}
		case argString:
			if len(a.s) > max(fuzzMaxLine, fuzzMaxLiteral) {
				t.Fatalf("string of %d bytes", len(a.s))
			}
		case argList:
			if depth >= maxListDepth {
				t.Fatalf("list nested %d deep", depth+1)
			}
			for _, e := range a.list {
				check(e, depth+1)
			}
		}
	}
	for _, a := range c.args {
		check(a, 0)
	}

	// Round trip: write the command with LITERAL+ for strings that cannot
	// be quoted and read it again with roomy limits.
	var sb strings.Builder
	sb.WriteString(c.tag + " " + c.name)
	var write func(a arg)
	write = func(a arg) {
		switch a.kind {
		case argAtom:
			sb.WriteString(a.s)
		case argString:
			if strings.ContainsAny(a.s, "\r\n\x00") {
				fmt.Fprintf(&sb, "{%d+}\r\n%s", len(a.s), a.s)
			} else {
				sb.WriteString(`"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a.s) + `"`)
			}
		case argList:
			sb.WriteByte('(')
			for i, e := range a.list {
				if i > 0 {
					sb.WriteByte(' ')
				}
				write(e)
			}
			sb.WriteByte(')')
		}
	}
	for _, a := range c.args {
		sb.WriteByte(' ')
		write(a)
	}
	sb.WriteString("\r\n")
	r := &commandReader{br: bufio.NewReader(strings.NewReader(sb.String())), maxLine: 64 * 1024,
		maxLiteral: fuzzMaxLiteral, cont: func() error { t.Fatal("continuation for LITERAL+"); return nil }}
	again, err := r.read()
	if err != nil || !reflect.DeepEqual(again, c) {
		t.Fatalf("round trip of %+v through %q = %+v, %v", c, sb.String(), again, err)
	}
}

// TestCommandReaderLiteralAsItArrives: a literal announced at the largest
// allowed size is read as it arrives: a client that announces it and
// sends a few bytes costs a few kilobytes, not the announced size.
func TestCommandReaderLiteralAsItArrives(t *testing.T) {
	const announced = 64 << 10
	in := fmt.Sprintf("a1 LOGIN {%d+}\r\nonly a few bytes", announced)
	r := &commandReader{br: bufio.NewReaderSize(strings.NewReader(in), 4096), maxLine: testMaxLine, maxLiteral: announced,
		cont: func() error { return nil }}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := r.read()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read = %v, want an unexpected EOF in the literal", err)
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated >= announced/2 {
		t.Errorf("reading a %d-byte literal of which a few bytes came allocated %d bytes", announced, allocated)
	}
}
