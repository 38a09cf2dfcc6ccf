package raftnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// tlsHandshakeTimeout bounds the TLS handshake of a Raft connection that
// another server opened to this one. Without it, a peer that connects and
// never sends a ClientHello would hold the connection's goroutine forever.
const tlsHandshakeTimeout = 10 * time.Second

// validateTLS checks the mutual TLS configuration of the transport: this
// server's certificate, the roots that verify the servers it dials, and
// the CAs that verify the servers that dial it.
func validateTLS(cfg *tls.Config) error {
	var errs []error
	if len(cfg.Certificates) == 0 {
		errs = append(errs, errors.New("TLS has no certificate in Certificates; every server presents one to the others"))
	}
	if cfg.RootCAs == nil {
		errs = append(errs, errors.New("TLS has no RootCAs; they verify the certificates of the servers this one dials"))
	}
	if cfg.ClientCAs == nil {
		errs = append(errs, errors.New("TLS has no ClientCAs; they verify the certificates of the servers that dial this one"))
	}
	if cfg.InsecureSkipVerify {
		errs = append(errs, errors.New("TLS has InsecureSkipVerify set; the transport always verifies its peers"))
	}
	return errors.Join(errs...)
}

// tlsStreamLayer is a raft.StreamLayer over mutual TLS: both ends of every
// connection present a certificate, and each verifies the other's against
// the cluster CA. A server without such a certificate cannot send or
// receive Raft RPCs, so it can neither join nor disturb the cluster.
type tlsStreamLayer struct {
	listener net.Listener
	server   *tls.Config
	client   *tls.Config
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

// newTLSStreamLayer listens on addr and returns the stream layer. base
// contains the certificate and the CA pools. The layer clones it twice: a
// server configuration that requires client certificates, and a client
// configuration that presents this server's certificate.
func newTLSStreamLayer(addr string, base *tls.Config) (*tlsStreamLayer, error) {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	server := base.Clone()
	server.ClientAuth = tls.RequireAndVerifyClientCert
	if server.MinVersion < tls.VersionTLS12 {
		server.MinVersion = tls.VersionTLS12
	}
	client := base.Clone()
	if client.MinVersion < tls.VersionTLS12 {
		client.MinVersion = tls.VersionTLS12
	}
	return &tlsStreamLayer{listener: listener, server: server, client: client}, nil
}

// Accept returns the next connection without a handshake. The TLS
// handshake runs on the connection's first read or write, in the goroutine
// that hashicorp/raft v1.7.2 starts for each accepted connection, so a
// slow or failing peer does not block the accept loop.
func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	conn, err := l.listener.Accept()
	if err != nil {
		return nil, err
	}
	return &serverConn{Conn: tls.Server(conn, l.server)}, nil
}

// Close stops the listener.
func (l *tlsStreamLayer) Close() error { return l.listener.Close() }

// Addr returns the address the listener resolved, which the transport
// advertises.
func (l *tlsStreamLayer) Addr() net.Addr { return l.listener.Addr() }

// Dial connects to another server and completes the TLS handshake within
// timeout. The other server's certificate must be signed by a root in
// RootCAs and name the host of address (a DNS name or an IP address SAN).
func (l *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("raftnode: invalid Raft address %q: %w", address, err)
	}
	config := l.client.Clone()
	if config.ServerName == "" {
		config.ServerName = host
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(address), config)
	if err != nil {
		return nil, fmt.Errorf("raftnode: TLS connection to %s failed: %w", address, err)
	}
	return conn, nil
}

// peerCheckTimeout bounds the connection and handshake of checkPeer.
const peerCheckTimeout = 5 * time.Second

// peerRejectWait is how long checkPeer waits for the other end to reject
// this server's certificate after the handshake. It delays every join of
// a TLS cluster by as much.
const peerRejectWait = time.Second

// checkPeer connects to the Raft address of a joining server as the
// cluster's members will, and returns an error when either end rejects the
// other's certificate. With TLS 1.3 the server checks the client's
// certificate after the client has finished its handshake, and a rejection
// arrives on the client's first read. A server that accepted waits for an
// RPC instead, so that read times out.
//
// A server that cannot be reached at all returns an error wrapping
// ErrPeerUnreachable, so the join can be retried.
func (l *tlsStreamLayer) checkPeer(address string, timeout time.Duration) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("raftnode: invalid Raft address %q: %w", address, err)
	}
	raw, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPeerUnreachable, err)
	}

	config := l.client.Clone()
	if config.ServerName == "" {
		config.ServerName = host
	}
	conn := tls.Client(raw, config)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("raftnode: TLS connection to %s failed: %w", address, err)
	}

	if err := conn.SetReadDeadline(time.Now().Add(peerRejectWait)); err != nil {
		return err
	}
	var b [1]byte
	_, err = conn.Read(b[:])
	var netErr net.Error
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		return nil
	case err == nil:
		return fmt.Errorf("raftnode: %s sent data before any request, which a Raft server never does", address)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("raftnode: %s closed the connection after the TLS handshake; it does not accept this server's certificate", address)
	}
	return fmt.Errorf("raftnode: %s rejected this server's certificate: %w", address, err)
}

// serverConn is an accepted TLS connection whose handshake runs once, on
// the first read or write, bounded by tlsHandshakeTimeout.
type serverConn struct {
	*tls.Conn
	once         sync.Once
	handshakeErr error
}

func (c *serverConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), tlsHandshakeTimeout)
		defer cancel()
		if err := c.HandshakeContext(ctx); err != nil {
			c.handshakeErr = fmt.Errorf("raftnode: TLS handshake with %s failed: %w", c.RemoteAddr(), err)
		}
	})
	return c.handshakeErr
}

func (c *serverConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *serverConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
