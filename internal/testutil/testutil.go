// Package testutil holds helpers that the tests of several packages share.
package testutil

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
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

// PollUntil calls cond every 20 ms until it returns "", and fails the test
// when timeout passes first. cond returns why it is not done yet.
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

// ReadLines returns the non-empty lines of the file at path, trimmed, and
// skips the test when the file does not exist. The recorded client
// traffic that some tests replay lives outside the repository.
func ReadLines(t testing.TB, path string) [][]byte {
	t.Helper()
	file, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("fixture %s not found, skipping the replay of recorded traffic", path)
	}
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	defer file.Close()
	var lines [][]byte
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		if line := bytes.TrimSpace(scanner.Bytes()); len(line) > 0 {
			lines = append(lines, bytes.Clone(line))
		}
	}
	if err := scanner.Err(); err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return lines
}
