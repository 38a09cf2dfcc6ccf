package raftnode

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// slogLevelTrace is the slog level for hclog's Trace, which slog lacks.
const slogLevelTrace = slog.LevelDebug - 4

// hclogAdapter is an hclog.Logger that writes every line through a
// *slog.Logger, so hashicorp/raft logs to the same handler as the rest of the
// service. hclog levels map to slog levels one to one (Trace maps to
// slog.LevelDebug-4). The slog handler decides what is written, and SetLevel
// can only drop more.
type hclogAdapter struct {
	base    *slog.Logger // the logger given to newHCLogAdapter, without name or implied args
	logger  *slog.Logger // base with the module name and the implied args attached
	name    string
	implied []any
	// minLevel is the hclog level below which lines are dropped. It is
	// shared by every logger derived with With or Named, as in hclog.
	minLevel *atomic.Int32
}

var _ hclog.Logger = (*hclogAdapter)(nil)

// newHCLogAdapter returns an hclog.Logger that writes through logger.
func newHCLogAdapter(logger *slog.Logger) *hclogAdapter {
	minLevel := new(atomic.Int32)
	minLevel.Store(int32(hclog.Trace))
	return &hclogAdapter{base: logger, logger: logger, minLevel: minLevel}
}

// derive returns a logger that shares the level of a and has the given name
// and implied args.
func (a *hclogAdapter) derive(name string, implied []any) *hclogAdapter {
	logger := a.base
	if name != "" {
		logger = logger.With("module", name)
	}
	if len(implied) > 0 {
		logger = logger.With(convertHCLogArgs(implied)...)
	}
	return &hclogAdapter{base: a.base, logger: logger, name: name, implied: implied, minLevel: a.minLevel}
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slogLevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		// hclog.Info, and hclog.NoLevel. hclog's own logger drops NoLevel
		// lines, but raft does not use it, so writing it as info loses
		// nothing.
		return slog.LevelInfo
	}
}

func (a *hclogAdapter) enabled(level hclog.Level) bool {
	if level == hclog.Off {
		return false
	}
	if level != hclog.NoLevel && level < hclog.Level(a.minLevel.Load()) {
		return false
	}
	return a.logger.Enabled(context.Background(), slogLevel(level))
}

// peerUnreachable lists the ERROR messages of hashicorp/raft v1.7.2 about a
// peer it cannot reach. A peer that is down or restarting brings one on
// every retry, and the cluster goes on while a majority is up, so they are
// written as warnings.
var peerUnreachable = []string{
	"failed to appendEntries to",
	"failed to heartbeat to",
	"failed to make requestVote RPC",
	"failed to start pipeline replication to",
	"failed to pipeline appendEntries",
}

// Log writes msg with the key-value pairs in args at the slog level that
// matches level, except that the messages in peerUnreachable are warnings.
func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Error && slices.Contains(peerUnreachable, msg) {
		level = hclog.Warn
	}
	if !a.enabled(level) {
		return
	}
	a.logger.Log(context.Background(), slogLevel(level), msg, convertHCLogArgs(args)...)
}

// convertHCLogArgs turns hclog's key-value pairs into slog arguments. It
// formats hclog's value wrappers (Fmt, Hex, Octal, Binary, Quote) as hclog
// does and turns fmt.Stringer values into strings, because slog's JSON
// handler would otherwise marshal raft's structs field by field. A value
// without a key gets hclog's key EXTRA_VALUE_AT_END.
func convertHCLogArgs(args []any) []any {
	out := make([]any, 0, len(args)+1)
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			out = append(out, hclog.MissingKey, convertHCLogValue(args[i]))
			break
		}
		key, ok := args[i].(string)
		if !ok {
			key = fmt.Sprint(args[i])
		}
		out = append(out, key, convertHCLogValue(args[i+1]))
	}
	return out
}

func convertHCLogValue(value any) any {
	switch v := value.(type) {
	case hclog.Format:
		if len(v) == 0 {
			return ""
		}
		format, ok := v[0].(string)
		if !ok {
			return fmt.Sprint(v...)
		}
		return fmt.Sprintf(format, v[1:]...)
	case hclog.Hex:
		return fmt.Sprintf("0x%x", int(v))
	case hclog.Octal:
		return fmt.Sprintf("0%o", int(v))
	case hclog.Binary:
		return fmt.Sprintf("0b%b", int(v))
	case hclog.Quote:
		return fmt.Sprintf("%q", string(v))
	case error:
		return v
	case fmt.Stringer:
		return v.String()
	default:
		return v
	}
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.implied }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	implied := make([]any, 0, len(a.implied)+len(args))
	implied = append(implied, a.implied...)
	implied = append(implied, args...)
	return a.derive(a.name, implied)
}

func (a *hclogAdapter) Name() string { return a.name }

// Named appends name to the logger's name with a dot, as hclog does. The
// name is written as the "module" attribute.
func (a *hclogAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.derive(name, a.implied)
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return a.derive(name, a.implied)
}

// SetLevel drops lines below level. Lines at or above it are still subject
// to the slog handler's own level.
func (a *hclogAdapter) SetLevel(level hclog.Level) {
	a.minLevel.Store(int32(level))
}

// GetLevel returns the lowest hclog level that is written, or hclog.Off when
// nothing is.
func (a *hclogAdapter) GetLevel() hclog.Level {
	for level := hclog.Trace; level <= hclog.Error; level++ {
		if a.enabled(level) {
			return level
		}
	}
	return hclog.Off
}

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

// StandardWriter returns a writer that logs each write as one line. With
// opts.InferLevels it reads the level from a leading "[DEBUG]"-style tag,
// as hclog does. Otherwise it uses opts.ForceLevel, or info.
func (a *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &hclogStandardWriter{logger: a, inferLevels: opts.InferLevels || opts.InferLevelsWithTimestamp, forceLevel: opts.ForceLevel}
}

type hclogStandardWriter struct {
	logger      *hclogAdapter
	inferLevels bool
	forceLevel  hclog.Level
}

// standardLevelTags maps the level tags of standard library log lines, as
// hclog recognizes them, to hclog levels.
var standardLevelTags = []struct {
	tag   string
	level hclog.Level
}{
	{"[TRACE]", hclog.Trace},
	{"[DEBUG]", hclog.Debug},
	{"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn},
	{"[ERROR]", hclog.Error},
	{"[ERR]", hclog.Error},
}

func (w *hclogStandardWriter) Write(data []byte) (int, error) {
	line := string(bytes.TrimRight(data, " \t\n"))
	level := w.forceLevel
	if w.inferLevels {
		for _, tagged := range standardLevelTags {
			if index := strings.Index(line, tagged.tag); index >= 0 {
				level = tagged.level
				line = strings.TrimSpace(line[index+len(tagged.tag):])
				break
			}
		}
	}
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	w.logger.Log(level, line)
	return len(data), nil
}
