package central

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/api/sigv4"
)

// TLSConfig is the TLS of the HTTP listener. The Lua client only speaks
// wss://, so edge nodes that run it need it.
type TLSConfig struct {
	// CertFile and KeyFile are PEM files; both empty means plain HTTP.
	CertFile, KeyFile string
	// CAFile is a PEM bundle that verifies the other centrals' certificates
	// when forwarding to the leader or joining. Empty means the system
	// roots.
	CAFile string
	// SkipPeerVerify turns peer verification off, for self-signed test
	// set-ups only.
	SkipPeerVerify bool
}

func (t TLSConfig) enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// serverConfig loads the certificate for the listener.
func (t TLSConfig) serverConfig() (*tls.Config, error) {
	if t.CertFile == "" || t.KeyFile == "" {
		return nil, errors.New("TLS needs both a certificate and a key file; set --tls-cert and --tls-key")
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", t.CertFile, t.KeyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// peerConfig is the client side used towards other centrals.
func (t TLSConfig) peerConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.SkipPeerVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA file %s contains no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// LoadAccessKeys reads SigV4 key pairs from a file: one "ACCESS_KEY SECRET"
// pair a line, blank lines and lines starting with # ignored. Errors name
// the line, never the secret.
func LoadAccessKeys(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open access key file: %w", err)
	}
	defer f.Close()
	keys := make(map[string]string)
	scanner := bufio.NewScanner(f)
	for line := 1; scanner.Scan(); line++ {
		text := strings.TrimSpace(scanner.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("access key file %s, line %d: want ACCESS_KEY SECRET separated by a space, got %d fields", path, line, len(fields))
		}
		if _, dup := keys[fields[0]]; dup {
			return nil, fmt.Errorf("access key file %s, line %d: access key %q appears twice", path, line, fields[0])
		}
		keys[fields[0]] = fields[1]
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("read access key file %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("access key file %s contains no key pair", path)
	}
	return keys, nil
}

// handshakeAuth returns the SigV4 check of WebSocket handshakes, or nil
// when no keys are configured.
func handshakeAuth(keys map[string]string) (api.HandshakeAuth, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	verifier, err := sigv4.NewVerifier(keys, sigv4.Options{})
	if err != nil {
		return nil, err
	}
	return func(r *http.Request) error {
		return verifier.Verify(r.Method, r.Host, r.URL.Path, r.URL.Query())
	}, nil
}
