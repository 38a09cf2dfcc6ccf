package central

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/api/sigv4"
)

// TLSConfig is the TLS of the HTTP listener, and with Config.RaftTLS of
// the Raft transport. The Lua client only speaks wss://, so edge nodes
// that run it need it.
type TLSConfig struct {
	// CertFile and KeyFile are PEM files; both empty means plain HTTP.
	CertFile, KeyFile string
	// CAFile is a PEM bundle that verifies the other centrals' certificates
	// when forwarding to the leader or joining, and on the Raft transport.
	// Empty means the system roots, and is invalid with Raft TLS.
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
		pool, err := loadCAPool(t.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// raftConfig builds the mutual TLS of the Raft transport: this central's
// certificate, presented when it dials and when it is dialed, and the CA
// of CAFile, which verifies the other centrals in both directions.
func (t TLSConfig) raftConfig() (*tls.Config, error) {
	if t.CertFile == "" || t.KeyFile == "" || t.CAFile == "" {
		return nil, errors.New("--raft-tls needs a certificate, its key and the CA that signed every central's certificate; set --tls-cert, --tls-key and --tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s for Raft: %w", t.CertFile, t.KeyFile, err)
	}
	pool, err := loadCAPool(t.CAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// loadCAPool reads a PEM bundle of CA certificates.
func loadCAPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read TLS CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("TLS CA file %s contains no PEM certificate", path)
	}
	return pool, nil
}

// warnAboutSecurity logs, at start, each protection that is off while
// others need it.
func warnAboutSecurity(log *slog.Logger, cfg Config) {
	if cfg.Tokens == nil {
		log.Warn("the HTTP API has no authentication: anyone who reaches it can change limits and cluster membership; set --token-file")
		return
	}
	if !cfg.TLS.enabled() {
		log.Warn("bearer tokens cross the network in clear text; set --tls-cert and --tls-key")
	}
	if len(cfg.AccessKeys) == 0 {
		log.Warn("the /throttle WebSocket accepts only node tokens, so lua-resty-throttle clients, which sign with SigV4, cannot connect; set --access-keys-file for them")
	}
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
