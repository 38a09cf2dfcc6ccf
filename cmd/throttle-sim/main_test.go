package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestJSONOutputHasTheFields(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-json", "-scenario", "steady", "-seed", "3"}, &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	lines := 0
	scanner := bufio.NewScanner(&out)
	for scanner.Scan() {
		lines++
		var row map[string]any
		if err := json.Unmarshal(scanner.Bytes(), &row); err != nil {
			t.Fatalf("line %d is not JSON: %v", lines, err)
		}
		for _, field := range []string{"scenario", "mode", "mean", "p5", "p50", "p95", "max", "converge_slots"} {
			if _, ok := row[field]; !ok {
				t.Errorf("line %d has no field %q: %s", lines, field, scanner.Text())
			}
		}
		if row["scenario"] != "steady" {
			t.Errorf("line %d: scenario %v, want steady", lines, row["scenario"])
		}
	}
	if lines != 2 {
		t.Errorf("got %d lines, want one per mode (2)", lines)
	}
}

func TestTableNamesEveryMode(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-scenario", "steady"}, &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	for _, want := range []string{"scenario", "reserve", "classic"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestUnknownScenarioIsAnError(t *testing.T) {
	err := run([]string{"-scenario", "nope"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("run with an unknown scenario: %v, want an error naming it", err)
	}
}

func TestExtraArgumentIsAnError(t *testing.T) {
	if err := run([]string{"steady"}, &bytes.Buffer{}); err == nil {
		t.Errorf("run with a positional argument succeeded")
	}
}

func TestTracePrintsEverySlot(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-trace", "-scenario", "cold-start"}, &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	first := strings.SplitN(out.String(), "\n", 2)[0]
	if !strings.HasPrefix(first, "cold-start reserve 1:") || !strings.Contains(first, " 40:") {
		t.Errorf("trace line %q lacks slots 1 to 40", first)
	}
}
