package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"
)

// input reads what authorize and check ask for: from a terminal with
// prompts (passwords without echo), else line by line from stdin.
type input struct {
	tty     bool
	fd      int
	lines   *bufio.Reader
	prompts io.Writer
}

// maxInputLine bounds one line of stdin.
const maxInputLine = 64 * 1024

func newInput(stdin io.Reader, prompts io.Writer) *input {
	in := &input{lines: bufio.NewReaderSize(stdin, 4096), prompts: prompts}
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		in.tty, in.fd = true, int(f.Fd())
	}
	return in
}

// line reads one line, without its line end.
func (in *input) line(prompt string) (string, error) {
	if in.tty {
		fmt.Fprint(in.prompts, prompt)
	}
	var b []byte
	for {
		chunk, isPrefix, err := in.lines.ReadLine()
		b = append(b, chunk...)
		if len(b) > maxInputLine {
			return "", fmt.Errorf("line longer than %d bytes", maxInputLine)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if !isPrefix {
			return strings.TrimRight(string(b), "\r"), nil
		}
	}
}

// password reads a password: without echo on a terminal, else one line.
// Errors never contain it.
func (in *input) password(prompt, what string) (string, error) {
	var pw string
	if in.tty {
		fmt.Fprint(in.prompts, prompt)
		b, err := term.ReadPassword(in.fd)
		fmt.Fprintln(in.prompts)
		if err != nil {
			return "", fmt.Errorf("reading the %s: %w", what, err)
		}
		pw = string(b)
	} else {
		line, err := in.line("")
		if err != nil {
			return "", fmt.Errorf("reading the %s from stdin: %w", what, err)
		}
		pw = line
	}
	if strings.TrimSpace(pw) == "" {
		return "", fmt.Errorf("the %s is empty", what)
	}
	return pw, nil
}

// newPassword asks for the local password of login twice on a terminal,
// once from stdin.
func (in *input) newPassword(login string) (string, error) {
	pw, err := in.password(fmt.Sprintf("Local password for %s (the collector will log in with it): ", login), "local password")
	if err != nil || !in.tty {
		return pw, err
	}
	again, err := in.password("The same password again: ", "local password")
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", errors.New("the two passwords differ; nothing was stored")
	}
	return pw, nil
}
