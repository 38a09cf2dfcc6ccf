package edge

import (
	"errors"
	"fmt"
	"strconv"
)

// QuotaSource is the origin of the quota behind a decision.
type QuotaSource int

const (
	// SourceCentral means the central's quotas for the slot decided: either
	// the user's quota entry, or the absence of an entry for the user.
	SourceCentral QuotaSource = iota + 1
	// SourceFallback means the fallback policy decided: the node had no
	// quota of the service for the slot, or the central's quotas had no
	// entry for the user and the user's safe share was enforced instead.
	SourceFallback
)

// String returns "central" or "fallback".
func (s QuotaSource) String() string {
	switch s {
	case SourceCentral:
		return "central"
	case SourceFallback:
		return "fallback"
	}
	return fmt.Sprintf("QuotaSource(%d)", int(s))
}

// ErrRejected is wrapped by the error that Decision.Err returns for a
// rejected request.
var ErrRejected = errors.New("request rejected")

// Decision is the result of Throttle for one request.
type Decision struct {
	// Allowed is true when the request may be served.
	Allowed bool
	// Source is the origin of the quota behind the decision.
	Source QuotaSource
	// Resource is the exhausted resource of a rejected request. It is empty
	// when the closed fallback policy rejected the request, because then no
	// resource was checked.
	Resource string
	// Quota is the quota of Resource in force for the slot: the central's
	// quota or the user's safe share. It is 0 for a closed rejection.
	Quota float64
	// Consumption is the consumption of Resource in the slot so far, before
	// this request.
	Consumption float64
}

// Err returns nil for an allowed request. For a rejected request it returns
// an error that wraps ErrRejected and names the resource, the quota and the
// consumption.
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	if d.Resource == "" {
		return fmt.Errorf("%w: no quota for this slot and the fallback policy is %s", ErrRejected, FallbackClosed)
	}

	quota := "quota " + formatAmount(d.Quota)
	if d.Source == SourceFallback {
		quota = "safe share " + formatAmount(d.Quota)
	}
	if d.Quota < 1 {
		return fmt.Errorf("%w: %s %s is below 1 (consumption %s)",
			ErrRejected, d.Resource, quota, formatAmount(d.Consumption))
	}
	return fmt.Errorf("%w: %s consumption %s is above the %s",
		ErrRejected, d.Resource, formatAmount(d.Consumption), quota)
}

// formatAmount prints an amount without an exponent, so that byte counts
// read as whole numbers.
func formatAmount(amount float64) string {
	return strconv.FormatFloat(amount, 'f', -1, 64)
}
