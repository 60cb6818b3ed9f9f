// Package tls builds the TLS settings of the proxy: the client side towards
// upstream IMAP servers (and, later, the local listeners). Import it under a
// name such as proxytls, since it shares its name with crypto/tls.
package tls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
)

// MinVersion is the oldest TLS version the proxy speaks on either side.
const MinVersion = tls.VersionTLS12

// Upstream returns the client configuration for dialing the IMAP server at
// address (host:port): TLS 1.2 or newer, certificate and host name verified
// against the system roots plus the PEM certificates in caFile, if any.
func Upstream(address, caFile string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("upstream address %q: %w", address, err)
	}
	cfg := &tls.Config{
		MinVersion: MinVersion,
		ServerName: host,
		NextProtos: []string{"imap"},
	}
	if caFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: %w", caFile, errNoCertificates)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

var errNoCertificates = errors.New("no PEM certificate found")
