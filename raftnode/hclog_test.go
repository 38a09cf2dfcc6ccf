package raftnode

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// decodeLines parses the JSON log lines in buf.
func decodeLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var record map[string]any
		if err := json.Unmarshal([]byte(line), &record); err != nil {
			t.Fatalf("decode log line %q: %v", line, err)
		}
		lines = append(lines, record)
	}
	return lines
}

func TestHCLogAdapterMapsLevels(t *testing.T) {
	var buf bytes.Buffer
	handler := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	logger := newHCLogAdapter(slog.New(handler).With("component", "raft"))

	logger.Trace("trace line")
	logger.Debug("debug line")
	logger.Info("info line")
	logger.Warn("warn line")
	logger.Error("error line")
	logger.Log(hclog.NoLevel, "no level line")

	lines := decodeLines(t, &buf)
	want := []struct{ msg, level string }{
		{"debug line", "DEBUG"},
		{"info line", "INFO"},
		{"warn line", "WARN"},
		{"error line", "ERROR"},
		{"no level line", "INFO"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d (trace dropped by the handler): %v", len(lines), len(want), lines)
	}
	for i, w := range want {
		if lines[i]["msg"] != w.msg {
			t.Errorf("line %d msg = %v, want %q", i, lines[i]["msg"], w.msg)
		}
		if lines[i]["level"] != w.level {
			t.Errorf("line %d (%s) level = %v, want %s", i, w.msg, lines[i]["level"], w.level)
		}
		if lines[i]["component"] != "raft" {
			t.Errorf("line %d (%s) component = %v, want raft", i, w.msg, lines[i]["component"])
		}
	}

	if logger.IsTrace() {
		t.Errorf("IsTrace = true, want false: the handler drops debug-4")
	}
	if !logger.IsDebug() {
		t.Errorf("IsDebug = false, want true")
	}
	if got := logger.GetLevel(); got != hclog.Debug {
		t.Errorf("GetLevel = %v, want %v", got, hclog.Debug)
	}

	logger.SetLevel(hclog.Warn)
	buf.Reset()
	logger.Info("dropped")
	logger.Warn("kept")
	lines = decodeLines(t, &buf)
	if len(lines) != 1 || lines[0]["msg"] != "kept" {
		t.Errorf("after SetLevel(Warn) got %v, want only the warn line", lines)
	}
	if got := logger.GetLevel(); got != hclog.Warn {
		t.Errorf("GetLevel after SetLevel(Warn) = %v, want %v", got, hclog.Warn)
	}
}

type stringerValue struct{ name string }

func (s stringerValue) String() string { return "stringer:" + s.name }

func TestHCLogAdapterArgs(t *testing.T) {
	var buf bytes.Buffer
	handler := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	logger := newHCLogAdapter(slog.New(handler)).Named("raft").Named("transport").With("peer", "n1")

	logger.Info("message",
		"servers", hclog.Fmt("%d servers", 3),
		"hex", hclog.Hex(255),
		"node", stringerValue{"a"},
		"error", errors.New("boom"),
		"dangling")

	lines := decodeLines(t, &buf)
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1: %v", len(lines), lines)
	}
	line := lines[0]
	checks := map[string]any{
		"module":         "raft.transport",
		"peer":           "n1",
		"servers":        "3 servers",
		"hex":            "0xff",
		"node":           "stringer:a",
		"error":          "boom",
		hclog.MissingKey: "dangling",
	}
	for key, want := range checks {
		if line[key] != want {
			t.Errorf("attribute %s = %v, want %v", key, line[key], want)
		}
	}
	if got := logger.Name(); got != "raft.transport" {
		t.Errorf("Name = %q, want raft.transport", got)
	}
	if implied := logger.ImpliedArgs(); len(implied) != 2 {
		t.Errorf("ImpliedArgs = %v, want [peer n1]", implied)
	}
}

func TestHCLogAdapterStandardWriterInfersLevel(t *testing.T) {
	var buf bytes.Buffer
	handler := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	logger := newHCLogAdapter(slog.New(handler))

	standard := logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	standard.Print("[WARN] disk almost full")
	standard.Print("plain line")

	lines := decodeLines(t, &buf)
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2: %v", len(lines), lines)
	}
	if lines[0]["level"] != "WARN" || lines[0]["msg"] != "disk almost full" {
		t.Errorf("tagged line = %v, want level WARN and msg %q", lines[0], "disk almost full")
	}
	if lines[1]["level"] != "INFO" || lines[1]["msg"] != "plain line" {
		t.Errorf("untagged line = %v, want level INFO and msg %q", lines[1], "plain line")
	}
}

func TestHCLogAdapterWritesUnreachablePeerAsWarning(t *testing.T) {
	var buf bytes.Buffer
	logger := newHCLogAdapter(slog.New(slog.NewJSONHandler(&buf, nil)))

	logger.Error("failed to heartbeat to", "peer", "127.0.0.1:7002", "error", errors.New("connection refused"))
	logger.Error("failed to appendEntries to", "peer", "127.0.0.1:7002", "error", errors.New("connection refused"))
	logger.Error("failed to commit logs", "error", errors.New("disk full"))

	lines := decodeLines(t, &buf)
	want := []struct{ msg, level string }{
		{"failed to heartbeat to", "WARN"},
		{"failed to appendEntries to", "WARN"},
		{"failed to commit logs", "ERROR"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d: %v", len(lines), len(want), lines)
	}
	for i, w := range want {
		if lines[i]["msg"] != w.msg || lines[i]["level"] != w.level {
			t.Errorf("line %d: %v at %v, want %q at %s", i, lines[i]["msg"], lines[i]["level"], w.msg, w.level)
		}
	}
}
