package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"text/tabwriter"
	"time"
)

// writeRawJSON prints a central's JSON response unchanged but indented.
func writeRawJSON(w io.Writer, data []byte) error {
	var indented bytes.Buffer
	if err := json.Indent(&indented, data, "", "  "); err != nil {
		return fmt.Errorf("the response is not valid JSON: %v", err)
	}
	indented.WriteByte('\n')
	_, err := w.Write(indented.Bytes())
	return err
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	encoder := json.NewEncoder(w)
	encoder.SetIndent("", "  ")
	return encoder.Encode(v)
}

// newTable returns a writer that aligns tab-separated columns; call Flush
// after the last row.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// formatAmount prints an amount exactly when it is a whole number, and
// with up to 3 decimals otherwise.
func formatAmount(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e17 {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
}

// formatCompact prints an amount in at most about 5 characters with an SI
// suffix (k = 1000, M = 10^6, G = 10^9, T = 10^12, P = 10^15), for columns
// that list many values.
func formatCompact(v float64) string {
	v = roundSignificant(v, 3)
	abs := math.Abs(v)
	for _, unit := range []struct {
		suffix string
		size   float64
	}{{"P", 1e15}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3}} {
		if abs >= unit.size {
			return strconv.FormatFloat(roundSignificant(v/unit.size, 3), 'f', -1, 64) + unit.suffix
		}
	}
	return strconv.FormatFloat(roundSignificant(v, 3), 'f', -1, 64)
}

// roundSignificant rounds v to digits significant digits.
func roundSignificant(v float64, digits int) float64 {
	if v == 0 {
		return 0
	}
	scale := math.Pow(10, float64(digits)-math.Ceil(math.Log10(math.Abs(v))))
	return math.Round(v*scale) / scale
}

// formatMillis prints a unix time in milliseconds as RFC 3339 in UTC, to
// the second.
func formatMillis(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

// orDash returns s, or "-" when s is empty, so that table cells are never
// blank.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
