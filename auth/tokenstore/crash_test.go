package tokenstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test runs the test binary itself as a child process
// (TestStoreCrashChild) that rewrites one record in a loop, and SIGKILLs it
// at varying points of that loop.
const (
	crashChildEnv = "IOP_CRASH_CHILD" // the store directory, in the child
	crashLogin    = "crash@contoso.test"
	crashPassword = "crash test local password"
	// crashKills is how many children are killed in all, spread over
	// crashDirs independent store directories that run side by side.
	crashKills = 60
	crashDirs  = 3
	// crashMaxLines bounds how many progress lines the parent waits for
	// before a kill.
	crashMaxLines = 16
)

var crashKDF = KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// crashToken is the refresh token of generation g: the record of
// generation g must hold exactly this one.
func crashToken(g uint64) string { return "rt-" + strconv.FormatUint(g, 10) }

// TestStoreCrashChild is the child process of TestStoreCrash and skips
// otherwise. It opens the record in $IOP_CRASH_CHILD and updates it in a
// loop, each time to generation g with refresh token "rt-g", printing
// "begin g" before and "done g" after each Update. It runs until killed
// (or for a minute, should its parent vanish without closing the pipe).
func TestStoreCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("child process of TestStoreCrash")
	}
	fail := func(format string, args ...any) {
		fmt.Printf("error "+format+"\n", args...)
		os.Exit(3)
	}
	s, err := New(dir, &Options{KDF: crashKDF})
	if err != nil {
		fail("New: %v", err)
	}
	u, err := s.Open(crashLogin, crashPassword)
	if err != nil {
		fail("Open: %v", err)
	}
	if want := crashToken(u.Info.Generation); u.Secret.RefreshToken != want {
		fail("generation %d holds %q, want %q", u.Info.Generation, u.Secret.RefreshToken, want)
	}
	// os.Stdout is unbuffered: each line is one write(2), in the pipe
	// before the next step starts.
	fmt.Printf("ready %d\n", u.Info.Generation)
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		g := u.Info.Generation + 1
		fmt.Printf("begin %d\n", g)
		if err := s.Update(u, Secret{RefreshToken: crashToken(g)}); err != nil {
			fail("Update to generation %d: %v", g, err)
		}
		if u.Info.Generation != g {
			fail("Update left generation %d, want %d", u.Info.Generation, g)
		}
		fmt.Printf("done %d\n", g)
	}
	fail("not killed within a minute")
}

// crashRun is what one killed child reported.
type crashRun struct {
	ready     uint64 // generation the child opened
	lastBegin uint64 // newest generation it started to write
	lastDone  uint64 // newest generation it reported written (durable)
}

// runCrashChild starts a child on dir, reads its progress until the
// wantLines-th line, SIGKILLs it there, and returns what it reported,
// including lines it wrote before it died.
func runCrashChild(ctx context.Context, dir string, wantLines int) (crashRun, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestStoreCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return crashRun{}, err
	}
	if err := cmd.Start(); err != nil {
		return crashRun{}, err
	}
	var run crashRun
	var readErr error
	killed := false
	lines := 0
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		word, num, _ := strings.Cut(sc.Text(), " ")
		g, perr := strconv.ParseUint(num, 10, 64)
		switch {
		case word == "ready" && perr == nil:
			run.ready = g
		case word == "begin" && perr == nil:
			run.lastBegin = g
		case word == "done" && perr == nil:
			if g != run.lastBegin {
				readErr = fmt.Errorf("child reported done %d after begin %d", g, run.lastBegin)
			}
			run.lastDone = g
		default:
			readErr = fmt.Errorf("child: %s", sc.Text())
		}
		if lines++; lines == wantLines && !killed {
			// Killed while it goes on with the next step: mid-Update
			// after a "begin", between Updates or early in the next one
			// after a "done".
			cmd.Process.Kill()
			killed = true
		}
	}
	if err := sc.Err(); err != nil && readErr == nil {
		readErr = fmt.Errorf("reading child output: %w", err)
	}
	if !killed {
		cmd.Process.Kill()
	}
	werr := cmd.Wait()
	if readErr != nil {
		return run, fmt.Errorf("%w (stderr: %s)", readErr, stderr.String())
	}
	if !killed {
		return run, fmt.Errorf("child ended after %d lines without being killed: %v (stderr: %s)", lines, werr, stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(werr, &exit) {
		return run, fmt.Errorf("child: %v", werr)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return run, fmt.Errorf("child did not die of SIGKILL: %v (stderr: %s)", werr, stderr.String())
	}
	if run.ready == 0 {
		return run, errors.New("child never opened the record")
	}
	return run, nil
}

// TestStoreCrash kills a process in the middle of rewriting a record, many
// times, and checks after each kill that the record opens with the
// password and holds the old or the new refresh token, never a corrupt or
// missing record: every write the child reported is there (a rotated
// refresh token is never lost), and at most the one write it had started
// without reporting it. Temporary files left by the kills never stop a
// later write and are never taken for the record.
func TestStoreCrash(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("in the child")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	type stats struct {
		kills, midWrite, newLanded, oldKept int
		leftovers                           []string
		generation                          uint64
	}
	results := make([]stats, crashDirs)
	dirs := make([]string, crashDirs)
	for d := range dirs {
		dirs[d] = filepath.Join(t.TempDir(), "state")
	}
	var wg sync.WaitGroup
	for d := range crashDirs {
		wg.Go(func() {
			st := &results[d]
			rng := rand.New(rand.NewPCG(seed, uint64(d)))
			dir := dirs[d]
			s, err := New(dir, &Options{KDF: crashKDF})
			if err != nil {
				t.Errorf("New: %v", err)
				return
			}
			if _, err := s.Create(crashLogin, crashPassword, Secret{RefreshToken: crashToken(1)}); err != nil {
				t.Errorf("Create: %v", err)
				return
			}
			seen := uint64(1) // generation the parent last found on disk
			for i := d; i < crashKills; i += crashDirs {
				// Line 1 is "ready", then "begin g" and "done g" pairs: 1
				// kills as soon as the record is open, an even count just
				// after a "begin" (most likely inside that Update), an odd
				// one just after a "done" (between Updates or early in
				// the next).
				lines := 1 + rng.IntN(crashMaxLines)
				run, err := runCrashChild(ctx, dir, lines)
				if err != nil {
					t.Errorf("dir %d, kill %d after %d lines: %v", d, i, lines, err)
					return
				}
				st.kills++
				if run.ready != seen {
					t.Errorf("dir %d, kill %d: child opened generation %d, the parent last saw %d", d, i, run.ready, seen)
				}
				// Open with a fresh Store each time: no key cache, as after
				// a restart.
				fresh, err := New(dir, &Options{KDF: crashKDF})
				if err != nil {
					t.Errorf("New: %v", err)
					return
				}
				u, err := fresh.Open(crashLogin, crashPassword)
				if err != nil {
					t.Errorf("dir %d, kill %d after %d lines (%+v): record does not open: %v", d, i, lines, run, err)
					return
				}
				g := u.Info.Generation
				if want := crashToken(g); u.Secret.RefreshToken != want {
					t.Errorf("dir %d, kill %d: generation %d holds %q, want %q", d, i, g, u.Secret.RefreshToken, want)
				}
				minGen := max(run.lastDone, run.ready)
				maxGen := max(run.lastBegin, run.ready)
				if g < minGen {
					t.Errorf("dir %d, kill %d: record has generation %d, but the child reported %d written: a saved refresh token was lost",
						d, i, g, minGen)
				}
				if g > maxGen {
					t.Errorf("dir %d, kill %d: record has generation %d, the child never started to write more than %d", d, i, g, maxGen)
				}
				if run.lastBegin > run.lastDone {
					st.midWrite++
					if g == run.lastBegin {
						st.newLanded++
					} else {
						st.oldKept++
					}
				}
				seen = g
			}
			st.generation = seen
			// The next writer is not stopped by what the kills left, and
			// Open ignores it.
			u, err := s.Open(crashLogin, crashPassword)
			if err != nil {
				t.Errorf("dir %d: Open after the kills: %v", d, err)
				return
			}
			if err := s.Update(u, Secret{RefreshToken: crashToken(seen + 1)}); err != nil {
				t.Errorf("dir %d: Update after the kills: %v", d, err)
				return
			}
			fresh, err := New(dir, &Options{KDF: crashKDF})
			if err != nil {
				t.Errorf("New: %v", err)
				return
			}
			u2, err := fresh.Open(crashLogin, crashPassword)
			if err != nil || u2.Secret.RefreshToken != crashToken(seen+1) || u2.Info.Generation != seen+1 {
				t.Errorf("dir %d: after a last Update: %+v, %v; want generation %d", d, u2, err, seen+1)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Errorf("reading %s: %v", dir, err)
				return
			}
			record := filepath.Base(s.Path(crashLogin))
			for _, e := range entries {
				if e.Name() == record {
					continue
				}
				st.leftovers = append(st.leftovers, e.Name())
				if !strings.HasPrefix(e.Name(), "."+record+".tmp") {
					t.Errorf("dir %d: unexpected file %s in the store", d, e.Name())
				}
				if info, err := e.Info(); err == nil && info.Mode().Perm() != 0o600 {
					t.Errorf("dir %d: leftover %s has mode %v, want 0600", d, e.Name(), info.Mode().Perm())
				}
			}
			if len(st.leftovers) > st.kills {
				t.Errorf("dir %d: %d temporary files after %d kills", d, len(st.leftovers), st.kills)
			}
		})
	}
	wg.Wait()
	var total stats
	for _, st := range results {
		total.kills += st.kills
		total.midWrite += st.midWrite
		total.newLanded += st.newLanded
		total.oldKept += st.oldKept
		total.leftovers = append(total.leftovers, st.leftovers...)
		total.generation += st.generation
	}
	t.Logf("%d kills in %v: %d during an Update (new record in place %d times, old kept %d times), %d generations written, %d temporary files left",
		total.kills, time.Since(start).Round(time.Millisecond), total.midWrite, total.newLanded, total.oldKept,
		total.generation, len(total.leftovers))
	if !t.Failed() && total.kills < 50 {
		t.Errorf("only %d kills, want at least 50", total.kills)
	}
}
