package main

import (
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
)

// keyLines returns the base64 lines of a PEM file: the key material that
// must never be printed.
func keyLines(pemData []byte) []string {
	var out []string
	for _, line := range strings.Split(string(pemData), "\n") {
		if line != "" && !strings.HasPrefix(line, "-----") {
			out = append(out, line)
		}
	}
	return out
}

// TestAuthorizeAppOnlyCertificate is TestAuthorizeAppOnly's
// client_credentials case with a certificate instead of a client secret:
// authorize proves the certificate works and stores the local password,
// and check then logs in to the mailbox end to end.
func TestAuthorizeAppOnlyCertificate(t *testing.T) {
	c := newCLI(t)
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft}, false)
	certPEM, keyPEM, err := cl.tokens.NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	c.secret(keyLines(keyPEM)...)
	writeFile(t, cl.dir, "app.pem", string(certPEM))
	writeFile(t, cl.dir, "app.key", string(keyPEM))
	// Relative paths: resolved against the mapping file's directory.
	certLines := "client_certificate_file = \"app.pem\"\nclient_key_file = \"app.key\"\n"

	// A certificate that was never uploaded to the app stores nothing and
	// says what to fix.
	otherCert, otherKey, err := authtest.GenerateCertificate("not uploaded")
	if err != nil {
		t.Fatal(err)
	}
	c.secret(keyLines(otherKey)...)
	writeFile(t, cl.dir, "other.pem", string(otherCert))
	writeFile(t, cl.dir, "other.key", string(otherKey))
	const password = "cert-pw-canary-a3e8"
	path := authorizeClientCredentials(t, c, cl, "client_certificate_file = \"other.pem\"\nclient_key_file = \"other.key\"\n",
		[]string{"AADSTS700027", "Certificates & secrets"}, certLines, password)
	forms := cl.tokens.TokenRequests(authtest.GrantClientCredentials)
	if len(forms) != 1 {
		t.Fatalf("%d accepted client_credentials requests, want 1", len(forms))
	}
	form := forms[0]
	if form.Get("client_assertion_type") != authtest.ClientAssertionType || form.Get("client_assertion") == "" ||
		form.Has("client_secret") || form.Get("scope") != "https://outlook.office365.com/.default" {
		t.Errorf("client_credentials request: assertion type %q, assertion sent %v, secret sent %v, scope %q",
			form.Get("client_assertion_type"), form.Get("client_assertion") != "", form.Has("client_secret"), form.Get("scope"))
	}

	// check fetches a new token with a new assertion, as serve would.
	checkAppMailboxPermission(t, c, cl, path, password, "Add-MailboxPermission")
	for _, f := range cl.tokens.TokenRequests(authtest.GrantClientCredentials) {
		c.secret(f.Get("client_assertion"))
	}
}
