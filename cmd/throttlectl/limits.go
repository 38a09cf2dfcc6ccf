package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/throttlecentral/throttle-central/quota"
)

// limitRecord is one user's limits as the API returns them. Burst lists
// only the resources with an explicit burst.
type limitRecord struct {
	Service  string             `json:"service"`
	Username string             `json:"username"`
	Limit    map[string]float64 `json:"limit"`
	Burst    map[string]float64 `json:"burst,omitempty"`
	// TS is the leader's time of the last change, in unix milliseconds.
	TS int64 `json:"ts"`
}

// limitsRequest is the body of PUT /v1/limits/{service}/{user}.
type limitsRequest struct {
	Limit map[string]float64 `json:"limit"`
	Burst map[string]float64 `json:"burst,omitempty"`
}

const amountHelp = `A limit or burst is a number, optionally with a unit suffix:
  k, M, G, T, P         1000, 1000^2, 1000^3, 1000^4, 1000^5
  Ki, Mi, Gi, Ti, Pi    1024, 1024^2, 1024^3, 1024^4, 1024^5
and optionally a B after the suffix, or B alone (1 byte), for readability:
100MB is 100000000, 100MiB is 104857600, 1.5k is 1500, 512B is 512.
Units are case-sensitive: K, m and mb are rejected. Every number must be at
most 2^53 (about 9P) and not negative; decimals and 1e6 notation work.`

func limitsSetCommand() *command {
	return &command{
		name:      "limits set",
		arguments: "<service> <user> <resource>=<limit>[/<burst>] ...",
		summary:   "replace all limits of a user",
		details: `A limit is in tokens per second (bytes per second for traffic_up and
traffic_down). The burst is the bucket capacity, at least the limit; without
it the central uses 10 x the limit. The user's resources that are not named
lose their limit, because the command replaces the whole limit set.

` + amountHelp + `

Examples:
  throttlectl limits set front alice traffic_up=100MB traffic_down=1GiB/2GiB
  throttlectl limits set front alice database_read=200/200`,
		minArgs: 3,
		maxArgs: -1,
		setup: func(*flag.FlagSet) func(context.Context, *invocation) error {
			return runLimitsSet
		},
	}
}

func runLimitsSet(ctx context.Context, inv *invocation) error {
	service, user := inv.args[0], inv.args[1]
	if err := validateNames(service, user); err != nil {
		return err
	}
	request, err := parseLimitArguments(inv.args[2:])
	if err != nil {
		return err
	}
	body, err := json.Marshal(request)
	if err != nil {
		return err
	}
	resp, err := inv.client.do(ctx, http.MethodPut, userLimitsPath(service, user), nil, body)
	if err != nil {
		return err
	}
	return printRecordAnswer(inv, resp)
}

// parseLimitArguments parses resource=limit[/burst] arguments. Errors are
// usage errors that name the argument.
func parseLimitArguments(args []string) (limitsRequest, error) {
	request := limitsRequest{Limit: make(map[string]float64)}
	for _, arg := range args {
		// Values contain neither '=' nor '/', and names contain no '/', so
		// the last '=' ends the resource name.
		separator := strings.LastIndex(arg, "=")
		if separator < 0 {
			return request, usagef("argument %q is not <resource>=<limit>[/<burst>], for example traffic_up=100MB or traffic_up=100MB/1GB", arg)
		}
		resource, value := arg[:separator], arg[separator+1:]
		if err := quota.ValidateName("resource name", resource); err != nil {
			return request, usagef("argument %q: %v", arg, err)
		}
		if _, duplicate := request.Limit[resource]; duplicate {
			return request, usagef("resource %q is given twice; give each resource once", resource)
		}
		limitText, burstText, hasBurst := strings.Cut(value, "/")
		limit, err := parseAmount(limitText)
		if err != nil {
			return request, usagef("argument %q: limit %v", arg, err)
		}
		request.Limit[resource] = limit
		if !hasBurst {
			continue
		}
		burst, err := parseAmount(burstText)
		if err != nil {
			return request, usagef("argument %q: burst %v", arg, err)
		}
		if burst < limit {
			return request, usagef("argument %q: burst %s is below the limit %s; give a burst of at least the limit, or leave it out for %d x the limit",
				arg, formatAmount(burst), formatAmount(limit), quota.DefaultBurstFactor)
		}
		if request.Burst == nil {
			request.Burst = make(map[string]float64)
		}
		request.Burst[resource] = burst
	}
	return request, nil
}

// unitSuffixes lists the accepted suffixes, longest first, so that MiB is
// matched before B.
var unitSuffixes = []struct {
	suffix     string
	multiplier float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"PiB", 1 << 50},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"Pi", 1 << 50},
	{"kB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"PB", 1e15},
	{"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"P", 1e15},
	{"B", 1},
}

// parseAmount parses a limit or burst: a number with an optional unit
// suffix (see amountHelp). The error starts with the quoted text.
func parseAmount(text string) (float64, error) {
	number, multiplier := text, 1.0
	for _, unit := range unitSuffixes {
		if prefix, ok := strings.CutSuffix(text, unit.suffix); ok {
			number, multiplier = prefix, unit.multiplier
			break
		}
	}
	if number == "" {
		return 0, fmt.Errorf("%q has no number; give for example 100, 100k or 100MiB", text)
	}
	v, err := strconv.ParseFloat(number, 64)
	switch {
	case err != nil && strings.HasSuffix(number, "K"):
		return 0, fmt.Errorf("%q has the unit K, which is ambiguous; use k for 1000 or Ki for 1024", text)
	case err != nil && strings.HasSuffix(number, "m"):
		return 0, fmt.Errorf("%q has the unit m, which is not supported; use M for 10^6", text)
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not a number with an optional unit: use digits with k, M, G, T, P (powers of 1000) or Ki, Mi, Gi, Ti, Pi (powers of 1024), optionally followed by B, for example 100MB or 1.5Ki", text)
	}
	v *= multiplier
	if err := quota.CheckAmount(strconv.Quote(text), v); err != nil {
		return 0, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), quota.ErrInvalid.Error()+": "))
	}
	return v, nil
}

func limitsGetCommand() *command {
	return &command{
		name:      "limits get",
		arguments: "<service> <user>",
		summary:   "show the limits of a user",
		details: `Reads from the first central that responds. A follower can be about
100 ms behind the leader; --consistent reads through the leader.`,
		minArgs: 2,
		maxArgs: 2,
		setup: func(flags *flag.FlagSet) func(context.Context, *invocation) error {
			consistent := flags.Bool("consistent", false, "read through the leader, so the response has every committed change")
			return func(ctx context.Context, inv *invocation) error {
				service, user := inv.args[0], inv.args[1]
				if err := validateNames(service, user); err != nil {
					return err
				}
				resp, err := inv.client.do(ctx, http.MethodGet, userLimitsPath(service, user), consistentQuery(*consistent), nil)
				if err != nil {
					return err
				}
				return printRecordAnswer(inv, resp)
			}
		},
	}
}

func limitsListCommand() *command {
	return &command{
		name:      "limits list",
		arguments: "[<service>]",
		summary:   "list the limits of every user of one service, or of every service",
		details:   `Users are sorted by service, then by name.`,
		minArgs:   0,
		maxArgs:   1,
		setup: func(flags *flag.FlagSet) func(context.Context, *invocation) error {
			consistent := flags.Bool("consistent", false, "read through the leader, so the response has every committed change")
			return func(ctx context.Context, inv *invocation) error {
				path := "/v1/limits"
				if len(inv.args) == 1 {
					if err := quota.ValidateName("service", inv.args[0]); err != nil {
						return usagef("%v", err)
					}
					path += "/" + pathSegment(inv.args[0])
				}
				resp, err := inv.client.do(ctx, http.MethodGet, path, consistentQuery(*consistent), nil)
				if err != nil {
					return err
				}
				if inv.output == outputJSON {
					return writeRawJSON(inv.stdout, resp.body)
				}
				var records []limitRecord
				if err := json.Unmarshal(resp.body, &records); err != nil {
					return fmt.Errorf("the response of %s is not a list of limits: %v", resp.central, err)
				}
				if len(records) == 0 {
					fmt.Fprintln(inv.stdout, "No limits are set.")
					return nil
				}
				return printLimitTable(inv.stdout, records)
			}
		},
	}
}

func limitsDeleteCommand() *command {
	return &command{
		name:      "limits delete",
		arguments: "<service> <user>",
		summary:   "delete every limit of a user",
		details: `The user is no longer limited from the next quota assignment on. With
-o json the output is {"service": ..., "user": ..., "deleted": true}.`,
		minArgs: 2,
		maxArgs: 2,
		setup: func(*flag.FlagSet) func(context.Context, *invocation) error {
			return func(ctx context.Context, inv *invocation) error {
				service, user := inv.args[0], inv.args[1]
				if err := validateNames(service, user); err != nil {
					return err
				}
				if _, err := inv.client.do(ctx, http.MethodDelete, userLimitsPath(service, user), nil, nil); err != nil {
					return err
				}
				if inv.output == outputJSON {
					return writeJSON(inv.stdout, map[string]any{"service": service, "user": user, "deleted": true})
				}
				fmt.Fprintf(inv.stdout, "Deleted the limits of user %q of service %q.\n", user, service)
				return nil
			}
		},
	}
}

// validateNames checks a service and user name as the central does, so
// that a bad name is a usage error.
func validateNames(service, user string) error {
	if err := quota.ValidateName("service", service); err != nil {
		return usagef("%v", err)
	}
	if err := quota.ValidateName("user", user); err != nil {
		return usagef("%v", err)
	}
	return nil
}

func userLimitsPath(service, user string) string {
	return "/v1/limits/" + pathSegment(service) + "/" + pathSegment(user)
}

func consistentQuery(consistent bool) url.Values {
	if !consistent {
		return nil
	}
	return url.Values{"consistent": {"true"}}
}

// printRecordAnswer prints the record of a PUT or GET of one user.
func printRecordAnswer(inv *invocation, resp *response) error {
	if inv.output == outputJSON {
		return writeRawJSON(inv.stdout, resp.body)
	}
	var record limitRecord
	if err := json.Unmarshal(resp.body, &record); err != nil {
		return fmt.Errorf("the response of %s is not a limit record: %v", resp.central, err)
	}
	return printLimitTable(inv.stdout, []limitRecord{record})
}

// printLimitTable prints one row per user and resource. A burst the
// central defaults is shown as its value followed by "(default)".
func printLimitTable(w io.Writer, records []limitRecord) error {
	table := newTable(w)
	fmt.Fprintln(table, "SERVICE\tUSER\tRESOURCE\tLIMIT/S\tBURST\tCHANGED (UTC)")
	for _, record := range records {
		for _, resource := range slices.Sorted(maps.Keys(record.Limit)) {
			limit := record.Limit[resource]
			burst := formatAmount(limit*quota.DefaultBurstFactor) + " (default)"
			if explicit, ok := record.Burst[resource]; ok {
				burst = formatAmount(explicit)
			}
			fmt.Fprintf(table, "%s\t%s\t%s\t%s\t%s\t%s\n", record.Service, record.Username, resource,
				formatAmount(limit), burst, formatMillis(record.TS))
		}
	}
	return table.Flush()
}

func limitsImportCommand() *command {
	return &command{
		name:      "limits import",
		arguments: "<file>",
		summary:   "set the limits of every user in a file written by limits list -o json",
		details: `The file is the JSON list that "throttlectl limits list -o json" prints, so
this command restores a backup or copies limits to another cluster. Each
user's whole limit set is replaced, as by limits set; users that are not in
the file keep their limits. A file name of - reads standard input. Every
record is checked before the first request, and the import stops at the
first request that fails, naming the record; the records before it stay
set, and running the import again is harmless.

Example:
  throttlectl limits list -o json > limits.json
  throttlectl --addr 10.0.0.9:8081 limits import limits.json`,
		minArgs: 1,
		maxArgs: 1,
		setup: func(*flag.FlagSet) func(context.Context, *invocation) error {
			return runLimitsImport
		},
	}
}

func runLimitsImport(ctx context.Context, inv *invocation) error {
	name := inv.args[0]
	var data []byte
	var err error
	if name == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return usagef("reading the limits file: %v", err)
	}
	var records []limitRecord
	if err := json.Unmarshal(data, &records); err != nil {
		return usagef("%s is not a list of limits as limits list -o json writes it: %v", name, err)
	}
	for i, record := range records {
		if err := validateNames(record.Service, record.Username); err != nil {
			return usagef("record %d of %s: %v", i+1, name, err)
		}
		if len(record.Limit) == 0 {
			return usagef("record %d of %s (%s/%s) has no limit", i+1, name, record.Service, record.Username)
		}
	}
	for i, record := range records {
		body, err := json.Marshal(limitsRequest{Limit: record.Limit, Burst: record.Burst})
		if err != nil {
			return err
		}
		if _, err := inv.client.do(ctx, http.MethodPut, userLimitsPath(record.Service, record.Username), nil, body); err != nil {
			return fmt.Errorf("record %d of %s (%s/%s): %w; the %d records before it are set", i+1, name, record.Service, record.Username, err, i)
		}
	}
	if inv.output == outputJSON {
		return writeJSON(inv.stdout, map[string]any{"imported": len(records)})
	}
	fmt.Fprintf(inv.stdout, "Set the limits of %d users from %s.\n", len(records), name)
	return nil
}
