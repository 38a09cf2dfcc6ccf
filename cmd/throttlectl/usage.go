package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

const environmentHelp = `Every flag can also be set as THROTTLECTL_<FLAG> in the environment, with
'-' as '_', for example THROTTLECTL_ADDR, THROTTLECTL_TOKEN or
THROTTLECTL_OUTPUT. A flag on the command line wins over the environment.`

const exitCodeHelp = `Exit codes: 0 on success, 1 when a request failed or a central returned an
error, 2 for invalid usage.`

func printMainUsage(w io.Writer, globalFlags *flag.FlagSet, all []*command) {
	fmt.Fprint(w, `Usage: throttlectl [global flags] <command> [arguments] [flags]

throttlectl is the command-line client of the throttle-central HTTP API. It
tries the centrals in --addr in order and moves to the next one on a
connection error, a timeout (--timeout) or a 502, 503 or 504 status. Any
other error status is final. A write may go to any central, because
followers forward it to the leader.

Commands:
`)
	printCommandList(w, all, "")
	fmt.Fprint(w, "\nGlobal flags, accepted before or after the command:\n")
	printFlags(w, globalFlags)
	fmt.Fprintf(w, "\n%s\n\n%s\n\nRun throttlectl <command> --help for a command's arguments and flags.\n", environmentHelp, exitCodeHelp)
}

func printCommandList(w io.Writer, all []*command, group string) {
	table := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, cmd := range all {
		if group != "" && !strings.HasPrefix(cmd.name, group+" ") {
			continue
		}
		fmt.Fprintf(table, "  %s %s\t%s\n", cmd.name, cmd.arguments, cmd.summary)
	}
	table.Flush()
}

func printGroupUsage(w io.Writer, group string, all []*command) {
	fmt.Fprintf(w, "Usage: throttlectl %s <subcommand> [arguments] [flags]\n\nSubcommands:\n", group)
	printCommandList(w, all, group)
	fmt.Fprintf(w, "\nRun throttlectl %s <subcommand> --help for its arguments and flags.\n", group)
}

func printCommandUsage(w io.Writer, cmd *command, commandFlags, globalFlags *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: throttlectl %s %s\n\n%s.\n", cmd.name, cmd.arguments, capitalize(cmd.summary))
	if cmd.details != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.details))
	}
	hasFlags := false
	commandFlags.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprint(w, "\nFlags:\n")
		printFlags(w, commandFlags)
	}
	if !cmd.offline {
		fmt.Fprint(w, "\nGlobal flags:\n")
		printFlags(w, globalFlags)
	}
	fmt.Fprintf(w, "\n%s\n\n%s\n", environmentHelp, exitCodeHelp)
}

func printFlags(w io.Writer, flags *flag.FlagSet) {
	flags.SetOutput(w)
	flags.PrintDefaults()
	flags.SetOutput(io.Discard)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// printHelpCommand handles "throttlectl help [command]". It returns
// flag.ErrHelp after printing, or a usage error for an unknown command.
func printHelpCommand(w io.Writer, globalFlags *flag.FlagSet, all []*command, args []string) error {
	if len(args) == 0 {
		printMainUsage(w, globalFlags, all)
		return flag.ErrHelp
	}
	cmd, _, err := findCommand(all, args)
	if errors.Is(err, flag.ErrHelp) || (err != nil && len(args) == 1 && isGroup(args[0])) {
		printGroupUsage(w, args[0], all)
		return flag.ErrHelp
	}
	if err != nil {
		return err
	}
	commandFlags := flag.NewFlagSet("throttlectl "+cmd.name, flag.ContinueOnError)
	commandFlags.SetOutput(io.Discard)
	cmd.setup(commandFlags)
	printCommandUsage(w, cmd, commandFlags, globalFlags)
	return flag.ErrHelp
}

func isGroup(word string) bool {
	return slices.Contains(commandGroups, word)
}
