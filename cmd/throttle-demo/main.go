// Command throttle-demo runs the end-to-end demonstration of make demo. It
// starts three centrals and four throttle-agent edge nodes on 127.0.0.1
// and sets a limit of 100 MB/s for user alice. Skewed demand at three times
// the limit moves between the agents, and one agent and later the leader
// are killed with SIGKILL. It prints one line per second of the admitted
// amount against the limit. The last line is RESULT mean=<x> p5=<x>
// p95=<x> max=<x>: the per-second admitted amount over the limit, after
// the warm-up.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/throttlecentral/throttle-central/demo"

	"github.com/throttlecentral/throttle-central/internal/cli"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "throttle-demo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	flags := flag.NewFlagSet("throttle-demo", flag.ContinueOnError)
	binDir := flags.String("bin-dir", "bin", "directory holding the throttle-central and throttle-agent binaries")
	dir := flags.String("dir", "", "directory for the data and logs of every process (default: a new temporary directory, removed after a successful run)")
	short := flags.Bool("short", false, "run the 32 s scenario of the test suite instead of the 65 s one")
	limit := flags.Float64("limit", demo.DefaultLimit, "alice's limit in bytes per second")
	size := flags.Float64("request-size", demo.DefaultRequestSize, "bytes of one simulated request")
	demand := flags.Float64("demand", demo.DefaultDemand, "offered load as a multiple of the limit")
	if err := cli.ParseTool(flags, args, os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; run throttle-demo --help for the flags", flags.Arg(0))
	}

	workDir, keep := *dir, *dir != ""
	if !keep {
		var err error
		if workDir, err = os.MkdirTemp("", "throttle-demo-"); err != nil {
			return err
		}
		fmt.Printf("the logs go to %s, removed after a successful run; keep them with --dir DIR\n", workDir)
	}
	scenario := demo.Full
	if *short {
		scenario = demo.Short
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	result, err := demo.Run(ctx, demo.Config{
		CentralBinary: filepath.Join(*binDir, "throttle-central"),
		AgentBinary:   filepath.Join(*binDir, "throttle-agent"),
		Dir:           workDir,
		Scenario:      scenario,
		Limit:         *limit,
		RequestSize:   *size,
		Demand:        *demand,
		Out:           os.Stdout,
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; every process it started is stopped")
		}
		return fmt.Errorf("%w (logs in %s)", err, workDir)
	}
	if !keep {
		_ = os.RemoveAll(workDir)
	}

	summary := result.Summarize()
	if result.AgentKilledAt >= 0 {
		if summary.AgentShareMovedSecs >= 0 {
			fmt.Printf("agent killed at %ds: the survivors admitted at least 0.9x the limit again from second %d, %d s after the kill\n",
				result.AgentKilledAt, result.AgentKilledAt+summary.AgentShareMovedSecs, summary.AgentShareMovedSecs)
		} else {
			fmt.Printf("agent killed at %ds: the survivors never admitted 0.9x the limit again\n", result.AgentKilledAt)
		}
	}
	if result.LeaderKilledAt >= 0 {
		fmt.Printf("leader %s killed at %ds: highest second in the next 10 s %.3fx the limit\n",
			result.KilledLeader, result.LeaderKilledAt, result.MaxAround(result.LeaderKilledAt, 10))
	}
	fmt.Printf("per-second admitted amount over the limit, %d seconds after a %d s warm-up, lowest %.3f\n", summary.Seconds, result.Warmup, summary.Min)
	fmt.Println(summary.ResultLine())
	return nil
}
