package central

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/throttlecentral/throttle-central/api"
)

// joinRefusedError is a join request the cluster rejected with a 4xx: retrying
// cannot help, the operator has to act.
type joinRefusedError struct {
	addr    string
	status  int
	message string
}

func (e *joinRefusedError) Error() string {
	return fmt.Sprintf("the cluster at %s refused to let this server join (HTTP %d): %s", e.addr, e.status, e.message)
}

// joinLoop requests membership from the addresses in Config.Join, in turn,
// until one succeeds, backing off between rounds. A refusal stops the loop
// and reports a fatal error.
func (c *Central) joinLoop(ctx context.Context, hasState bool) {
	delay := c.cfg.JoinRetry
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c.peerTLS}}
	for round := 1; ; round++ {
		for _, addr := range c.cfg.Join {
			if addr == c.httpAddr {
				continue
			}
			err := c.askToJoin(ctx, client, addr, hasState)
			if err == nil {
				c.log.Info("joined the cluster", slog.String("via", addr), slog.Int("round", round))
				return
			}
			if ctx.Err() != nil {
				return
			}
			var refused *joinRefusedError
			if errors.As(err, &refused) {
				c.log.Error("join refused", slog.String("via", addr), slog.Any("error", err))
				c.fail(err)
				return
			}
			c.log.Warn("join attempt failed", slog.String("via", addr), slog.Int("round", round),
				slog.Duration("retry_in", delay), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, MaxJoinRetry)
	}
}

func (c *Central) askToJoin(ctx context.Context, client *http.Client, addr string, hasState bool) error {
	body, err := json.Marshal(api.JoinRequest{
		NodeID:   c.cfg.NodeID,
		RaftAddr: c.node.Addr(),
		HTTPAddr: c.httpAddr,
		HasState: hasState,
	})
	if err != nil {
		return err
	}
	scheme := "http"
	if c.peerTLS != nil {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+"://"+addr+"/v1/cluster/join", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token := c.api.PeerToken(); token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	message := string(answer)
	var apiErr struct {
		Error api.Error `json:"error"`
	}
	if json.Unmarshal(answer, &apiErr) == nil && apiErr.Error.Message != "" {
		message = apiErr.Error.Message
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		message += "; a central joins with the first admin token of its --token-file, so give it the cluster's token file"
		return &joinRefusedError{addr: addr, status: resp.StatusCode, message: message}
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		return &joinRefusedError{addr: addr, status: resp.StatusCode, message: message}
	}
	return fmt.Errorf("HTTP %d: %s", resp.StatusCode, message)
}
