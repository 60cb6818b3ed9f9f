package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// certFiles is a certificate and its key, as PEM.
type certFiles struct {
	certPEM, keyPEM []byte // keyPEM is PKCS #8
	certDER         []byte
	key             *rsa.PrivateKey
}

// newCertFiles makes a self-signed certificate for key, as openssl req
// -x509 does.
func newCertFiles(t *testing.T, bits int) certFiles {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return certFilesFor(t, key, &key.PublicKey)
}

func certFilesFor(t *testing.T, signer *rsa.PrivateKey, pub any) certFiles {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "imap-oauth-proxy"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		t.Fatal(err)
	}
	return certFiles{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}),
		certDER: der,
		key:     signer,
	}
}

func write(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// certProvider is a microsoft provider with the extra lines and an
// app-only account on it.
func certProvider(extra string) string {
	return `[providers.app]
type = "microsoft"
tenant = "contoso.onmicrosoft.com"
client_id = "id"
` + extra + `
[accounts.collector]
provider = "app"
mailbox = "helpdesk@contoso.com"
grant = "client_credentials"
`
}

func TestParseClientCertificate(t *testing.T) {
	dir := t.TempDir()
	good := newCertFiles(t, 2048)
	write(t, dir, "app.pem", good.certPEM)
	write(t, dir, "app.key", good.keyPEM)
	write(t, dir, "app.cer", good.certDER)
	write(t, dir, "both.pem", append(append([]byte("key and certificate in one file\n"), good.keyPEM...), good.certPEM...))
	write(t, dir, "app-pkcs1.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(good.key)}))

	for _, tc := range []struct {
		name, certFile, keyFile string
	}{
		{"pem and pkcs8", "app.pem", "app.key"},
		{"der certificate (.cer)", "app.cer", "app.key"},
		{"pkcs1 key", "app.pem", "app-pkcs1.key"},
		{"one file", "both.pem", "both.pem"},
		{"absolute paths", filepath.Join(dir, "app.pem"), filepath.Join(dir, "app.key")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(certProvider(
				"client_certificate_file = \""+tc.certFile+"\"\nclient_key_file = \""+tc.keyFile+"\"\n")), dir)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			p := cfg.Providers["app"]
			wantCert, wantKey := tc.certFile, tc.keyFile
			if !filepath.IsAbs(wantCert) {
				wantCert, wantKey = filepath.Join(dir, wantCert), filepath.Join(dir, wantKey)
			}
			if p.ClientCertificateFile != wantCert || p.ClientKeyFile != wantKey || p.ClientSecret != "" {
				t.Errorf("got certificate %q, key %q, secret set %v; want %q, %q", p.ClientCertificateFile, p.ClientKeyFile,
					p.ClientSecret != "", wantCert, wantKey)
			}
			if a := cfg.Accounts["collector"]; a == nil || a.Provider != p {
				t.Errorf("account = %+v", a)
			}
			cc, err := LoadClientCertificate(p.ClientCertificateFile, p.ClientKeyFile)
			if err != nil {
				t.Fatalf("LoadClientCertificate: %v", err)
			}
			if !cc.Key.Equal(good.key) || string(cc.Certificate.Raw) != string(good.certDER) {
				t.Error("LoadClientCertificate returned another key or certificate")
			}
		})
	}

	t.Run("fixture", func(t *testing.T) {
		cc, err := LoadClientCertificate(filepath.Join(testdataDir, "contoso-app.pem"), filepath.Join(testdataDir, "contoso-app.key"))
		if err != nil || cc.Key.N.BitLen() != 2048 {
			t.Errorf("testdata/config/contoso-app.*: %v", err)
		}
	})
}

func TestParseClientCertificateInvalid(t *testing.T) {
	dir := t.TempDir()
	good := newCertFiles(t, 2048)
	other := newCertFiles(t, 2048)
	small := newCertFiles(t, 1024)
	write(t, dir, "app.pem", good.certPEM)
	write(t, dir, "app.key", good.keyPEM)
	write(t, dir, "other.key", other.keyPEM)
	write(t, dir, "small.pem", small.certPEM)
	write(t, dir, "small.key", small.keyPEM)
	write(t, dir, "app.secret", []byte("secret-canary-0b7e\n"))
	write(t, dir, "garbage.pem", []byte("not a certificate\n"))
	write(t, dir, "cert-as-key.pem", good.certPEM)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, "ec.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	ecP8, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, "ec-pkcs8.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecP8}))
	write(t, dir, "encrypted.key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte("x")}))
	write(t, dir, "broken.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("key-canary-3f9a")}))
	// A certificate for an ECDSA key, signed by the good RSA key.
	ecCert := certFilesFor(t, good.key, &ec.PublicKey)
	write(t, dir, "ec.pem", ecCert.certPEM)

	files := func(cert, key string) string {
		return "client_certificate_file = \"" + cert + "\"\nclient_key_file = \"" + key + "\"\n"
	}
	for _, tc := range []struct {
		name, data string
		want       []string // key paths, in order
		text       string   // in the first problem
	}{
		{"certificate without key", certProvider("client_certificate_file = \"app.pem\"\n"),
			[]string{"providers.app.client_key_file"}, "missing (client_certificate_file is set)"},
		{"key without certificate", certProvider("client_key_file = \"app.key\"\n"),
			[]string{"providers.app.client_certificate_file"}, "missing (client_key_file is set)"},
		{"client_secret and certificate", certProvider("client_secret = \"secret-canary-0b7e\"\n" + files("app.pem", "app.key")),
			[]string{"providers.app.client_certificate_file"}, "client_secret and client_certificate_file are exclusive"},
		{"client_secret_file and certificate", certProvider("client_secret_file = \"app.secret\"\n" + files("app.pem", "app.key")),
			[]string{"providers.app.client_certificate_file"}, "client_secret and client_certificate_file are exclusive"},
		{"google", `[providers.g]
type = "google"
client_id = "x"
` + files("app.pem", "app.key"), []string{"providers.g.client_certificate_file"}, "only for type microsoft or generic"},
		{"missing files", certProvider(files("none.pem", "none.key")),
			[]string{"providers.app.client_certificate_file", "providers.app.client_key_file"}, "no such file"},
		{"not a certificate", certProvider(files("garbage.pem", "app.key")),
			[]string{"providers.app.client_certificate_file"}, "holds no certificate"},
		{"certificate as key", certProvider(files("app.pem", "cert-as-key.pem")),
			[]string{"providers.app.client_key_file"}, "holds no private key"},
		{"key of another certificate", certProvider(files("app.pem", "other.key")),
			[]string{"providers.app.client_key_file"}, "does not belong to the certificate"},
		{"ecdsa key", certProvider(files("ec.pem", "ec.key")),
			[]string{"providers.app.client_key_file"}, "ECDSA, not RSA"},
		{"ecdsa pkcs8 key", certProvider(files("ec.pem", "ec-pkcs8.key")),
			[]string{"providers.app.client_key_file"}, "ECDSA, not RSA"},
		{"ecdsa certificate, rsa key", certProvider(files("ec.pem", "app.key")),
			[]string{"providers.app.client_key_file"}, "not RSA"},
		{"small key", certProvider(files("small.pem", "small.key")),
			[]string{"providers.app.client_key_file"}, "1024 bits"},
		{"encrypted key", certProvider(files("app.pem", "encrypted.key")),
			[]string{"providers.app.client_key_file"}, "encrypted"},
		{"broken key", certProvider(files("app.pem", "broken.key")),
			[]string{"providers.app.client_key_file"}, "does not parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.data), dir)
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("got %v, want a *ValidationError", err)
			}
			for i, prob := range verr.Problems {
				t.Logf("problem %d: %s", i, prob)
			}
			if len(verr.Problems) != len(tc.want) {
				t.Fatalf("got %d problems, want %v", len(verr.Problems), tc.want)
			}
			for i, want := range tc.want {
				if !strings.HasPrefix(verr.Problems[i], want+": ") {
					t.Errorf("problem %d = %q, want key path %q", i, verr.Problems[i], want)
				}
			}
			if !strings.Contains(verr.Problems[0], tc.text) {
				t.Errorf("problem %q does not say %q", verr.Problems[0], tc.text)
			}
			// No problem quotes a secret or key material.
			for _, leak := range []string{"secret-canary-0b7e", "key-canary", pemBody(good.keyPEM), pemBody(other.keyPEM), pemBody(small.keyPEM)} {
				if strings.Contains(err.Error(), leak) {
					t.Errorf("the error quotes secret material %.20q...", leak)
				}
			}
		})
	}
}

// pemBody returns the second line of a PEM block: base64 key material.
func pemBody(b []byte) string {
	lines := strings.Split(string(b), "\n")
	return lines[1]
}

func TestClientCredentialsNeedsACredential(t *testing.T) {
	_, err := Parse([]byte(certProvider("")), t.TempDir())
	var verr *ValidationError
	if !errors.As(err, &verr) || len(verr.Problems) != 1 || !strings.HasPrefix(verr.Problems[0], "accounts.collector.grant: ") ||
		!strings.Contains(verr.Problems[0], "client_certificate_file") {
		t.Errorf("got %v, want one problem naming client_certificate_file", err)
	}
}
