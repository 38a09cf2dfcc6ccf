package membership

import (
	"bytes"
	"context"
	"log/slog"
	"sync/atomic"
)

// levelTrace is the slog level for memberlist's [TRACE] lines, which slog
// lacks.
const levelTrace = slog.LevelDebug - 4

// logLevelTags maps the tags memberlist v0.5.4 starts its log lines with
// to slog levels.
var logLevelTags = []struct {
	tag   []byte
	level slog.Level
}{
	{[]byte("[TRACE]"), levelTrace},
	{[]byte("[DEBUG]"), slog.LevelDebug},
	{[]byte("[INFO]"), slog.LevelInfo},
	{[]byte("[WARN]"), slog.LevelWarn},
	{[]byte("[ERR]"), slog.LevelError},
	{[]byte("[ERROR]"), slog.LevelError},
}

// logWriter is the output of the *log.Logger given to memberlist. Each
// Write is one line such as "[WARN] memberlist: Refuting a suspect message
// (from: c2)": the tag sets the slog level, and the rest, without the
// "memberlist: " prefix, is the message. A line without a tag is logged at
// info.
type logWriter struct {
	logger *slog.Logger
	// stopping is set once Shutdown has begun. memberlist's gossip and
	// probe goroutines then fail to send on the closed sockets, and those
	// errors are logged at debug instead of error.
	stopping *atomic.Bool
}

// closedSocket is the error text of a send on a closed socket.
var closedSocket = []byte("use of closed network connection")

func (w *logWriter) Write(data []byte) (int, error) {
	line := bytes.TrimSpace(data)
	level := slog.LevelInfo
	for _, tagged := range logLevelTags {
		if rest, ok := bytes.CutPrefix(line, tagged.tag); ok {
			level = tagged.level
			line = bytes.TrimSpace(rest)
			break
		}
	}
	if level > slog.LevelDebug && w.stopping != nil && w.stopping.Load() && bytes.Contains(line, closedSocket) {
		level = slog.LevelDebug
	}
	ctx := context.Background()
	if !w.logger.Enabled(ctx, level) {
		return len(data), nil
	}
	line = bytes.TrimPrefix(line, []byte("memberlist: "))
	w.logger.Log(ctx, level, string(line))
	return len(data), nil
}
