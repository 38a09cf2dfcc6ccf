// Command throttle-sim runs the accuracy simulator: every scenario in every
// allocation mode, with simulated time, and prints how close each second's
// admitted amount stays to the limit.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/throttlecentral/throttle-central/internal/cli"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/sim"
)

func main() {
	err := run(os.Args[1:], os.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "throttle-sim:", err)
		os.Exit(2)
	}
}

func run(args []string, stdout io.Writer) error {
	flags := flag.NewFlagSet("throttle-sim", flag.ContinueOnError)
	asJSON := flags.Bool("json", false, "print one JSON object per scenario and mode instead of a table")
	seed := flags.Uint64("seed", 1, "random seed for request sizes; the same seed gives the same output")
	only := flags.String("scenario", "", "run only the scenarios with these comma-separated names (default all)")
	list := flags.Bool("list", false, "list the scenarios and exit")
	trace := flags.Bool("trace", false, "also print each slot's admitted amount over the limit, per scenario and mode")
	if err := cli.ParseTool(flags, args, stdout); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; run throttle-sim --help for the flags", flags.Arg(0))
	}

	scenarios, err := pick(sim.Scenarios(), *only)
	if err != nil {
		return err
	}
	if *list {
		for _, sc := range scenarios {
			fmt.Fprintf(stdout, "%-18s %s\n", sc.Name, sc.Description)
		}
		return nil
	}

	var results []sim.Result
	for _, sc := range scenarios {
		for _, mode := range quota.Modes {
			res, err := sim.Run(sc, mode, *seed)
			if err != nil {
				return err
			}
			results = append(results, res)
		}
	}
	if *trace {
		printTrace(stdout, results)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, res := range results {
			if err := enc.Encode(res); err != nil {
				return err
			}
		}
		return nil
	}
	return printTable(stdout, results)
}

func pick(all []sim.Scenario, names string) ([]sim.Scenario, error) {
	if names == "" {
		return all, nil
	}
	var out []sim.Scenario
	for _, name := range strings.Split(names, ",") {
		found := false
		for _, sc := range all {
			if sc.Name == name {
				out = append(out, sc)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("scenario %q is unknown; run with -list to see the names", name)
		}
	}
	return out, nil
}

func printTable(w io.Writer, results []sim.Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tmode\tmean\tp5\tp50\tp95\tmax\tconverge_slots\tfirst_quota_slots\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%s\t%s\t\n",
			r.Scenario, r.Mode, r.Mean, r.P5, r.P50, r.P95, r.Max, slots(r.ConvergeSlots), slots(r.FirstQuotaSlots))
	}
	return tw.Flush()
}

// printTrace prints one line per scenario and mode: slot:ratio pairs.
func printTrace(w io.Writer, results []sim.Result) {
	for _, r := range results {
		fmt.Fprintf(w, "%s %s", r.Scenario, r.Mode)
		for slot := 1; slot < len(r.Ratios); slot++ {
			fmt.Fprintf(w, " %d:%.2f", slot, r.Ratios[slot])
		}
		fmt.Fprintln(w)
	}
}

func slots(n int) string {
	if n < 0 {
		return "-"
	}
	return fmt.Sprint(n)
}
