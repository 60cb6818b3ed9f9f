package config

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// minClientKeyBits is the smallest RSA key Entra ID accepts for a
// certificate credential.
const minClientKeyBits = 2048

// maxCredentialFile bounds the size of a certificate or key file.
const maxCredentialFile = 1 << 20

// ClientCertificate is an app's certificate credential (keys
// client_certificate_file and client_key_file): the certificate uploaded
// to the app registration and its RSA private key, which signs the client
// assertions of the client_credentials grant (RFC 7523 section 2.2). It is
// not modified after loading and is safe for concurrent reads. Never log
// Key.
type ClientCertificate struct {
	// Certificate is the certificate the provider knows the app by.
	Certificate *x509.Certificate
	// Key is the certificate's private key.
	Key *rsa.PrivateKey
}

// LoadClientCertificate reads a certificate (PEM, or DER as the .cer the
// Entra admin center downloads) and a PEM RSA private key (PKCS #1 "RSA
// PRIVATE KEY" or PKCS #8 "PRIVATE KEY", not encrypted), and checks that
// the key is RSA of at least 2048 bits and belongs to the certificate. One
// file may hold both. Errors name the files and never quote their content.
func LoadClientCertificate(certFile, keyFile string) (*ClientCertificate, error) {
	cert, err := loadCertificate(certFile)
	if err != nil {
		return nil, err
	}
	key, err := loadRSAKey(keyFile)
	if err != nil {
		return nil, err
	}
	if err := keyMatches(cert, key, certFile, keyFile); err != nil {
		return nil, err
	}
	return &ClientCertificate{Certificate: cert, Key: key}, nil
}

// readCredentialFile reads a certificate or key file of bounded size.
func readCredentialFile(path, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCredentialFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", what, path, err)
	}
	if len(data) > maxCredentialFile {
		return nil, fmt.Errorf("%s %s is larger than %d bytes", what, path, maxCredentialFile)
	}
	return data, nil
}

// loadCertificate reads the first certificate of a PEM file, or a DER
// certificate.
func loadCertificate(path string) (*x509.Certificate, error) {
	data, err := readCredentialFile(path, "certificate")
	if err != nil {
		return nil, err
	}
	sawPEM := false
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		sawPEM = true
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %s does not parse", path)
		}
		return cert, nil
	}
	if !sawPEM {
		if cert, err := x509.ParseCertificate(data); err == nil {
			return cert, nil
		}
	}
	return nil, fmt.Errorf("%s holds no certificate (want a PEM \"BEGIN CERTIFICATE\" block or a DER .cer file)", path)
}

// loadRSAKey reads the first private key of a PEM file, which must be RSA.
func loadRSAKey(path string) (*rsa.PrivateKey, error) {
	data, err := readCredentialFile(path, "private key")
	if err != nil {
		return nil, err
	}
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "":
			return nil, fmt.Errorf("private key %s is encrypted; store it without a passphrase "+
				"(openssl pkey -in %s -out KEY.pem) and protect the file instead", path, path)
		case block.Type == "RSA PRIVATE KEY":
			key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("private key %s does not parse as PKCS #1", path)
			}
			return checkRSAKey(key, path)
		case block.Type == "PRIVATE KEY":
			parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("private key %s does not parse as PKCS #8", path)
			}
			key, ok := parsed.(*rsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("private key %s is %s, not RSA: Entra ID signs client assertions with RS256", path, keyKind(parsed))
			}
			return checkRSAKey(key, path)
		case block.Type == "EC PRIVATE KEY":
			return nil, fmt.Errorf("private key %s is ECDSA, not RSA: Entra ID signs client assertions with RS256", path)
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			return nil, fmt.Errorf("private key %s is a %q block, not an RSA key", path, block.Type)
		}
	}
	return nil, fmt.Errorf("%s holds no private key (want a PEM \"BEGIN PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\" block)", path)
}

func checkRSAKey(key *rsa.PrivateKey, path string) (*rsa.PrivateKey, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("private key %s is not a valid RSA key", path)
	}
	if bits := key.N.BitLen(); bits < minClientKeyBits {
		return nil, fmt.Errorf("private key %s is RSA with %d bits; Entra ID needs at least %d", path, bits, minClientKeyBits)
	}
	return key, nil
}

func keyKind(k any) string {
	switch k.(type) {
	case *ecdsa.PrivateKey:
		return "ECDSA"
	case ed25519.PrivateKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", k)
}

// errKeyMismatch is wrapped by LoadClientCertificate when the key does not
// belong to the certificate.
var errKeyMismatch = errors.New("the private key does not belong to the certificate")

// keyMatches checks that key is the private key of cert.
func keyMatches(cert *x509.Certificate, key *rsa.PrivateKey, certFile, keyFile string) error {
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("certificate %s has a %s public key, not RSA", certFile, cert.PublicKeyAlgorithm)
	}
	if !pub.Equal(&key.PublicKey) {
		return fmt.Errorf("%w: %s is not the key of %s", errKeyMismatch, keyFile, certFile)
	}
	return nil
}
