package membership

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestStartRejectsBadConfig(t *testing.T) {
	secret := base64.StdEncoding.EncodeToString([]byte("ten bytes!"))
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "Name (the node ID) is required"},
		{"bad role", func(c *Config) { c.Role = "boss" }, `role "boss" is invalid`},
		{"host name bind", func(c *Config) { c.BindAddr = "localhost:7946" }, `host "localhost" is not an IP address`},
		{"bind without port", func(c *Config) { c.BindAddr = "127.0.0.1" }, `"127.0.0.1" is not an IP:port address`},
		{"bind port too large", func(c *Config) { c.BindAddr = "127.0.0.1:70000" }, `port "70000" is not a number`},
		{"advertise with port 0 bind", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:7946" }, `advertise address "10.0.0.1:7946" needs a fixed bind port`},
		{"bad join", func(c *Config) { c.Join = []string{"c1"} }, `join address: "c1" is not a host:port address`},
		{"join port 0", func(c *Config) { c.Join = []string{"c1:0"} }, `"c1:0": port "0"`},
		{"short key", func(c *Config) { c.Key = secret }, "gossip key decodes to 10 bytes"},
		{"key not base64", func(c *Config) { c.Key = "not*base64" }, "gossip key of 10 characters is not valid base64"},
		{"central without addresses", func(c *Config) { c.HTTPAddr = "" }, "a central needs HTTPAddr and RaftAddr"},
		{"negative interval", func(c *Config) { c.ProbeInterval = -time.Second }, "ProbeInterval -1s is negative"},
		{"timeout over interval", func(c *Config) { c.ProbeTimeout = time.Second }, "probe timeout 1s is longer than the probe interval 50ms"},
		{"negative suspicion", func(c *Config) { c.SuspicionMult = -1 }, "suspicion multiplier -1"},
		{"metadata too big", func(c *Config) { c.Name = strings.Repeat("n", 450) }, "node metadata is 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, "c1", RoleCentral)
			tc.change(&cfg)
			p, err := Start(cfg)
			if err == nil {
				_ = p.Shutdown()
				t.Fatalf("Start succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start error %q, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Start error %q contains the key", err)
			}
		})
	}
}

func TestParseKeyLengths(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		raw := bytes.Repeat([]byte{7}, n)
		got, err := ParseKey(" " + base64.StdEncoding.EncodeToString(raw) + "\n")
		if err != nil {
			t.Errorf("%d-byte key: %v", n, err)
			continue
		}
		if !bytes.Equal(got, raw) {
			t.Errorf("%d-byte key decoded to %x", n, got)
		}
	}
	if got, err := ParseKey(""); got != nil || err != nil {
		t.Errorf("empty key: %x, %v; want nil, nil", got, err)
	}
	if _, err := ParseKey(base64.StdEncoding.EncodeToString(make([]byte, 33))); err == nil || !strings.Contains(err.Error(), "33 bytes") {
		t.Errorf("33-byte key: %v, want an error naming 33 bytes", err)
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	want := nodeMeta{Version: metaVersion, Role: RoleCentral, NodeID: "c1", HTTPAddr: "10.0.0.1:8081", RaftAddr: "10.0.0.1:7001"}
	data, err := encodeMeta(want)
	if err != nil {
		t.Fatalf("encodeMeta: %v", err)
	}
	if !bytes.HasPrefix(data, []byte(`{"v":1,`)) {
		t.Errorf("metadata %s does not start with the version", data)
	}
	got, err := decodeMeta("c1", data)
	if err != nil {
		t.Fatalf("decodeMeta: %v", err)
	}
	if got != want {
		t.Errorf("decodeMeta = %+v, want %+v", got, want)
	}
}

func TestMetadataDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		data string
		want string
	}{
		{`not json`, "not valid JSON"},
		{`{"v":0,"role":"edge","id":"e1"}`, "version 0"},
		{`{"v":1,"role":"proxy","id":"e1"}`, `role "proxy"`},
		{`{"v":1,"role":"edge","id":"e2"}`, `carries node ID "e2"`},
	} {
		_, err := decodeMeta("e1", []byte(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decodeMeta(%s) error %v, want one containing %q", tc.data, err, tc.want)
		}
	}
	if _, err := decodeMeta("e1", []byte(`{"v":2,"role":"edge","id":"e1","zone":"a"}`)); err != nil {
		t.Errorf("a later version with an unknown field: %v, want it accepted", err)
	}
}

// recordingHandler keeps every record it handles.
type recordingHandler struct {
	records []slog.Record
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.records = append(h.records, r)
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func TestLogWriterLevels(t *testing.T) {
	handler := &recordingHandler{}
	w := &logWriter{logger: slog.New(handler)}
	for _, tc := range []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:4000\n", slog.LevelDebug, "Stream connection from=127.0.0.1:4000"},
		{"[INFO] memberlist: Marking c2 as failed\n", slog.LevelInfo, "Marking c2 as failed"},
		{"[WARN] memberlist: Refuting a suspect message (from: c2)\n", slog.LevelWarn, "Refuting a suspect message (from: c2)"},
		{"[ERR] memberlist: Failed to send ping\n", slog.LevelError, "Failed to send ping"},
		{"[ERR] Failed to shutdown transport: closed\n", slog.LevelError, "Failed to shutdown transport: closed"},
		{"[TRACE] memberlist: detail\n", levelTrace, "detail"},
		{"no tag at all\n", slog.LevelInfo, "no tag at all"},
	} {
		handler.records = nil
		n, err := w.Write([]byte(tc.line))
		if err != nil || n != len(tc.line) {
			t.Errorf("Write(%q) = %d, %v; want %d, nil", tc.line, n, err, len(tc.line))
		}
		if len(handler.records) != 1 {
			t.Errorf("Write(%q) logged %d records, want 1", tc.line, len(handler.records))
			continue
		}
		if got := handler.records[0]; got.Level != tc.level || got.Message != tc.msg {
			t.Errorf("Write(%q) logged %v %q, want %v %q", tc.line, got.Level, got.Message, tc.level, tc.msg)
		}
	}
}

func TestLogWriterSkipsDisabledLevels(t *testing.T) {
	var out bytes.Buffer
	w := &logWriter{logger: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	if _, err := w.Write([]byte("[DEBUG] memberlist: hidden\n")); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Errorf("a debug line reached an info logger: %q", out.String())
	}
}

func TestLogWriterQuietsClosedSocketsWhileStopping(t *testing.T) {
	handler := &recordingHandler{}
	stopping := new(atomic.Bool)
	w := &logWriter{logger: slog.New(handler), stopping: stopping}
	line := []byte("[ERR] memberlist: Failed to send gossip to 127.0.0.1:7947: write udp: use of closed network connection\n")

	if _, err := w.Write(line); err != nil {
		t.Fatal(err)
	}
	stopping.Store(true)
	if _, err := w.Write(line); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("[ERR] memberlist: Failed to send ping: timeout\n")); err != nil {
		t.Fatal(err)
	}

	if len(handler.records) != 3 {
		t.Fatalf("logged %d records, want 3", len(handler.records))
	}
	if got := handler.records[0].Level; got != slog.LevelError {
		t.Errorf("closed-socket error before Shutdown logged at %v, want error", got)
	}
	if got := handler.records[1].Level; got != slog.LevelDebug {
		t.Errorf("closed-socket error during Shutdown logged at %v, want debug", got)
	}
	if got := handler.records[2].Level; got != slog.LevelError {
		t.Errorf("other error during Shutdown logged at %v, want error", got)
	}
}
