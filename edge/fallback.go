package edge

import (
	"errors"
	"fmt"
)

// FallbackPolicy is the rule the throttle applies to a request when the
// node has no quota of the request's service for the current slot, for
// example because the central is unreachable or the node has just started.
type FallbackPolicy int

const (
	// FallbackSafeShare enforces the user's safe share as if it were the
	// quota, and allows users whose share is not known. It is the zero value
	// and the default.
	FallbackSafeShare FallbackPolicy = iota
	// FallbackOpen allows every request.
	FallbackOpen
	// FallbackClosed rejects every request.
	FallbackClosed
)

// ErrInvalidFallbackPolicy is wrapped by the errors for an unknown fallback
// policy name or value.
var ErrInvalidFallbackPolicy = errors.New("invalid fallback policy")

const acceptedFallbackPolicies = "open, closed, safe-share"

// ParseFallbackPolicy parses a policy name: "open", "closed" or "safe-share".
func ParseFallbackPolicy(name string) (FallbackPolicy, error) {
	switch name {
	case "open":
		return FallbackOpen, nil
	case "closed":
		return FallbackClosed, nil
	case "safe-share":
		return FallbackSafeShare, nil
	}
	return 0, fmt.Errorf("%w %q: accepted values are %s", ErrInvalidFallbackPolicy, name, acceptedFallbackPolicies)
}

// String returns the policy name that ParseFallbackPolicy accepts, or
// "FallbackPolicy(N)" for a value outside the defined policies.
func (p FallbackPolicy) String() string {
	switch p {
	case FallbackOpen:
		return "open"
	case FallbackClosed:
		return "closed"
	case FallbackSafeShare:
		return "safe-share"
	}
	return fmt.Sprintf("FallbackPolicy(%d)", int(p))
}

// MarshalText encodes the policy as its name, so that JSON and flag
// packages show the name instead of a number.
func (p FallbackPolicy) MarshalText() ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	return []byte(p.String()), nil
}

// UnmarshalText parses a policy name, as ParseFallbackPolicy does.
func (p *FallbackPolicy) UnmarshalText(text []byte) error {
	policy, err := ParseFallbackPolicy(string(text))
	if err != nil {
		return err
	}
	*p = policy
	return nil
}

func (p FallbackPolicy) validate() error {
	switch p {
	case FallbackOpen, FallbackClosed, FallbackSafeShare:
		return nil
	}
	return fmt.Errorf("%w %s: accepted values are %s", ErrInvalidFallbackPolicy, p, acceptedFallbackPolicies)
}
