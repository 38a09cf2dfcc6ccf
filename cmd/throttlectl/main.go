// Command throttlectl is the command-line client of the throttle-central
// HTTP API: it sets, reads and deletes limits, shows and changes the Raft
// cluster, lists gossip members and shows one user's consumption against
// the limit second by second.
//
// Every flag can also be set with an environment variable: THROTTLECTL_ and
// the flag name in upper case with '-' as '_', for example THROTTLECTL_ADDR
// for --addr. A flag on the command line wins over the environment.
//
// Exit codes: 0 on success, 1 when a request failed or a central returned
// an error, 2 for invalid usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/cli"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// envPrefix is the prefix of the environment variable of every flag.
const envPrefix = "THROTTLECTL_"

// globalOptions are the flags every command accepts, before or after the
// command name.
type globalOptions struct {
	addr          string
	token         string
	tokenFile     string
	timeout       time.Duration
	output        outputFormat
	tlsCA         string
	tlsSkipVerify bool
}

// outputFormat is the value of -o: table or json.
type outputFormat string

const (
	outputTable outputFormat = "table"
	outputJSON  outputFormat = "json"
)

func (f *outputFormat) String() string { return string(*f) }

func (f *outputFormat) Set(value string) error {
	switch outputFormat(value) {
	case outputTable, outputJSON:
		*f = outputFormat(value)
		return nil
	}
	return fmt.Errorf("output format %q is unknown; use table or json", value)
}

// flagAliases maps a short flag name to the long flag that it sets. The
// environment variable is only read for the long name.
var flagAliases = map[string]string{"o": "output"}

func registerGlobalFlags(flags *flag.FlagSet, o *globalOptions) {
	o.output = outputTable
	flags.StringVar(&o.addr, "addr", "127.0.0.1:8081", "comma-separated centrals to try in order, each host:port or an http:// or https:// URL; host:port means http://, or https:// when --tls-ca or --tls-skip-verify is set")
	flags.StringVar(&o.token, "token", "", "bearer token sent as \"Authorization: Bearer <token>\" with every request, for a proxy in front of the centrals; prefer THROTTLECTL_TOKEN or --token-file, because other users can read command lines")
	flags.StringVar(&o.tokenFile, "token-file", "", "file that contains the --token value")
	flags.Var(newDurationValue(&o.timeout, 5*time.Second), "timeout", "how long one request to one central may take before the next central in --addr is tried, a `duration` such as 5s or 500ms")
	flags.Var(&o.output, "output", "output `format`: table (aligned columns) or json")
	flags.Var(&o.output, "o", "short for --output `format`")
	flags.StringVar(&o.tlsCA, "tls-ca", "", "PEM CA bundle that verifies the centrals' certificates (default: the system roots)")
	flags.BoolVar(&o.tlsSkipVerify, "tls-skip-verify", false, "do not verify the centrals' certificates; for self-signed test set-ups only")
}

// usageError is invalid usage: exit code 2.
type usageError struct{ message string }

func (e *usageError) Error() string { return e.message }

func usagef(format string, args ...any) error {
	return &usageError{message: fmt.Sprintf(format, args...)}
}

// invocation is the input of one command run: its positional arguments,
// the API client and the output writers.
type invocation struct {
	command *command
	args    []string
	client  *client
	output  outputFormat
	stdout  io.Writer
	stderr  io.Writer
}

// command is one throttlectl command.
type command struct {
	// name is the command as typed, for example "limits set".
	name string
	// arguments shows the positional arguments in the usage line.
	arguments string
	summary   string
	// details is printed under the usage line by --help.
	details string
	// minArgs and maxArgs bound the positional arguments; maxArgs -1 means
	// any number.
	minArgs, maxArgs int
	// setup registers the command's own flags and returns the function
	// that runs the command once the flags are parsed.
	setup func(flags *flag.FlagSet) func(ctx context.Context, inv *invocation) error
	// offline commands send no request, so the global flags are not
	// checked.
	offline bool
}

// commands lists every command in the order of the help text.
func commands() []*command {
	return []*command{
		limitsSetCommand(),
		limitsGetCommand(),
		limitsListCommand(),
		limitsDeleteCommand(),
		limitsImportCommand(),
		clusterStatusCommand(),
		clusterJoinCommand(),
		clusterRemoveCommand(),
		membersCommand(),
		monitorCommand(),
		versionCommand(),
	}
}

// commandGroups are the first words of two-word commands.
var commandGroups = []string{"limits", "cluster"}

// run runs throttlectl with args (without the program name) and returns
// the exit code. Ctrl-C or SIGTERM cancels the running request and ends
// monitor.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runContext(ctx, args, stdout, stderr, os.LookupEnv)
}

// runContext is run with the context and the environment lookup passed in,
// so that tests can set both.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) int {
	inv, runCommand, err := parseCommandLine(args, stdout, stderr, lookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return reportError(stderr, err)
	}
	if err := runCommand(ctx, inv); err != nil {
		return reportError(stderr, fmt.Errorf("%s: %w", inv.command.name, err))
	}
	return exitOK
}

// reportError prints err and returns its exit code.
func reportError(stderr io.Writer, err error) int {
	fmt.Fprintln(stderr, "throttlectl:", err)
	var usage *usageError
	if errors.As(err, &usage) {
		return exitUsage
	}
	return exitFailure
}

// parseCommandLine parses the global flags, finds the command, parses its
// flags and arguments, applies the environment and builds the API client.
// It returns flag.ErrHelp after printing help to stdout.
func parseCommandLine(args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) (*invocation, func(context.Context, *invocation) error, error) {
	var global globalOptions
	globalFlags := flag.NewFlagSet("throttlectl", flag.ContinueOnError)
	globalFlags.SetOutput(io.Discard)
	registerGlobalFlags(globalFlags, &global)
	all := commands()

	if err := globalFlags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printMainUsage(stdout, globalFlags, all)
			return nil, nil, err
		}
		return nil, nil, usagef("%v; run throttlectl --help for the flags", cli.ExplainParseError(globalFlags, err))
	}
	rest := globalFlags.Args()
	if len(rest) == 0 {
		return nil, nil, usagef("no command given; run throttlectl --help for the commands")
	}
	if rest[0] == "help" {
		return nil, nil, printHelpCommand(stdout, globalFlags, all, rest[1:])
	}
	cmd, used, err := findCommand(all, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printGroupUsage(stdout, rest[0], all)
		}
		return nil, nil, err
	}

	commandFlags := flag.NewFlagSet("throttlectl "+cmd.name, flag.ContinueOnError)
	commandFlags.SetOutput(io.Discard)
	runCommand := cmd.setup(commandFlags)
	merged := mergeFlagSets(commandFlags, globalFlags)
	positional, err := parseInterleaved(merged, rest[used:])
	if errors.Is(err, flag.ErrHelp) {
		printCommandUsage(stdout, cmd, commandFlags, globalFlags)
		return nil, nil, err
	}
	if err != nil {
		return nil, nil, usagef("%s: %v; run throttlectl %s --help for the flags", cmd.name, err, cmd.name)
	}
	if err := applyEnvironment(merged, visited(globalFlags, merged), lookupEnv); err != nil {
		return nil, nil, &usageError{message: err.Error()}
	}
	if err := checkArgumentCount(cmd, positional); err != nil {
		return nil, nil, err
	}

	inv := &invocation{command: cmd, args: positional, output: global.output, stdout: stdout, stderr: stderr}
	if !cmd.offline {
		if inv.client, err = newClient(global); err != nil {
			return nil, nil, err
		}
	}
	return inv, runCommand, nil
}

// findCommand returns the command that args start with and how many words
// its name took.
func findCommand(all []*command, args []string) (*command, int, error) {
	first := args[0]
	for _, group := range commandGroups {
		if first != group {
			continue
		}
		var names []string
		for _, cmd := range all {
			if sub, ok := strings.CutPrefix(cmd.name, group+" "); ok {
				names = append(names, sub)
			}
		}
		if len(args) < 2 {
			return nil, 0, usagef("%s needs a subcommand: %s; run throttlectl %s --help", group, strings.Join(names, ", "), group)
		}
		if args[1] == "-h" || args[1] == "-help" || args[1] == "--help" {
			return nil, 0, flag.ErrHelp
		}
		for _, cmd := range all {
			if cmd.name == group+" "+args[1] {
				return cmd, 2, nil
			}
		}
		return nil, 0, usagef("unknown subcommand %q of %s; use one of %s", args[1], group, strings.Join(names, ", "))
	}
	for _, cmd := range all {
		if cmd.name == first {
			return cmd, 1, nil
		}
	}
	return nil, 0, usagef("unknown command %q; run throttlectl --help for the commands", first)
}

func checkArgumentCount(cmd *command, args []string) error {
	if len(args) >= cmd.minArgs && (cmd.maxArgs < 0 || len(args) <= cmd.maxArgs) {
		return nil
	}
	given := "no arguments"
	if len(args) > 0 {
		given = fmt.Sprintf("%d (%s)", len(args), strings.Join(quoteAll(args), " "))
	}
	expected := cmd.arguments
	if expected == "" {
		expected = "no arguments"
	}
	return usagef("%s takes %s; got %s; run throttlectl %s --help", cmd.name, expected, given, cmd.name)
}

func quoteAll(values []string) []string {
	quoted := make([]string, len(values))
	for i, v := range values {
		quoted[i] = fmt.Sprintf("%q", v)
	}
	return quoted
}

// mergeFlagSets returns one flag set with the flags of every set, sharing
// their values, so that flags of both kinds can be given in any order.
func mergeFlagSets(sets ...*flag.FlagSet) *flag.FlagSet {
	merged := flag.NewFlagSet(sets[0].Name(), flag.ContinueOnError)
	merged.SetOutput(io.Discard)
	for _, set := range sets {
		set.VisitAll(func(f *flag.Flag) {
			merged.Var(f.Value, f.Name, f.Usage)
			merged.Lookup(f.Name).DefValue = f.DefValue
		})
	}
	return merged
}

// parseInterleaved parses flags that come before, between or after the
// positional arguments and returns the positional arguments. Everything
// after "--" is positional, for names that start with '-'.
func parseInterleaved(flags *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := flags.Parse(args); err != nil {
			return nil, cli.ExplainParseError(flags, err)
		}
		rest := flags.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// visited returns the long names of the flags given on the command line.
func visited(sets ...*flag.FlagSet) map[string]bool {
	setOnCommandLine := make(map[string]bool)
	for _, set := range sets {
		set.Visit(func(f *flag.Flag) {
			setOnCommandLine[f.Name] = true
			if long, ok := flagAliases[f.Name]; ok {
				setOnCommandLine[long] = true
			}
		})
	}
	return setOnCommandLine
}

// applyEnvironment sets every flag not in setOnCommandLine from
// THROTTLECTL_<NAME>, where NAME is the flag name in upper case with '-' as
// '_'. An invalid value names the variable. The message leaves out the
// value of THROTTLECTL_TOKEN, because it is a secret.
func applyEnvironment(flags *flag.FlagSet, setOnCommandLine map[string]bool, lookup func(string) (string, bool)) error {
	var errs []error
	flags.VisitAll(func(f *flag.Flag) {
		if setOnCommandLine[f.Name] {
			return
		}
		if _, alias := flagAliases[f.Name]; alias {
			return
		}
		name := envVariable(f.Name)
		value, ok := lookup(name)
		if !ok {
			return
		}
		err := flags.Set(f.Name, value)
		switch {
		case err == nil:
		case f.Name == "token":
			errs = append(errs, fmt.Errorf("environment variable %s is invalid: %v", name, err))
		case isBoolFlag(f):
			errs = append(errs, fmt.Errorf("environment variable %s=%q is invalid; use true or false", name, value))
		case strings.Contains(err.Error(), strconv.Quote(value)):
			errs = append(errs, fmt.Errorf("environment variable %s is invalid: %v", name, err))
		default:
			errs = append(errs, fmt.Errorf("environment variable %s=%q is invalid: %v", name, value, err))
		}
	})
	return errors.Join(errs...)
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func envVariable(flagName string) string {
	return cli.EnvName(envPrefix, flagName)
}

func versionCommand() *command {
	return &command{
		name:    "version",
		summary: "print the version of throttlectl",
		maxArgs: 0,
		offline: true,
		setup: func(*flag.FlagSet) func(context.Context, *invocation) error {
			return func(_ context.Context, inv *invocation) error {
				fmt.Fprintln(inv.stdout, "throttlectl", buildVersion())
				return nil
			}
		},
	}
}

// buildVersion returns the module version and VCS revision that the Go
// toolchain stamped into the binary. The version is "(devel)" for a build
// from a working tree, and "(unknown)" without build information.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	version := info.Main.Version
	if version == "" {
		version = "(devel)"
	}
	for _, setting := range info.Settings {
		if setting.Key == "vcs.revision" {
			version += " " + setting.Value
		}
	}
	return version
}
