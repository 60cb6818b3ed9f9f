package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/health"
)

// cmdStatus lists every account with its health and a verdict (ok, needs
// authorization, expiring, never used), as a table or -json. It asks for
// no password: it reads the records' clear metadata, the health the
// daemon saved in the state directory, and the certificates of app-only
// credentials.
func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	cfg, err := config.Load(*fs.configPath)
	if err != nil {
		return err
	}
	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	entries, err := health.ReadFile(filepath.Join(cfg.Server.StateDir, health.FileName))
	if err != nil {
		return err
	}
	if cfg.Store.Type == config.StorePostgres {
		warnPendingSaves(stderr, spillDir(cfg))
	}
	now := time.Now()
	report, err := health.Report(cfg, health.Inputs{Records: store,
		Entries: func(login string) health.Entry { return entries[login] }}, now)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if report == nil {
			report = []health.Status{}
		}
		return enc.Encode(report)
	}
	printStatus(stdout, report, now)
	return nil
}

// warnPendingSaves warns about the records in dir, serve's spill
// directory: rotated tokens that this instance holds and the database has
// not taken yet.
func warnPendingSaves(w io.Writer, dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return // none spilled yet
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".token"); ok && !strings.HasPrefix(name, ".") {
			names = append(names, name)
		}
	}
	if len(names) > 0 {
		fmt.Fprintf(w, "warning: rotated token pending save to the database: %s (in %s; serve saves it once the database is reachable)\n",
			strings.Join(names, ", "), dir)
	}
}

// printStatus writes report as a table, then the reasons of each account
// that is not ok.
func printStatus(w io.Writer, report []health.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOGIN\tPROVIDER\tGRANT\tVERDICT\tLAST LOGIN\tLAST REFRESH\tACCESS TOKEN\tREFRESH TOKEN\tCERTIFICATE")
	for _, s := range report {
		lastLogin := ago(s.LastLogin, now)
		if s.LastLoginOutcome != "" {
			lastLogin += " " + s.LastLoginOutcome
		}
		refreshToken := "-"
		switch {
		case !s.Authorized:
			refreshToken = "none"
		case !s.RefreshTokenExpiry.IsZero():
			refreshToken = until("expires", "expired", s.RefreshTokenExpiry, now)
		case !s.RefreshTokenLapse.IsZero():
			refreshToken = until("lapses", "lapsed", s.RefreshTokenLapse, now)
		}
		access := "-"
		if !s.AccessTokenExpiry.IsZero() {
			access = until("expires", "expired", s.AccessTokenExpiry, now)
		}
		cert := "-"
		if !s.CertificateNotAfter.IsZero() {
			cert = until("expires", "expired", s.CertificateNotAfter, now)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Login, s.Provider, s.Grant, s.Verdict,
			lastLogin, ago(s.LastRefresh, now), access, refreshToken, cert)
	}
	tw.Flush()
	for _, s := range report {
		if len(s.Reasons) > 0 {
			fmt.Fprintf(w, "\n%s: %s\n  %s\n", s.Login, s.Verdict, strings.Join(s.Reasons, "\n  "))
		}
	}
}

// ago shows a past time as a date and how long ago it was; "never" if t
// is zero.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02T15:04Z") + " (" + span(now.Sub(t)) + " ago)"
}

// until shows when something ends: future or past, its date, and how
// long until or since.
func until(future, past string, t, now time.Time) string {
	d := t.Sub(now)
	if d < 0 {
		return past + " " + t.UTC().Format("2006-01-02T15:04Z") + " (" + span(-d) + " ago)"
	}
	return future + " " + t.UTC().Format("2006-01-02T15:04Z") + " (in " + span(d) + ")"
}

// span is d rounded to days, hours or minutes.
func span(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
}
