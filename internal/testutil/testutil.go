// Package testutil holds helpers that the tests of several packages share.
package testutil

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Request sends one HTTP request with a 5 s timeout and returns the status
// and body, or status 0 and the error text when no response came.
func Request(t testing.TB, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("request %s %s: %v", method, url, err)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// PollUntil calls cond every 20 ms until it returns "" and fails the test
// when timeout passes first; cond returns why it is not done yet.
func PollUntil(t testing.TB, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	reason := ""
	for time.Now().Before(deadline) {
		if reason = cond(); reason == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, reason)
}
