package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeMonitorCentral serves the monitor API for front/alice: every slot in
// the requested range has consumption 300, 1 rejection, quota 500 on edge-1
// and one reported node, and alice's limit of traffic_up is 1000. Its
// status field switches every response to that error status.
type fakeMonitorCentral struct {
	server *httptest.Server
	status atomic.Int64
}

func startFakeMonitorCentral(t *testing.T) *fakeMonitorCentral {
	t.Helper()
	fake := &fakeMonitorCentral{}
	fake.status.Store(http.StatusOK)
	fake.server = httptest.NewServer(http.HandlerFunc(fake.serve))
	t.Cleanup(fake.server.Close)
	return fake
}

func (f *fakeMonitorCentral) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if status := int(f.status.Load()); status != http.StatusOK {
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"code":"fake","message":"status %d from the fake"}}`, status)
		return
	}
	if r.URL.Path == "/v1/limits/front/alice" {
		fmt.Fprint(w, `{"service":"front","username":"alice","limit":{"traffic_up":1000},"ts":1}`)
		return
	}
	start, _ := strconv.ParseInt(r.URL.Query().Get("start_slot"), 10, 64)
	end, _ := strconv.ParseInt(r.URL.Query().Get("end_slot"), 10, 64)
	var entries []string
	for slot := start; slot <= end; slot++ {
		var value string
		switch r.URL.Path {
		case "/v1/monitor/consumption_sum":
			value = `{"front":{"alice":{"traffic_up":300}}}`
		case "/v1/monitor/rejection_sum":
			value = `{"front":{"alice":{"traffic_up":1}}}`
		case "/v1/monitor/quota":
			value = `{"front":{"alice":{"traffic_up":{"edge-1":500}}}}`
		case "/v1/monitor/distribution":
			value = `{"front":{"alice":{"traffic_up":{"edge-1":300}}}}`
		case "/v1/monitor/reported":
			value = `["edge-1"]`
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":{"code":"not_found","message":"no such endpoint"}}`)
			return
		}
		entries = append(entries, fmt.Sprintf(`"%d":%s`, slot, value))
	}
	fmt.Fprintf(w, "{%s}", strings.Join(entries, ","))
}

// newTestMonitor returns a monitor of front/alice against base whose clock
// is *now in unix seconds.
func newTestMonitor(t *testing.T, base string, now *int64) (*monitor, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	c, err := newClient(globalOptions{addr: base, timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("newClient: %v", err)
	}
	var stdout, stderr bytes.Buffer
	m := &monitor{
		interval: time.Second,
		now:      func() time.Time { return time.Unix(*now, 0) },
		inv: &invocation{
			args: []string{"front", "alice"}, client: c, output: outputTable,
			stdout: &stdout, stderr: &stderr,
		},
		service: "front",
		user:    "alice",
	}
	return m, &stdout, &stderr
}

// printedSlots returns the slot of every data line of the table output.
func printedSlots(output string) []int64 {
	var slots []int64
	for _, line := range strings.Split(strings.TrimSpace(output), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if slot, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
			slots = append(slots, slot)
		}
	}
	return slots
}

func TestMonitorPollRetriesAndCatchesUp(t *testing.T) {
	fake := startFakeMonitorCentral(t)
	now := int64(1000)
	m, stdout, stderr := newTestMonitor(t, fake.server.URL, &now)
	ctx := context.Background()

	if err := m.poll(ctx); err != nil {
		t.Fatalf("first poll: %v", err)
	}
	if got := printedSlots(stdout.String()); len(got) != 1 || got[0] != 998 {
		t.Fatalf("first poll printed slots %v, want [998] (2 s behind the clock):\n%s", got, stdout.String())
	}
	for _, want := range []string{"traffic_up", "300", "1000", "0.300", "500", "edge-1 300/500"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}

	// The leader is gone: the poll fails, is reported and retried.
	fake.status.Store(http.StatusServiceUnavailable)
	now = 1001
	if err := m.poll(ctx); err != nil {
		t.Fatalf("poll during the outage: %v; a 503 after the first poll must not stop the monitor", err)
	}
	if !strings.Contains(stderr.String(), "slot 999: no central responded") || !strings.Contains(stderr.String(), "retrying") {
		t.Errorf("stderr %q, want the failed slot 999 and retrying", stderr.String())
	}

	// A new leader responds: the missed seconds are printed in order.
	fake.status.Store(http.StatusOK)
	now = 1003
	stdout.Reset()
	if err := m.poll(ctx); err != nil {
		t.Fatalf("poll after the outage: %v", err)
	}
	if got := printedSlots(stdout.String()); fmt.Sprint(got) != "[999 1000 1001]" {
		t.Errorf("printed slots %v after the outage, want [999 1000 1001]", got)
	}

	// A long outage: only the last maxCatchUpSlots seconds are printed.
	now = 1020
	stdout.Reset()
	stderr.Reset()
	if err := m.poll(ctx); err != nil {
		t.Fatalf("poll after a long gap: %v", err)
	}
	got := printedSlots(stdout.String())
	if len(got) != maxCatchUpSlots || got[0] != 1009 || got[len(got)-1] != 1018 {
		t.Errorf("printed slots %v after a long gap, want 1009 to 1018", got)
	}
	if !strings.Contains(stderr.String(), "skipped slots 1002 to 1008") {
		t.Errorf("stderr %q, want the skipped slots 1002 to 1008", stderr.String())
	}

	// A rejected request ends the monitor.
	fake.status.Store(http.StatusBadRequest)
	now = 1021
	if err := m.poll(ctx); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("poll with a 400 returned %v, want the 400 error", err)
	}
}

func TestMonitorFirstPollFailureStops(t *testing.T) {
	fake := startFakeMonitorCentral(t)
	fake.status.Store(http.StatusServiceUnavailable)
	now := int64(1000)
	m, _, _ := newTestMonitor(t, fake.server.URL, &now)
	err := m.poll(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no central responded") {
		t.Errorf("first poll returned %v, want the unavailable error", err)
	}
}

func TestMonitorPollStopsAtCount(t *testing.T) {
	fake := startFakeMonitorCentral(t)
	now := int64(1000)
	m, stdout, _ := newTestMonitor(t, fake.server.URL, &now)
	m.count = 2
	if err := m.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	now = 1005
	if err := m.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := printedSlots(stdout.String()); fmt.Sprint(got) != "[998 999]" {
		t.Errorf("printed slots %v with --count 2, want [998 999]", got)
	}
}
