package edge

import (
	"errors"
	"testing"
)

func TestDecisionErr(t *testing.T) {
	tests := []struct {
		name     string
		decision Decision
		want     string
	}{
		{
			name:     "consumption above central quota",
			decision: Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 1048576, Consumption: 11534593},
			want:     "request rejected: traffic_up consumption 11534593 is above the quota 1048576",
		},
		{
			name:     "central quota below 1",
			decision: Decision{Source: SourceCentral, Resource: "database_read", Quota: 0.5, Consumption: 0},
			want:     "request rejected: database_read quota 0.5 is below 1 (consumption 0)",
		},
		{
			name:     "consumption above safe share",
			decision: Decision{Source: SourceFallback, Resource: "traffic_up", Quota: 100, Consumption: 150.5},
			want:     "request rejected: traffic_up consumption 150.5 is above the safe share 100",
		},
		{
			name:     "closed fallback",
			decision: Decision{Source: SourceFallback},
			want:     "request rejected: no quota for this slot and the fallback policy is closed",
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			err := test.decision.Err()
			if err == nil {
				t.Fatalf("Err() = nil, want %q", test.want)
			}
			if err.Error() != test.want {
				t.Errorf("Err() = %q, want %q", err, test.want)
			}
			if !errors.Is(err, ErrRejected) {
				t.Errorf("Err() = %q does not wrap ErrRejected", err)
			}
		})
	}
}

func TestDecisionErrAllowed(t *testing.T) {
	d := Decision{Allowed: true, Source: SourceCentral}
	if err := d.Err(); err != nil {
		t.Errorf("Err() = %q, want nil for an allowed decision", err)
	}
}

func TestQuotaSourceString(t *testing.T) {
	tests := []struct {
		source QuotaSource
		want   string
	}{
		{SourceCentral, "central"},
		{SourceFallback, "fallback"},
		{QuotaSource(0), "QuotaSource(0)"},
	}
	for _, test := range tests {
		if got := test.source.String(); got != test.want {
			t.Errorf("QuotaSource(%d).String() = %q, want %q", int(test.source), got, test.want)
		}
	}
}
