package raftnode

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generating the key of CA %q: %v", name, err)
	}
	template := &x509.Certificate{
		SerialNumber:          randomSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("creating CA %q: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parsing CA %q: %v", name, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func randomSerial(t *testing.T) *big.Int {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		t.Fatalf("generating a serial number: %v", err)
	}
	return serial
}

// issue returns a certificate signed by the CA for the IP addresses, valid
// for both TLS servers and clients, as every Raft server is both.
func (ca *testCA) issue(t *testing.T, name string, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generating the key of %q: %v", name, err)
	}
	template := &x509.Certificate{
		SerialNumber: randomSerial(t),
		Subject:      pkix.Name{CommonName: name},
		IPAddresses:  ips,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("issuing the certificate of %q: %v", name, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

var loopback = net.IPv4(127, 0, 0, 1)

// mutualTLS returns a transport TLS configuration that presents cert and
// trusts the CA trusted.
func mutualTLS(cert tls.Certificate, trusted *testCA) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: trusted.pool, ClientCAs: trusted.pool}
}

func TestTLSClusterReplicates(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	nodes := startCluster(t, 3, func(cfg *Config) {
		cfg.TLS = mutualTLS(ca.issue(t, cfg.NodeID, loopback), ca)
	})
	leader := nodes[0]

	want := []string{"one", "two", "three"}
	for _, command := range want {
		mustApply(t, leader, command)
	}
	waitForEntries(t, want, nodes...)

	if servers := serverMap(t, leader); len(servers) != 3 {
		t.Errorf("leader %q lists %d servers (%v), want 3", leader.ID(), len(servers), servers)
	}
}

func TestTLSNodeWithForeignCertificateCannotJoin(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	nodes := startCluster(t, 3, func(cfg *Config) {
		cfg.TLS = mutualTLS(ca.issue(t, cfg.NodeID, loopback), ca)
	})
	leader := nodes[0]
	foreignCA := newTestCA(t, "intruder CA")

	tests := []struct {
		name string
		tls  func(id string) *tls.Config
		want string
	}{
		// The intruder trusts the cluster CA, which is public, but its own
		// certificate comes from another CA: the leader rejects it.
		{"certificate from another CA", func(id string) *tls.Config {
			return mutualTLS(foreignCA.issue(t, id, loopback), ca)
		}, "certificate signed by unknown authority"},
		// A certificate of the cluster CA, but trusting another CA: the
		// joining server rejects the leader.
		{"trusts another CA", func(id string) *tls.Config {
			return mutualTLS(ca.issue(t, id, loopback), foreignCA)
		}, "rejected this server's certificate"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("intruder-%d", i)
			intruderCfg := testConfig(t, slog.New(slog.DiscardHandler), id)
			intruderCfg.TLS = tt.tls(id)
			intruder := openTestNode(t, intruderCfg)

			err := leader.Join(intruder.ID(), intruder.Addr())

			if !errors.Is(err, ErrPeerRejected) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("join of the intruder: error %v, want ErrPeerRejected naming %q", err, tt.want)
			}
			servers, err := leader.Servers()
			if err != nil {
				t.Fatalf("Servers: %v", err)
			}
			for _, server := range servers {
				if server.ID == intruder.ID() {
					t.Errorf("the configuration names the rejected intruder: %+v", servers)
				}
			}
			want := []string{"after the intruder tried to join " + id}
			mustApply(t, leader, want[0])
			if got := intruder.fsm.Entries(); len(got) != 0 {
				t.Errorf("intruder applied %d entries (%v), want none", len(got), got)
			}
		})
	}
}

// acceptOne accepts one connection on layer and reads from it, and sends
// the read's error, nil when a byte arrived.
func acceptOne(t *testing.T, layer *tlsStreamLayer) <-chan error {
	t.Helper()
	result := make(chan error, 1)
	go func() {
		conn, err := layer.Accept()
		if err != nil {
			result <- fmt.Errorf("accept: %w", err)
			return
		}
		defer conn.Close()
		buf := make([]byte, 1)
		_, err = conn.Read(buf)
		result <- err
	}()
	return result
}

// listenTLS opens a stream layer on a loopback port the kernel picks.
func listenTLS(t *testing.T, cfg *tls.Config) *tlsStreamLayer {
	t.Helper()
	layer, err := newTLSStreamLayer("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("listening with TLS: %v", err)
	}
	t.Cleanup(func() { layer.Close() })
	return layer
}

// waitResult returns the accepted connection's read result, failing the
// test after waitTimeout.
func waitResult(t *testing.T, result <-chan error) error {
	t.Helper()
	select {
	case err := <-result:
		return err
	case <-time.After(waitTimeout):
		t.Fatalf("no result from the accepted connection after %s", waitTimeout)
		return nil
	}
}

func TestTLSStreamLayerConnectsClusterMembers(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	server := listenTLS(t, mutualTLS(ca.issue(t, "server", loopback), ca))
	client := listenTLS(t, mutualTLS(ca.issue(t, "client", loopback), ca))
	result := acceptOne(t, server)

	conn, err := client.Dial(dialAddress(server), time.Second)
	if err != nil {
		t.Fatalf("dial between members of one CA: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte{1}); err != nil {
		t.Fatalf("write to the server: %v", err)
	}

	if err := waitResult(t, result); err != nil {
		t.Errorf("server read %v, want the byte", err)
	}
}

func TestTLSStreamLayerRejectsClients(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	foreign := newTestCA(t, "foreign CA")
	tests := []struct {
		name   string
		client *tls.Config
		want   string
	}{
		// Go's client leaves out a certificate whose issuer the server did
		// not ask for, so the test sends it regardless, as an attacker would.
		{"certificate of another CA", &tls.Config{GetClientCertificate: presenting(foreign.issue(t, "client", loopback)), RootCAs: ca.pool}, "certificate signed by unknown authority"},
		{"no certificate", &tls.Config{RootCAs: ca.pool}, "didn't provide a certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := listenTLS(t, mutualTLS(ca.issue(t, "server", loopback), ca))
			result := acceptOne(t, server)

			// With TLS 1.3 the client's handshake can finish before the
			// server has checked the client's certificate, so the
			// rejection shows on the client's first read.
			conn, err := tls.Dial("tcp", server.Addr().String(), tt.client)
			if err == nil {
				conn.Write([]byte{1})
				_, err = conn.Read(make([]byte, 1))
				conn.Close()
			}
			if err == nil {
				t.Errorf("client read succeeded, want the server's rejection")
			}

			serverErr := waitResult(t, result)
			if serverErr == nil || !strings.Contains(serverErr.Error(), tt.want) {
				t.Errorf("server read returned %v, want an error containing %q", serverErr, tt.want)
			}
			if serverErr != nil && !strings.Contains(serverErr.Error(), "TLS handshake with 127.0.0.1:") {
				t.Errorf("server error %q does not name the peer", serverErr)
			}
		})
	}
}

func TestTLSStreamLayerRejectsPlainTCP(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	server := listenTLS(t, mutualTLS(ca.issue(t, "server", loopback), ca))
	result := acceptOne(t, server)

	conn, err := net.Dial("tcp", server.Addr().String())
	if err != nil {
		t.Fatalf("plain TCP dial: %v", err)
	}
	defer conn.Close()
	// The first byte of a Raft RPC is its type; this one is AppendEntries.
	if _, err := conn.Write([]byte{0, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatalf("write: %v", err)
	}

	if err := waitResult(t, result); err == nil {
		t.Errorf("server accepted plain TCP bytes, want a TLS handshake error")
	}
}

func TestTLSStreamLayerDialRejectsServers(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	foreign := newTestCA(t, "foreign CA")
	tests := []struct {
		name   string
		server tls.Certificate
		want   string
	}{
		{"certificate of another CA", foreign.issue(t, "server", loopback), "certificate signed by unknown authority"},
		{"certificate for another host", ca.issue(t, "server", net.IPv4(127, 0, 0, 2)), "not 127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := listenTLS(t, &tls.Config{Certificates: []tls.Certificate{tt.server}, RootCAs: ca.pool, ClientCAs: ca.pool})
			acceptOne(t, server)
			client := listenTLS(t, mutualTLS(ca.issue(t, "client", loopback), ca))

			conn, err := client.Dial(dialAddress(server), time.Second)
			if err == nil {
				conn.Close()
				t.Fatalf("dial succeeded, want a certificate error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("dial error %q does not contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "TLS connection to "+server.Addr().String()) {
				t.Errorf("dial error %q does not name the address %s", err, server.Addr())
			}
		})
	}
}

func TestOpenRejectsIncompleteTLS(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	cert := ca.issue(t, "node", loopback)
	tests := []struct {
		name string
		tls  *tls.Config
		want string
	}{
		{"no certificate", &tls.Config{RootCAs: ca.pool, ClientCAs: ca.pool}, "no certificate"},
		{"no root CAs", &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.pool}, "no RootCAs"},
		{"no client CAs", &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.pool}, "no ClientCAs"},
		{"verification off", &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.pool, ClientCAs: ca.pool, InsecureSkipVerify: true}, "InsecureSkipVerify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, slog.New(slog.DiscardHandler), "node")
			cfg.TLS = tt.tls
			cfg.FSM = &listFSM{}

			node, err := Open(cfg)
			if err == nil {
				node.Close(t.Context())
				t.Fatalf("Open succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// presenting returns a GetClientCertificate callback that presents cert
// whatever the server asked for.
func presenting(cert tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
}

// dialAddress returns the address a stream layer listens on, as raft
// dials it.
func dialAddress(layer *tlsStreamLayer) raft.ServerAddress {
	return raft.ServerAddress(layer.Addr().String())
}

func TestTLSJoinOfUnreachableServerIsRetryable(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	nodes := startCluster(t, 1, func(cfg *Config) {
		cfg.TLS = mutualTLS(ca.issue(t, cfg.NodeID, loopback), ca)
	})
	// A port that was free a moment ago, so nothing listens there.
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := listener.Addr().String()
	listener.Close()

	err = nodes[0].Join("absent", addr)

	if !errors.Is(err, ErrPeerUnreachable) || errors.Is(err, ErrPeerRejected) {
		t.Errorf("join of a server that does not listen: error %v, want ErrPeerUnreachable and not ErrPeerRejected", err)
	}
	servers, err := nodes[0].Servers()
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 1 {
		t.Errorf("the configuration has %d servers (%+v), want only the leader", len(servers), servers)
	}
}
