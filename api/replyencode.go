package api

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

// appendLuaReply appends {"<service>": {"<slot>": {"<user>": {"<resource>":
// quota}}}} to buf, byte for byte what encoding/json writes for the same
// maps with every quota passed through RoundQuota (sorted keys, the same
// escaping and number format), without reflection: the leader encodes one
// such reply per report.
func appendLuaReply(buf []byte, slot string, quotas map[string]protocol.Quotas) []byte {
	buf = append(buf, '{')
	for i, service := range sortedKeys(quotas) {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, service)
		buf = append(buf, ":{"...)
		buf = appendJSONString(buf, slot)
		buf = append(buf, ':')
		buf = AppendQuotas(buf, quotas[service])
		buf = append(buf, '}')
	}
	return append(buf, '}')
}

// appendEncodedLuaReply is appendLuaReply for quotas encoded ahead by
// AppendQuotas or AppendQuotaEntries, one object per service.
func appendEncodedLuaReply(buf []byte, slot string, encoded map[string][]byte) []byte {
	buf = append(buf, '{')
	for i, service := range sortedKeys(encoded) {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, service)
		buf = append(buf, ":{"...)
		buf = appendJSONString(buf, slot)
		buf = append(buf, ':')
		buf = append(buf, encoded[service]...)
		buf = append(buf, '}')
	}
	return append(buf, '}')
}

// AppendQuotas appends one service's quotas, {"<user>": {"<resource>":
// quota}}, to buf as encoding/json would write them after RoundQuota.
func AppendQuotas(buf []byte, users protocol.Quotas) []byte {
	buf = append(buf, '{')
	for j, user := range sortedKeys(users) {
		if j > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, user)
		buf = append(buf, ":{"...)
		resources := users[user]
		var small [8]string
		for k, resource := range sortedKeysInto(small[:0], resources) {
			if k > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, resource)
			buf = append(buf, ':')
			buf = appendQuota(buf, resources[resource])
		}
		buf = append(buf, '}')
	}
	return append(buf, '}')
}

// AppendQuotaEntries appends the quotas of one service, {"<user>":
// {"<resource>": quota}}, from the engine's entries of one node, which
// must all be of that service. Users are written in the order of entries,
// so the output is the same as AppendQuotas when they are sorted by user.
func AppendQuotaEntries(buf []byte, entries []quota.QuotaEntry) []byte {
	buf = append(buf, '{')
	for j, entry := range entries {
		if j > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, entry.User)
		buf = append(buf, ":{"...)
		var small [8]int
		order := small[:0]
		for k := range entry.Resources {
			order = append(order, k)
		}
		slices.SortFunc(order, func(a, b int) int { return strings.Compare(entry.Resources[a], entry.Resources[b]) })
		for k, index := range order {
			if k > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, entry.Resources[index])
			buf = append(buf, ':')
			buf = appendQuota(buf, entry.Amounts[index])
		}
		buf = append(buf, '}')
	}
	return append(buf, '}')
}

// QuotaEntriesSize returns at least the size that AppendQuotaEntries writes
// for entries whose names need no escape, so such a buffer never grows.
func QuotaEntriesSize(entries []quota.QuotaEntry) int {
	size := 2
	for _, entry := range entries {
		size += len(entry.User) + 6
		for _, resource := range entry.Resources {
			size += len(resource) + 4 + maxQuotaLength
		}
	}
	return size
}

// maxQuotaLength is the length of the longest number appendQuota writes,
// such as -1.2345678901234567e-300.
const maxQuotaLength = 24

func sortedKeys[V any](m map[string]V) []string {
	return sortedKeysInto(make([]string, 0, len(m)), m)
}

// sortedKeysInto is sortedKeys with the caller's buffer, so a user's few
// resources are sorted without allocating.
func sortedKeysInto[V any](keys []string, m map[string]V) []string {
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Quotas from quotaRoundMin up to quotaRoundMax are written rounded down
// to a thousandth of a unit. Formatting the shortest representation of
// every quota took about a tenth of the leader's CPU at 200 nodes of 1,000
// users, and a thousandth of a byte or a request changes no decision of an
// edge node. Rounding down never hands out more than the engine assigned.
const (
	quotaRoundMin = 1e-3
	quotaRoundMax = 1e9
)

// RoundQuota returns the quota that a reply carries for q: q rounded down
// to a thousandth from quotaRoundMin up to quotaRoundMax, q itself outside
// that range, so a small quota never becomes 0.
func RoundQuota(q float64) float64 {
	if q < quotaRoundMin || q >= quotaRoundMax {
		return q
	}
	return float64(thousandths(q)) / 1000
}

// thousandths returns q in whole thousandths, rounded down: the nearest
// whole number of thousandths, less one when that is more than q. So a
// product such as 2.3*1000 = 2299.9999999999995 stays at 2300, and
// 2.2999999995 becomes 2299.
func thousandths(q float64) int64 {
	m := int64(math.Round(q * 1000))
	if float64(m)/1000 > q {
		m--
	}
	return m
}

// appendQuota appends RoundQuota(q) as encoding/json writes it. In the
// rounded range it formats the thousandths as an integer, which is several
// times faster than strconv's shortest representation.
func appendQuota(buf []byte, q float64) []byte {
	if q < quotaRoundMin || q >= quotaRoundMax {
		return appendJSONFloat(buf, q)
	}
	m := thousandths(q)
	buf = strconv.AppendInt(buf, m/1000, 10)
	fraction := m % 1000
	if fraction == 0 {
		return buf
	}
	digits := [3]byte{byte('0' + fraction/100), byte('0' + fraction/10%10), byte('0' + fraction%10)}
	n := 3
	for digits[n-1] == '0' {
		n--
	}
	buf = append(buf, '.')
	return append(buf, digits[:n]...)
}

// appendJSONFloat formats f as encoding/json does: the shortest
// representation, in exponent form only below 1e-6 or from 1e21 on.
// Quotas are always finite.
func appendJSONFloat(buf []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	buf = strconv.AppendFloat(buf, f, format, -1, 64)
	if format == 'e' {
		// Turn e-07 into e-7, as encoding/json does.
		n := len(buf)
		if n >= 4 && buf[n-4] == 'e' && buf[n-3] == '-' && buf[n-2] == '0' {
			buf[n-2] = buf[n-1]
			buf = buf[:n-1]
		}
	}
	return buf
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as encoding/json does, HTML escaping included.
func appendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
