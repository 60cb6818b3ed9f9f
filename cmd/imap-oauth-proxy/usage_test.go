package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestUsageNamesEveryFlag: every flag a command takes (as its -h lists
// them) is in that command's lines of the usage text and in its synopsis
// in imap-oauth-proxy(1).
func TestUsageNamesEveryFlag(t *testing.T) {
	page, err := os.ReadFile("../../docs/imap-oauth-proxy.1.scd")
	if err != nil {
		t.Fatal(err)
	}
	flagRE := regexp.MustCompile(`(?m)^  -([a-z-]+)`)
	for _, command := range []string{"serve", "token import", "authorize", "passwd", "check", "status", "store init", "store migrate"} {
		c := newCLI(t)
		r := c.run("", append(strings.Fields(command), "-h")...)
		flags := flagRE.FindAllStringSubmatch(r.stderr, -1)
		if len(flags) == 0 {
			t.Errorf("%s -h lists no flags:\n%s", command, r.stderr)
		}
		usageLines := usageOf(command)
		synopsis := synopsisOf(string(page), command)
		if usageLines == "" || synopsis == "" {
			t.Errorf("%s: usage %q, synopsis %q: want both", command, usageLines, synopsis)
			continue
		}
		for _, f := range flags {
			if !strings.Contains(usageLines, "-"+f[1]) {
				t.Errorf("usage of %s does not name -%s: %q", command, f[1], usageLines)
			}
			if !strings.Contains(synopsis, "*-"+f[1]+"*") {
				t.Errorf("the synopsis of %s in imap-oauth-proxy(1) does not name -%s: %q", command, f[1], synopsis)
			}
		}
	}
}

// usageOf returns command's line in usage and the continuation lines
// below it.
func usageOf(command string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(usage, "\n") {
		switch {
		case strings.HasPrefix(line, "  "+command+" "):
			in = true
		case in && !strings.HasPrefix(line, "   "):
			return b.String()
		}
		if in {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// synopsisOf returns command's synopsis line in the man page source.
func synopsisOf(page, command string) string {
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, "*imap-oauth-proxy "+command+"*") {
			return line
		}
	}
	return ""
}
