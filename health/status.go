package health

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// Verdict sums up an account's health.
type Verdict string

// The verdicts, worst first.
const (
	// NeedsAuthorization: no token record, the token endpoint refused the
	// grant, or the refresh token has gone unused past its provider's
	// limit. Run authorize (or fix the app's credentials).
	NeedsAuthorization Verdict = "needs authorization"
	// Expiring: the refresh token or the app's certificate expires, or the
	// refresh token lapses for lack of use, within Warning.
	Expiring Verdict = "expiring"
	// NeverUsed: authorized, but no collector has logged in yet.
	NeverUsed Verdict = "never used"
	// OK: none of the above.
	OK Verdict = "ok"
)

// Warning is how long before a known expiry an account turns Expiring and
// the daemon starts warning.
const Warning = 30 * 24 * time.Hour

// Inactivity returns how long a refresh token of a provider of type
// providerType may go unused before the provider drops it, or 0 when
// unknown:
//
//   - microsoft: 90 days of inactivity (Microsoft identity platform,
//     "Refresh tokens": default lifetime 90 days; AADSTS700082 "The
//     refresh token has expired due to inactivity").
//   - google: six months unused (Google Identity, "Using OAuth 2.0 to
//     Access Google APIs", refresh token expiration). Apps in "Testing"
//     get refresh tokens that expire after 7 days whatever their use;
//     that shows only when Google reports refresh_token_expires_in.
func Inactivity(providerType string) time.Duration {
	switch providerType {
	case "microsoft":
		return 90 * 24 * time.Hour
	case "google":
		return 182 * 24 * time.Hour
	}
	return 0
}

// Status is one account's health, as the status command shows it.
type Status struct {
	Login    string `json:"login"`
	Provider string `json:"provider"`
	Grant    string `json:"grant"`
	// Verdict is the sum of the fields below; Reasons say why it is not ok.
	Verdict Verdict  `json:"verdict"`
	Reasons []string `json:"reasons,omitempty"`
	// Authorized is false when the account has no token record.
	Authorized bool `json:"authorized"`
	// RecordUpdated is the time of the token record's last write.
	RecordUpdated time.Time `json:"record_updated,omitzero"`
	// NeedsAuthorization mirrors the token endpoint's last refusal.
	NeedsAuthorization  bool      `json:"needs_authorization"`
	AccessTokenExpiry   time.Time `json:"access_token_expiry,omitzero"`
	LastRefresh         time.Time `json:"last_refresh,omitzero"`
	RefreshTokenExpiry  time.Time `json:"refresh_token_expiry,omitzero"`
	RefreshTokenLapse   time.Time `json:"refresh_token_lapse,omitzero"`
	LastLogin           time.Time `json:"last_login,omitzero"`
	LastLoginOutcome    string    `json:"last_login_outcome,omitempty"`
	LastOK              time.Time `json:"last_ok,omitzero"`
	CertificateNotAfter time.Time `json:"certificate_not_after,omitzero"`
}

// RecordReader reads a token record's clear metadata, as
// tokenstore.Store.Info does; an error matching tokenstore.ErrNoRecord
// means the login has no record.
type RecordReader interface {
	Info(login string) (tokenstore.RecordInfo, error)
}

// Evaluate judges acct at now from its record's metadata (nil if it has
// none), the daemon's entry for it, and its certificate's NotAfter (zero
// without a certificate credential).
func Evaluate(acct *config.Account, rec *tokenstore.RecordInfo, e Entry, certNotAfter, now time.Time) Status {
	p := acct.Provider
	grant := acct.Grant
	if grant == "" {
		grant = config.GrantRefreshToken
	}
	s := Status{Login: acct.Login, Provider: p.Name, Grant: string(grant),
		CertificateNotAfter: certNotAfter, LastLogin: e.LastLogin, LastLoginOutcome: e.LastOutcome, LastOK: e.LastOK}
	var needs, expiring []string
	if rec == nil {
		needs = append(needs, "no token record; run: imap-oauth-proxy authorize "+acct.Login)
	} else {
		s.Authorized = true
		s.RecordUpdated = rec.Updated
		if e.RecordID == rec.ID || e.RecordID == "" {
			// Only what was learnt about this authorization counts.
			s.NeedsAuthorization = e.NeedsAuthorization
			s.AccessTokenExpiry = e.AccessExpiry
			s.LastRefresh = e.LastRefresh
			s.RefreshTokenExpiry = e.RefreshExpiry
		}
	}
	if s.NeedsAuthorization {
		needs = append(needs, "the token endpoint refused the grant; run: imap-oauth-proxy check "+acct.Login)
	}
	if rec != nil && grant.Delegated() {
		// The refresh token was last used at its last refresh or, not
		// known, when the record was last written (authorize, a rotation).
		lastUse := s.LastRefresh
		if lastUse.IsZero() {
			lastUse = rec.Updated
		}
		if d := Inactivity(p.Type); d > 0 {
			s.RefreshTokenLapse = lastUse.Add(d)
		}
		switch lapse := s.RefreshTokenLapse; {
		case lapse.IsZero():
		case !lapse.After(now):
			needs = append(needs, fmt.Sprintf("refresh token unused since %s; %s drops it after %s unused",
				day(lastUse), p.Type, days(Inactivity(p.Type))))
		case lapse.Sub(now) <= Warning:
			expiring = append(expiring, fmt.Sprintf("refresh token unused since %s lapses about %s unless a collector logs in",
				day(lastUse), day(lapse)))
		}
		switch exp := s.RefreshTokenExpiry; {
		case exp.IsZero():
		case !exp.After(now):
			needs = append(needs, "refresh token expired on "+day(exp))
		case exp.Sub(now) <= Warning:
			expiring = append(expiring, "refresh token expires on "+day(exp)+" (the provider said so)")
		}
	}
	switch {
	case certNotAfter.IsZero():
	case !certNotAfter.After(now):
		expiring = append(expiring, fmt.Sprintf("provider %s's client certificate expired on %s", p.Name, day(certNotAfter)))
	case certNotAfter.Sub(now) <= Warning:
		expiring = append(expiring, fmt.Sprintf("provider %s's client certificate expires on %s", p.Name, day(certNotAfter)))
	}
	switch {
	case len(needs) > 0:
		s.Verdict = NeedsAuthorization
	case len(expiring) > 0:
		s.Verdict = Expiring
	case e.LastOK.IsZero():
		s.Verdict = NeverUsed
	default:
		s.Verdict = OK
	}
	s.Reasons = append(needs, expiring...)
	return s
}

func day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

func days(d time.Duration) string { return fmt.Sprintf("%d days", int(d.Hours()/24)) }

// CertificateNotAfter reads the certificate (PEM or DER) in path and
// returns its NotAfter. It reads no private key.
func CertificateNotAfter(path string) (time.Time, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading client certificate: %w", err)
	}
	der := data
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			der = b.Bytes
			break
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading client certificate %s: %w", path, err)
	}
	return cert.NotAfter, nil
}

// Inputs are what Report judges accounts by.
type Inputs struct {
	Records RecordReader
	// Entries are the daemon's entries by login (Tracker.Entry or
	// ReadFile).
	Entries func(login string) Entry
	// NotAfter returns the NotAfter of the certificate file path;
	// nil means CertificateNotAfter.
	NotAfter func(path string) (time.Time, error)
}

// Report judges every account of cfg at now, sorted by login. An account
// whose record or certificate cannot be read fails the report.
func Report(cfg *config.Config, in Inputs, now time.Time) ([]Status, error) {
	notAfter := in.NotAfter
	if notAfter == nil {
		notAfter = CertificateNotAfter
	}
	logins := slices.Sorted(func(yield func(string) bool) {
		for login := range cfg.Accounts {
			if !yield(login) {
				return
			}
		}
	})
	out := make([]Status, 0, len(logins))
	for _, login := range logins {
		acct := cfg.Accounts[login]
		var rec *tokenstore.RecordInfo
		info, err := in.Records.Info(login)
		switch {
		case err == nil:
			rec = &info
		case errors.Is(err, tokenstore.ErrNoRecord):
		default:
			return nil, err
		}
		var cert time.Time
		if f := acct.Provider.ClientCertificateFile; f != "" && acct.Grant.AppOnly() {
			if cert, err = notAfter(f); err != nil {
				return nil, err
			}
		}
		out = append(out, Evaluate(acct, rec, in.Entries(login), cert, now))
	}
	return out, nil
}
