package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestFlagsRefused: out-of-range flags and a proxy off loopback are usage
// errors; nothing is dialled.
func TestFlagsRefused(t *testing.T) {
	for _, args := range [][]string{
		{"-collectors", "0"},
		{"-collectors", "100000"},
		{"-duration", "6m"},
		{"-duration", "0s"},
		{"-message-size", "0"},
		{"-slices", "0"},
		{"-runs", "0"},
		{"-runs", "21"},
		{"-addr", "192.0.2.1:143", "-login", "x"},
		{"-addr", "127.0.0.1:1143"},
		{"-login", "x"},
		{"extra"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(args, &stdout, &stderr)
		var usage usageError
		if !errors.As(err, &usage) {
			t.Errorf("%q: err = %v, want a usage error", args, err)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: printed %q", args, stdout.String())
		}
	}
}

// TestShortRun drives a few collectors in process for a moment, twice:
// the run ends by itself, both modes complete sessions without errors, and
// the report has each run's ratios and their medians.
func TestShortRun(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run([]string{"-collectors", "2", "-duration", "400ms", "-message-size", "2048", "-runs", "2"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	out := stdout.String()
	for _, want := range []string{"\ndirect ", "\nproxy ", "proxy vs direct: logins/s ", "CPU per session ",
		"\nrun 2 of 2", "\nmedian of 2 runs (range): logins/s "} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "first error") {
		t.Errorf("sessions failed:\n%s\nstderr:\n%s", out, &stderr)
	}
}
