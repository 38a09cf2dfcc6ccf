package edge

import (
	"errors"
	"strings"
	"testing"
)

func TestParseFallbackPolicyValid(t *testing.T) {
	tests := []struct {
		name string
		want FallbackPolicy
	}{
		{"open", FallbackOpen},
		{"closed", FallbackClosed},
		{"safe-share", FallbackSafeShare},
	}
	for _, test := range tests {
		got, err := ParseFallbackPolicy(test.name)
		if err != nil {
			t.Errorf("ParseFallbackPolicy(%q) error: %v", test.name, err)
			continue
		}
		if got != test.want {
			t.Errorf("ParseFallbackPolicy(%q) = %v, want %v", test.name, got, test.want)
		}
		if s := got.String(); s != test.name {
			t.Errorf("%v.String() = %q, want %q", got, s, test.name)
		}
	}
}

func TestParseFallbackPolicyInvalid(t *testing.T) {
	for _, name := range []string{"", "Open", "safe_share", "safeshare", "deny", " open"} {
		_, err := ParseFallbackPolicy(name)
		if err == nil {
			t.Errorf("ParseFallbackPolicy(%q) error = nil, want an error", name)
			continue
		}
		if !errors.Is(err, ErrInvalidFallbackPolicy) {
			t.Errorf("ParseFallbackPolicy(%q) error %q does not wrap ErrInvalidFallbackPolicy", name, err)
		}
		if quoted := `"` + name + `"`; !strings.Contains(err.Error(), quoted) {
			t.Errorf("ParseFallbackPolicy(%q) error %q does not name the value %s", name, err, quoted)
		}
		if !strings.Contains(err.Error(), "open, closed, safe-share") {
			t.Errorf("ParseFallbackPolicy(%q) error %q does not list the accepted values", name, err)
		}
	}
}

func TestFallbackPolicyZeroIsSafeShare(t *testing.T) {
	var policy FallbackPolicy
	if policy != FallbackSafeShare {
		t.Errorf("zero FallbackPolicy = %v, want %v", policy, FallbackSafeShare)
	}
}

func TestFallbackPolicyStringOutOfRange(t *testing.T) {
	if got := FallbackPolicy(9).String(); got != "FallbackPolicy(9)" {
		t.Errorf("FallbackPolicy(9).String() = %q, want %q", got, "FallbackPolicy(9)")
	}
}

func TestFallbackPolicyText(t *testing.T) {
	var policy FallbackPolicy
	if err := policy.UnmarshalText([]byte("closed")); err != nil {
		t.Fatalf("UnmarshalText(closed) error: %v", err)
	}
	if policy != FallbackClosed {
		t.Errorf("UnmarshalText(closed) stored %v, want %v", policy, FallbackClosed)
	}

	text, err := policy.MarshalText()
	if err != nil {
		t.Fatalf("MarshalText(%v) error: %v", policy, err)
	}
	if string(text) != "closed" {
		t.Errorf("MarshalText(%v) = %q, want %q", policy, text, "closed")
	}

	if err := policy.UnmarshalText([]byte("deny")); !errors.Is(err, ErrInvalidFallbackPolicy) {
		t.Errorf("UnmarshalText(deny) error = %v, want ErrInvalidFallbackPolicy", err)
	}
	if policy != FallbackClosed {
		t.Errorf("UnmarshalText(deny) changed the policy to %v, want it left %v", policy, FallbackClosed)
	}
	if _, err := FallbackPolicy(9).MarshalText(); !errors.Is(err, ErrInvalidFallbackPolicy) {
		t.Errorf("MarshalText(FallbackPolicy(9)) error = %v, want ErrInvalidFallbackPolicy", err)
	}
}
