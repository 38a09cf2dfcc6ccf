// Package cli holds what the commands share: flags read from the
// environment, duration flags with a helpful error, comma-separated lists
// and the log set-up.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"regexp"
	"strings"
	"time"
)

// EnvName returns the environment variable of a flag: prefix, then the
// flag name in upper case with '-' as '_'.
func EnvName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ApplyEnvironment sets every flag of flags that the command line did not
// set from its environment variable (see EnvName), read with lookup. An
// invalid value gives an error naming the variable. The value itself is
// left out of the message for flags whose name ends in "key" or "token",
// because those hold secrets.
func ApplyEnvironment(flags *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	_, err := applyEnvironment(flags, prefix, Given(flags), lookup)
	return err
}

// applyEnvironment is ApplyEnvironment for the flags not in given. It
// returns the names of the flags it set.
func applyEnvironment(flags *flag.FlagSet, prefix string, given map[string]bool, lookup func(string) (string, bool)) (map[string]bool, error) {
	set := make(map[string]bool)
	var errs []error
	flags.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := EnvName(prefix, f.Name)
		value, ok := lookup(name)
		if !ok {
			return
		}
		if err := flags.Set(f.Name, value); err != nil {
			if secret(f.Name) {
				errs = append(errs, fmt.Errorf("environment variable %s is invalid", name))
			} else {
				errs = append(errs, fmt.Errorf("environment variable %s=%q is invalid: %s", name, value, explainValueError(f, err)))
			}
			return
		}
		set[f.Name] = true
	})
	return set, errors.Join(errs...)
}

// ConfigFlag is the name of the flag that names a config file.
const ConfigFlag = "config"

// ApplySettings fills the flags that the command line did not set. The
// environment comes first (see ApplyEnvironment). The flags still unset
// then come from the config file named by the flag ConfigFlag, when flags
// has it and it is set (see ApplyConfigFile). So the command line wins
// over the environment, and the environment over the file.
func ApplySettings(flags *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	given := Given(flags)
	fromEnvironment, err := applyEnvironment(flags, prefix, given, lookup)
	if err != nil {
		return err
	}
	config := flags.Lookup(ConfigFlag)
	if config == nil || config.Value.String() == "" {
		return nil
	}
	for name := range fromEnvironment {
		given[name] = true
	}
	return ApplyConfigFile(flags, config.Value.String(), given)
}

func secret(flagName string) bool {
	return strings.HasSuffix(flagName, "key") || strings.HasSuffix(flagName, "token")
}

// duration is a flag.Value for a time.Duration whose error shows how to
// write one.
type duration struct{ d *time.Duration }

func (v duration) String() string {
	if v.d == nil {
		return "0s"
	}
	return v.d.String()
}

func (v duration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration; use a number with a unit, such as 500ms, 2s or 1m", s)
	}
	*v.d = d
	return nil
}

// DurationVar defines a duration flag like flag.DurationVar, with an error
// message that shows how to write a duration. The help names the flag's
// type "duration" and gives examples, through the backquoted word that
// flag.PrintDefaults takes as the type name.
func DurationVar(flags *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	if !strings.Contains(usage, "`") {
		usage += " (a `duration` such as 500ms or 2s)"
	}
	flags.Var(duration{p}, name, usage)
}

// Command describes a command for Parse.
type Command struct {
	// Usage is the first line of the help, such as
	// "Usage: throttle-agent --centrals URL,... [flags]".
	Usage string
	// EnvPrefix is the prefix of the environment variables, such as
	// "THROTTLE_AGENT_", and EnvExample one of them, for the help.
	EnvPrefix, EnvExample string
}

// Parse defines the --config flag, parses args into flags and fills the
// flags the command line left unset from the environment and the config
// file (see ApplySettings). The help goes to help, only when args request
// it. Errors are returned, not printed, so the caller prints each once.
// Positional arguments are an error.
func Parse(flags *flag.FlagSet, args []string, cmd Command, help io.Writer, lookup func(string) (string, bool)) error {
	flags.SetOutput(io.Discard)
	flags.String(ConfigFlag, "", "file of settings, one \"name = value\" a line with the flag names without the leading dashes (log-level = debug); the command line wins over the environment, and the environment over the file")
	flags.Usage = func() {
		if !HelpRequested(args) {
			return
		}
		flags.SetOutput(help)
		fmt.Fprintf(help, "%s\n\n", cmd.Usage)
		fmt.Fprintf(help, "Every flag can also be set as %s<FLAG> in the environment, for example %s, or in the file that --config names.\n\nFlags:\n", cmd.EnvPrefix, cmd.EnvExample)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		return ExplainParseError(flags, err)
	}
	if err := ApplySettings(flags, cmd.EnvPrefix, lookup); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; flags start with --", flags.Arg(0))
	}
	return nil
}

// ParseTool parses the flags of a tool without environment variables or a
// config file. On -h or --help it writes the flag list to help and returns
// flag.ErrHelp. An invalid flag gives an error from ExplainParseError with
// a hint to --help, without the flag package's usage dump.
func ParseTool(flags *flag.FlagSet, args []string, help io.Writer) error {
	flags.SetOutput(io.Discard)
	flags.Usage = func() {
		if HelpRequested(args) {
			fmt.Fprintf(help, "Usage of %s:\n", flags.Name())
			flags.SetOutput(help)
			flags.PrintDefaults()
			flags.SetOutput(io.Discard)
		}
	}
	err := flags.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w; run %s --help for the flags", ExplainParseError(flags, err), flags.Name())
}

// invalidValue matches the flag package's error for a value its own flag
// types cannot parse.
var invalidValue = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-(\S+): (.*)$`)

// ExplainParseError rewrites the flag package's "parse error" for an int,
// uint, float or bool flag into what the value must be, and names the flag
// with the two dashes the help uses.
func ExplainParseError(flags *flag.FlagSet, err error) error {
	m := invalidValue.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	f := flags.Lookup(m[2])
	if f == nil {
		return err
	}
	dashes := "--"
	if len(f.Name) == 1 {
		dashes = "-"
	}
	return fmt.Errorf("invalid value %s for flag %s%s: %s", m[1], dashes, f.Name, explainValueError(f, errors.New(m[3])))
}

// explainValueError returns the message of err, a failed Set of flag f,
// saying what the value must be when err is the flag package's bare "parse
// error" or "value out of range".
func explainValueError(f *flag.Flag, err error) string {
	message := err.Error()
	if message != "parse error" && message != "value out of range" {
		return message
	}
	getter, ok := f.Value.(flag.Getter)
	if !ok {
		return message
	}
	outOfRange := message == "value out of range"
	switch getter.Get().(type) {
	case bool:
		return "must be true or false"
	case int, int64:
		if outOfRange {
			return fmt.Sprintf("must be a whole number from %d to %d", math.MinInt64, math.MaxInt64)
		}
		return "must be a whole number, such as 10"
	case uint, uint64:
		if outOfRange {
			return fmt.Sprintf("must be a whole number from 0 to %d", uint64(math.MaxUint64))
		}
		return "must be a whole number of 0 or more, such as 10"
	case float64:
		if outOfRange {
			return fmt.Sprintf("must be a number from %g to %g", -math.MaxFloat64, math.MaxFloat64)
		}
		return "must be a number, such as 2.5 or 1e6"
	}
	return message
}

// HelpRequested reports whether args ask for the help (-h, -help, --h or
// --help before a "--"). A command prints its full help then, and only a
// short hint after an invalid flag, so the error is not lost above pages
// of help.
func HelpRequested(args []string) bool {
	for _, arg := range args {
		switch arg {
		case "--":
			return false
		case "-h", "-help", "--h", "--help":
			return true
		}
	}
	return false
}

// SplitList splits a comma-separated list, trimming spaces and leaving out
// empty items.
func SplitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// NewLogger returns a logger writing to w at level (debug, info, warn or
// error) in format (text or json). Its errors name the flags --log-level
// and --log-format.
func NewLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q is invalid; use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q is invalid; use text or json", format)
}

// ApplyConfigFile sets every flag of flags that neither the command line
// nor the environment set from the file at path: one "name = value" a line,
// name being the flag name without the leading dashes, with blank lines and lines
// starting with # ignored. given lists the flags already set. An unknown
// name, a line without "=" or an invalid value is an error naming the line.
func ApplyConfigFile(flags *flag.FlagSet, path string, given map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading the config file: %w", err)
	}
	seen := make(map[string]int)
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, found := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		number := i + 1
		switch {
		case !found:
			return fmt.Errorf("%s line %d: %q is not name = value", path, number, line)
		case flags.Lookup(name) == nil:
			return fmt.Errorf("%s line %d: unknown setting %q; use a flag name without the leading dashes, such as log-level, see --help", path, number, name)
		case name == "config":
			return fmt.Errorf("%s line %d: a config file cannot name another config file", path, number)
		case seen[name] > 0:
			return fmt.Errorf("%s line %d: %q is already set on line %d", path, number, name, seen[name])
		}
		seen[name] = number
		if given[name] {
			continue
		}
		if err := flags.Set(name, value); err != nil {
			if secret(name) {
				return fmt.Errorf("%s line %d: the value of %s is invalid", path, number, name)
			}
			return fmt.Errorf("%s line %d: %s = %q is invalid: %s", path, number, name, value, explainValueError(flags.Lookup(name), err))
		}
	}
	return nil
}

// Given returns the names of the flags that the command line set.
func Given(flags *flag.FlagSet) map[string]bool {
	given := make(map[string]bool)
	flags.Visit(func(f *flag.Flag) { given[f.Name] = true })
	return given
}
