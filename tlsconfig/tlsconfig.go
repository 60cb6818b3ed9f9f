// Package tlsconfig builds the proxy's TLS settings: the client side
// towards upstream IMAP servers, and the local listeners' certificate.
package tlsconfig

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

// upstreamSessionCacheSize bounds the TLS sessions one upstream
// configuration keeps. Its sessions are keyed by server name, and a
// configuration has one, so a handful is plenty.
const upstreamSessionCacheSize = 4

// Upstream returns the client configuration for dialing the IMAP server at
// address (host:port): TLS 1.2 or newer, certificate and host name verified
// against the system roots plus the PEM certificates in caFile, if any.
//
// Each call returns a configuration with a session cache of its own, in
// memory only, so that later connections to the same server resume the
// TLS session (an abbreviated handshake, still with a fresh key exchange)
// instead of a full one. Sessions are never shared between configurations:
// one per provider, and a reload starts afresh. Before resuming, crypto/tls
// checks the cached certificate chain against this configuration's roots,
// the host name and the current time, so resumption never accepts a
// server that a full handshake would refuse.
func Upstream(address, caFile string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("upstream address %q: %w", address, err)
	}
	cfg := &tls.Config{
		MinVersion:         MinVersion,
		ServerName:         host,
		NextProtos:         []string{"imap"},
		ClientSessionCache: tls.NewLRUClientSessionCache(upstreamSessionCacheSize),
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

// Local returns the server configuration for the collector-facing
// listeners: the certificate chain and key from certFile and keyFile,
// TLS 1.2 or newer, and only forward-secret AEAD suites for TLS 1.2.
// It reads the files now, so a reload picks up a renewed certificate by
// calling Local again.
func Local(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading local TLS certificate: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   MinVersion,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"imap"},
	}, nil
}
