package quota

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// DefaultBurstFactor is the bucket capacity, in seconds of rate, of a limit
// that sets no burst.
const DefaultBurstFactor = 10

// Limit is the token bucket of one (service, user, resource).
type Limit struct {
	// Rate is the refill in tokens per second (per slot).
	Rate float64 `json:"limit"`
	// Burst is the bucket capacity in tokens. Zero means DefaultBurstFactor
	// times Rate.
	Burst float64 `json:"burst,omitempty"`
}

// Capacity returns the bucket capacity in tokens: Burst, or
// DefaultBurstFactor × Rate when Burst is zero. It is never below Rate, so a
// bucket can always hold one second of tokens.
func (l Limit) Capacity() float64 {
	if l.Burst == 0 {
		return DefaultBurstFactor * l.Rate
	}
	return math.Max(l.Burst, l.Rate)
}

// ErrInvalid marks input that the engine rejects without applying any part
// of it.
var ErrInvalid = errors.New("invalid input")

// Validate checks that rate and burst are finite, not negative, and that an
// explicit burst holds at least one second of tokens. Errors wrap ErrInvalid
// and name the field.
func (l Limit) Validate() error {
	if err := CheckAmount("limit", l.Rate); err != nil {
		return err
	}
	if err := CheckAmount("burst", l.Burst); err != nil {
		return err
	}
	if l.Burst != 0 && l.Burst < l.Rate {
		return fmt.Errorf("%w: burst %v is below limit %v; set burst to at least the limit or leave it out for %d x limit",
			ErrInvalid, l.Burst, l.Rate, DefaultBurstFactor)
	}
	return nil
}

// MaxAmount is the largest amount a report or limit may carry: 2^53, above
// which float64 no longer represents every integer.
const MaxAmount = 1 << 53

// CheckAmount checks one count or limit: finite, not negative and at most
// MaxAmount. Errors wrap ErrInvalid and name field.
func CheckAmount(field string, v float64) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return fmt.Errorf("%w: %s is %v; it must be a finite number", ErrInvalid, field, v)
	case v < 0:
		return fmt.Errorf("%w: %s is %v; it must not be negative", ErrInvalid, field, v)
	case v > MaxAmount:
		return fmt.Errorf("%w: %s is %v; it must be at most 2^53", ErrInvalid, field, v)
	}
	return nil
}

// MaxNameLength is the longest service, user, resource or node name, in bytes.
const MaxNameLength = 128

// ErrNameTooLong marks a name longer than MaxNameLength, so callers can
// count it apart from other invalid input. It wraps ErrInvalid and has the
// same message, so the errors that wrap it read like every other invalid
// input.
var ErrNameTooLong = fmt.Errorf("%w", ErrInvalid)

// ValidateName checks a service, user, resource or node name: 1 to
// MaxNameLength bytes of printable characters, without '/'. field names the
// value in the error, for example "service" or "consumption.front".
func ValidateName(field, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalid, field)
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("%w: %s is %d bytes long; the maximum is %d", ErrNameTooLong, field, len(name), MaxNameLength)
	}
	for _, r := range name {
		if r == '/' || r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return fmt.Errorf("%w: %s %q contains %q; names are printable characters without '/'", ErrInvalid, field, name, r)
		}
	}
	if strings.TrimSpace(name) != name {
		return fmt.Errorf("%w: %s %q has leading or trailing spaces", ErrInvalid, field, name)
	}
	return nil
}

// validName reports whether ValidateName accepts name, without building an
// error.
func validName(name string) bool {
	if name == "" || len(name) > MaxNameLength || name[0] == ' ' || name[len(name)-1] == ' ' {
		return false
	}
	ascii := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '/' || c < 0x20 || c == 0x7f {
			return false
		}
		ascii = ascii && c < utf8.RuneSelf
	}
	if ascii {
		// Every ASCII space but ' ' is a control character, rejected above,
		// and ' ' cannot stand at either end.
		return true
	}
	for _, r := range name {
		if r == '\uFFFD' {
			return false
		}
	}
	return strings.TrimSpace(name) == name
}

// validAmount reports whether CheckAmount accepts v.
func validAmount(v float64) bool {
	return v >= 0 && v <= MaxAmount
}
