package api

import (
	"strconv"

	"github.com/throttlecentral/throttle-central/protocol"
)

// parseReport decodes a well-formed report without reflection: an object
// with node_id, slot_number, optional version, and consumption and
// rejection as service -> user -> resource -> number. It returns false for
// anything else, and the caller decodes again with encoding/json, which
// also names the field at fault. Anything else is escapes in strings,
// null, unknown keys, a syntax error, a slot that is not a plain integer, a
// repeated consumption or rejection key, or more entries than
// MaxReportServices, MaxReportUsers or MaxReportResources allow. The entry
// limits are checked as each entry is added, so parsing stops at the first
// entry over one. Reports are the leader's hottest input: at 200 nodes of
// 1,000 users each, generic JSON decoding was the largest single cost.
func parseReport(data []byte) (*protocol.Report, bool) {
	p := reportParser{data: data}
	r := &protocol.Report{}
	seenNode, seenSlot := false, false
	if !p.consume('{') {
		return nil, false
	}
	for first := true; ; first = false {
		if p.consume('}') {
			break
		}
		if !first && !p.consume(',') {
			return nil, false
		}
		key, ok := p.str()
		if !ok || !p.consume(':') {
			return nil, false
		}
		switch key {
		case "node_id":
			if r.NodeID, ok = p.str(); !ok {
				return nil, false
			}
			seenNode = true
		case "slot_number":
			if r.Slot, ok = p.integer(); !ok {
				return nil, false
			}
			seenSlot = true
		case "version":
			version, ok := p.integer()
			if !ok || (version != 0 && version != ReportVersion2) {
				return nil, false
			}
			r.Version = int(version)
		// encoding/json merges a repeated key's object into the map it
		// decoded before, so a repeat is left to it.
		case "consumption":
			if r.Consumption != nil {
				return nil, false
			}
			if r.Consumption, ok = p.counts(); !ok {
				return nil, false
			}
		case "rejection":
			if r.Rejection != nil {
				return nil, false
			}
			if r.Rejection, ok = p.counts(); !ok {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	p.space()
	if p.pos != len(p.data) || !seenNode || !seenSlot {
		return nil, false
	}
	// As the checked decoder does, a missing map is an empty one.
	if r.Consumption == nil {
		r.Consumption = protocol.Counts{}
	}
	if r.Rejection == nil {
		r.Rejection = protocol.Counts{}
	}
	return r, true
}

type reportParser struct {
	data []byte
	pos  int
	// names holds the service and resource names seen in this report, so
	// the thousand users that name the same resources share one string.
	names map[string]string
}

func (p *reportParser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// consume skips white space and then c, reporting whether c was there.
func (p *reportParser) consume(c byte) bool {
	p.space()
	if p.pos < len(p.data) && p.data[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

// str reads a string without escapes.
func (p *reportParser) str() (string, bool) {
	raw, ok := p.rawStr()
	return string(raw), ok
}

// name reads a string like str, reusing the string of an equal name read
// before in this report.
func (p *reportParser) name() (string, bool) {
	raw, ok := p.rawStr()
	if !ok {
		return "", false
	}
	if s, seen := p.names[string(raw)]; seen {
		return s, true
	}
	if p.names == nil {
		p.names = make(map[string]string, 8)
	}
	s := string(raw)
	p.names[s] = s
	return s, true
}

// rawStr reads a string without escapes and returns its bytes.
func (p *reportParser) rawStr() ([]byte, bool) {
	if !p.consume('"') {
		return nil, false
	}
	start := p.pos
	for p.pos < len(p.data) {
		switch c := p.data[p.pos]; {
		case c == '"':
			raw := p.data[start:p.pos]
			p.pos++
			return raw, true
		case c == '\\' || c < 0x20:
			return nil, false
		}
		p.pos++
	}
	return nil, false
}

// numberText returns the bytes of a JSON number.
func (p *reportParser) numberText() []byte {
	p.space()
	start := p.pos
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			p.pos++
			continue
		}
		break
	}
	return p.data[start:p.pos]
}

// integer reads a JSON number that is a plain integer. strconv.ParseInt
// alone would also take a leading '+' or leading zeros, which JSON forbids.
func (p *reportParser) integer() (int64, bool) {
	text := p.numberText()
	if !validJSONNumber(text) {
		return 0, false
	}
	v, err := strconv.ParseInt(string(text), 10, 64)
	return v, err == nil
}

func (p *reportParser) number() (float64, bool) {
	text := p.numberText()
	if !validJSONNumber(text) {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(text), 64)
	return v, err == nil
}

// validJSONNumber checks the JSON number grammar, which is stricter than
// strconv's: no leading '+', no leading zeros, digits around the point.
func validJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		digits := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == digits {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		digits := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == digits {
			return false
		}
	}
	return i == len(b)
}

// object reads an object whose values are read by value. Keys are read
// with name when shared is set.
func (p *reportParser) object(shared bool, value func(key string) bool) bool {
	if !p.consume('{') {
		return false
	}
	for first := true; ; first = false {
		if p.consume('}') {
			return true
		}
		if !first && !p.consume(',') {
			return false
		}
		read := p.str
		if shared {
			read = p.name
		}
		key, ok := read()
		if !ok || !p.consume(':') || !value(key) {
			return false
		}
	}
}

// typicalUserBytes is the size of a typical user's entry in a report, with
// a few resources, used to size the users map. A report of shorter entries
// gets a map that grows.
const typicalUserBytes = 64

// maxUsersHint caps the size the users map of a report is made with.
const maxUsersHint = 4096

// counts reads service -> user -> resource -> number. It returns false as
// soon as a map has more entries than MaxReportServices, MaxReportUsers or
// MaxReportResources allow. Counting the map after each insert counts a
// repeated key once, as encoding/json does.
func (p *reportParser) counts() (protocol.Counts, bool) {
	counts := protocol.Counts{}
	ok := p.object(true, func(service string) bool {
		// The bytes left give an estimate of the users of a report's first
		// service, so its map is sized once instead of growing about ten
		// times for 1,000 users. The estimate is capped, and later
		// services get maps that grow, so a report of many empty services
		// cannot make the leader allocate for users it does not name.
		hint := 0
		if len(counts) == 0 {
			hint = min((len(p.data)-p.pos)/typicalUserBytes, maxUsersHint)
		}
		users := make(map[string]map[string]float64, hint)
		counts[service] = users
		if len(counts) > MaxReportServices {
			return false
		}
		return p.object(false, func(user string) bool {
			resources := make(map[string]float64, 4)
			users[user] = resources
			if len(users) > MaxReportUsers {
				return false
			}
			return p.object(true, func(resource string) bool {
				v, ok := p.number()
				resources[resource] = v
				return ok && len(resources) <= MaxReportResources
			})
		})
	})
	return counts, ok
}
