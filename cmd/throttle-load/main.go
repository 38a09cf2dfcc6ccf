// Command throttle-load drives a throttle-central cluster with simulated
// edge nodes: each node sends one report a second, about 50 ms into the
// second, naming the same set of users, and the tool measures how long each
// report takes to get a response. It can also change limits every second.
//
// It sends traffic only to the centrals given with --centrals, and stops by
// itself after --duration.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/throttlecentral/throttle-central/internal/cli"
)

func main() {
	err := run(os.Args[1:], os.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "throttle-load:", err)
		os.Exit(2)
	}
}

type config struct {
	centrals     []string
	nodes        int
	users        int
	resources    int
	service      string
	duration     time.Duration
	limitChanges bool
	scheme       string
	insecure     bool
	asJSON       bool
}

// maxDuration bounds a run, so a mistyped flag cannot leave load running.
const maxDuration = 10 * time.Minute

func parse(args []string) (config, error) {
	var c config
	var centrals string
	flags := flag.NewFlagSet("throttle-load", flag.ContinueOnError)
	flags.StringVar(&centrals, "centrals", "127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083", "comma-separated HTTP host:port of the centrals; node i reports to central i mod count")
	flags.IntVar(&c.nodes, "nodes", 200, "simulated edge nodes")
	flags.IntVar(&c.users, "users", 1000, "users named in every report, the same for every node")
	flags.IntVar(&c.resources, "resources", 4, "resources per user")
	flags.StringVar(&c.service, "service", "load", "service name of the simulated traffic")
	flags.DurationVar(&c.duration, "duration", 60*time.Second, "how long to send reports (at most 10m)")
	flags.BoolVar(&c.limitChanges, "limit-changes", true, "change one user's limit every second while reporting")
	flags.BoolVar(&c.insecure, "tls-skip-verify", false, "use https without verifying the centrals' certificates")
	flags.BoolVar(&c.asJSON, "json", false, "print the result as one JSON object")
	if err := cli.ParseTool(flags, args, os.Stdout); err != nil {
		return c, err
	}
	c.scheme = "http"
	if c.insecure {
		c.scheme = "https"
	}
	for _, addr := range strings.Split(centrals, ",") {
		if addr = strings.TrimSpace(addr); addr != "" {
			c.centrals = append(c.centrals, addr)
		}
	}
	switch {
	case len(c.centrals) == 0:
		return c, errors.New("--centrals is empty")
	case c.nodes < 1 || c.nodes > 10000:
		return c, fmt.Errorf("--nodes %d must be 1 to 10000", c.nodes)
	case c.users < 1 || c.users > 100000:
		return c, fmt.Errorf("--users %d must be 1 to 100000", c.users)
	case c.resources < 1 || c.resources > 16:
		return c, fmt.Errorf("--resources %d must be 1 to 16", c.resources)
	case c.duration <= 0 || c.duration > maxDuration:
		return c, fmt.Errorf("--duration %v must be positive and at most %v", c.duration, maxDuration)
	}
	return c, nil
}

// result is the measurement of one run.
type result struct {
	Reports      int            `json:"reports"`
	Failed       int            `json:"failed"`
	Failures     map[string]int `json:"failures,omitempty"`
	WithQuota    int            `json:"replies_with_quota"`
	P50          float64        `json:"p50_ms"`
	P99          float64        `json:"p99_ms"`
	Max          float64        `json:"max_ms"`
	Over200ms    int            `json:"over_200ms"`
	LimitPuts    int            `json:"limit_puts"`
	LimitFailed  int            `json:"limit_puts_failed"`
	ReportBytes  int            `json:"report_bytes"`
	DurationSecs float64        `json:"duration_s"`
}

func run(args []string, stdout io.Writer) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: c.nodes,
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: c.insecure},
		},
	}
	if err := setLimits(client, c); err != nil {
		return err
	}

	resources := make([]string, c.resources)
	for i := range resources {
		resources[i] = "resource_" + strconv.Itoa(i)
	}
	var (
		mu        sync.Mutex
		latencies []float64
		res       = result{Failures: map[string]int{}}
	)
	ctx, cancel := context.WithTimeout(context.Background(), c.duration)
	defer cancel()
	var wg sync.WaitGroup
	for n := 0; n < c.nodes; n++ {
		template := reportTemplate(c, n, resources)
		res.ReportBytes = len(template)
		target := fmt.Sprintf("%s://%s/v1/report", c.scheme, c.centrals[n%len(c.centrals)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				next := time.Now().Truncate(time.Second).Add(time.Second + 50*time.Millisecond)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				body := bytes.Replace(template, []byte(`"slot_number":0`), []byte(`"slot_number":`+strconv.FormatInt(next.Unix(), 10)), 1)
				start := time.Now()
				outcome, quota := post(client, target, body)
				took := float64(time.Since(start).Microseconds()) / 1000
				mu.Lock()
				res.Reports++
				latencies = append(latencies, took)
				if outcome != "" {
					res.Failed++
					res.Failures[outcome]++
				}
				if quota {
					res.WithQuota++
				}
				mu.Unlock()
			}
		}()
	}
	if c.limitChanges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				err := putLimit(client, c, i%c.users, float64(1_000_000+i))
				mu.Lock()
				res.LimitPuts++
				if err != nil {
					res.LimitFailed++
				}
				mu.Unlock()
			}
		}()
	}
	begin := time.Now()
	wg.Wait()
	res.DurationSecs = time.Since(begin).Seconds()

	slices.Sort(latencies)
	res.P50, res.P99 = percentile(latencies, 50), percentile(latencies, 99)
	if len(latencies) > 0 {
		res.Max = latencies[len(latencies)-1]
	}
	for _, l := range latencies {
		if l > 200 {
			res.Over200ms++
		}
	}
	if c.asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "nodes=%d users=%d resources=%d duration=%.0fs report_bytes=%d\n", c.nodes, c.users, c.resources, res.DurationSecs, res.ReportBytes)
	fmt.Fprintf(stdout, "reports=%d failed=%d with_quota=%d over_200ms=%d\n", res.Reports, res.Failed, res.WithQuota, res.Over200ms)
	fmt.Fprintf(stdout, "latency_ms p50=%.1f p99=%.1f max=%.1f\n", res.P50, res.P99, res.Max)
	fmt.Fprintf(stdout, "limit_puts=%d failed=%d\n", res.LimitPuts, res.LimitFailed)
	for kind, count := range res.Failures {
		fmt.Fprintf(stdout, "failure %s: %d\n", kind, count)
	}
	return nil
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank-1, 0)]
}

// reportTemplate encodes node n's report with slot_number 0, which is
// replaced every second. Every user consumed a varying amount and one in
// ten was rejected once.
func reportTemplate(c config, n int, resources []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"node_id":"load-%d","slot_number":0,"consumption":{%q:{`, n, c.service)
	for u := 0; u < c.users; u++ {
		if u > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"user-%d":{`, u)
		for i, r := range resources {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `%q:%d`, r, 100+(u*7+n*13+i)%900)
		}
		b.WriteByte('}')
	}
	fmt.Fprintf(&b, `}},"rejection":{%q:{`, c.service)
	first := true
	for u := 0; u < c.users; u += 10 {
		if !first {
			b.WriteByte(',')
		}
		first = false
		fmt.Fprintf(&b, `"user-%d":{%q:1}`, u, resources[0])
	}
	b.WriteString(`}}}`)
	return b.Bytes()
}

// post sends one report and returns a failure kind ("" on success) and
// whether the reply held at least one quota entry.
func post(client *http.Client, target string, body []byte) (string, bool) {
	resp, err := client.Post(target, "application/json", bytes.NewReader(body))
	if err != nil {
		return "transport", false
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(resp.Body)
	if err != nil {
		return "read", false
	}
	if resp.StatusCode != http.StatusOK {
		return "http_" + strconv.Itoa(resp.StatusCode), false
	}
	return "", bytes.Contains(reply, []byte(`":{"user-`))
}

// setLimits gives every simulated user a limit on every resource.
func setLimits(client *http.Client, c config) error {
	for u := 0; u < c.users; u++ {
		if err := putLimit(client, c, u, 1_000_000); err != nil {
			return fmt.Errorf("setting the limit of user-%d: %w", u, err)
		}
	}
	return nil
}

func putLimit(client *http.Client, c config, user int, rate float64) error {
	limits := map[string]float64{}
	for i := 0; i < c.resources; i++ {
		limits["resource_"+strconv.Itoa(i)] = rate
	}
	body, _ := json.Marshal(map[string]any{"limit": limits})
	target := fmt.Sprintf("%s://%s/v1/limits/%s/user-%d", c.scheme, c.centrals[user%len(c.centrals)], c.service, user)
	req, err := http.NewRequest(http.MethodPut, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, answer)
	}
	return nil
}
