package api

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

// marshalLuaReply is the reference: what encoding/json writes for the
// quotas passed through RoundQuota.
func marshalLuaReply(t testing.TB, slot string, quotas map[string]protocol.Quotas) []byte {
	t.Helper()
	byService := make(map[string]map[string]protocol.Quotas, len(quotas))
	for service, q := range quotas {
		rounded := make(protocol.Quotas, len(q))
		for user, resources := range q {
			rounded[user] = make(map[string]float64, len(resources))
			for resource, amount := range resources {
				rounded[user][resource] = RoundQuota(amount)
			}
		}
		byService[service] = map[string]protocol.Quotas{slot: rounded}
	}
	data, err := json.Marshal(byService)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestLuaReplyMatchesEncodingJSON(t *testing.T) {
	names := []string{"alice", "a\"b", `c\d`, "<tag>&", "ü", "日本", "x\u2028y", "tab\there", "\x01", "bad\xffutf8", ""}
	floats := []float64{0, 1, 0.5, 1048576, 1.2345678901234e+14, 1e21, 1e-7, 123456789.125, 3e-300, math.MaxFloat64, 53.333333333333336, -0, 2.3, 0.0004, 999999999.9999}
	quotas := map[string]protocol.Quotas{}
	for i, service := range names[:4] {
		users := protocol.Quotas{}
		for j, user := range names {
			resources := map[string]float64{}
			for k, resource := range names[:3] {
				resources[resource+strconv.Itoa(k)] = floats[(i+j+k)%len(floats)]
			}
			users[user] = resources
		}
		quotas[service] = users
	}
	quotas["empty"] = protocol.Quotas{}
	got := appendLuaReply(nil, "1796411857", quotas)
	want := marshalLuaReply(t, "1796411857", quotas)
	if !bytes.Equal(got, want) {
		t.Errorf("encoded reply differs from encoding/json:\n got %s\nwant %s", got, want)
	}
	if got := appendLuaReply(nil, "5", nil); string(got) != "{}" {
		t.Errorf("no services encode as %s, want {}", got)
	}
}

// encodeAhead encodes quotas per service as the leader does after an
// assignment.
func encodeAhead(quotas map[string]protocol.Quotas) map[string][]byte {
	encoded := make(map[string][]byte, len(quotas))
	for service, users := range quotas {
		encoded[service] = AppendQuotas(nil, users)
	}
	return encoded
}

func TestReplyEncodedAheadMatchesPlain(t *testing.T) {
	quotas := map[string]protocol.Quotas{
		"front": {"alice": {"traffic_up": 1048576.5, "requests": 3}, "<b&b>": {"traffic_up": 1e-7}},
		"video": {},
	}
	shares := map[string]protocol.Shares{"front": {"alice": {"traffic_up": 40}}}
	for _, version := range []int{0, ReportVersion2} {
		r := &protocol.Report{Version: version, NodeID: "edge-1", Slot: 1796411856}
		plain := ReportReply{NodeSlot: 1796411857, CentralSlot: 1796411858, Offset: 1, Quotas: quotas, Shares: shares}
		ahead := plain
		ahead.Quotas, ahead.Encoded = nil, encodeAhead(quotas)
		want := EncodeReply(r, plain, "c1")
		if got := EncodeReply(r, ahead, "c1"); !bytes.Equal(got, want) {
			t.Errorf("version %d: reply from quotas encoded ahead differs:\n got %s\nwant %s", version, got, want)
		}
		decoded, err := ahead.quotaMaps()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := marshalLuaReply(t, "1", decoded), marshalLuaReply(t, "1", quotas); !bytes.Equal(got, want) {
			t.Errorf("quotaMaps gives %s, want %s", got, want)
		}
	}
}

func TestQuotaEntriesMatchQuotas(t *testing.T) {
	entries := []quota.QuotaEntry{
		{Service: "front", User: "<b&b>", Resources: []string{"traffic_up"}, Amounts: []float64{1e-7}},
		{Service: "front", User: "alice", Resources: []string{"traffic_up", "requests", "db"}, Amounts: []float64{1048576.5, 3, 0}},
	}
	quotas := protocol.Quotas{}
	for _, entry := range entries {
		resources := map[string]float64{}
		for i, resource := range entry.Resources {
			resources[resource] = entry.Amounts[i]
		}
		quotas[entry.User] = resources
	}
	got := AppendQuotaEntries(nil, entries)
	want := AppendQuotas(nil, quotas)
	if !bytes.Equal(got, want) {
		t.Errorf("entries encode as %s, want %s", got, want)
	}
	if got := AppendQuotaEntries(nil, nil); string(got) != "{}" {
		t.Errorf("no entries encode as %s, want {}", got)
	}
}

func TestQuotasRoundedDownToThousandths(t *testing.T) {
	for _, tc := range []struct {
		quota float64
		want  string
	}{
		{0, "0"},
		{3, "3"},
		{2.3, "2.3"},
		{1048576.5, "1048576.5"},
		{53.333333333333336, "53.333"},
		{1996.0079840319362, "1996.007"},
		{0.001, "0.001"},
		{0.0019999, "0.001"},
		{2.2999999995, "2.299"},
		// Below a thousandth and from 1e9 on, quotas are written exactly,
		// so a small quota never becomes 0.
		{0.0004, "0.0004"},
		{1e-7, "1e-7"},
		{999999999.9999, "999999999.999"},
		{1e9 + 0.5, "1000000000.5"},
	} {
		if got := string(appendQuota(nil, tc.quota)); got != tc.want {
			t.Errorf("quota %v is written as %s, want %s", tc.quota, got, tc.want)
		}
		if got := RoundQuota(tc.quota); got > tc.quota {
			t.Errorf("RoundQuota(%v) = %v, more than the quota", tc.quota, got)
		}
	}
}

func TestVersion2ReplyRoundsQuotasWithoutCache(t *testing.T) {
	r := &protocol.Report{Version: ReportVersion2, NodeID: "edge-1", Slot: 1796411856}
	reply := ReportReply{NodeSlot: 1796411857, Quotas: map[string]protocol.Quotas{"front": {"alice": {"traffic_up": 2.0004567}}}}

	got := string(EncodeReply(r, reply, "c1"))

	if !strings.Contains(got, `"traffic_up":2}`) {
		t.Errorf("version 2 reply %s, want traffic_up written as 2 (rounded down to thousandths)", got)
	}
}

func TestLuaReplyRandomFloats(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 40000; i++ {
		f := math.Float64frombits(rng.Uint64())
		if i%2 == 1 {
			// Random bits are rarely in the rounded range; half the cases
			// are quota-sized.
			f = rng.Float64() * math.Pow(10, float64(rng.IntN(13)-4))
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			continue
		}
		quotas := map[string]protocol.Quotas{"s": {"u": {"r": f}}}
		got := appendLuaReply(nil, "1", quotas)
		want := marshalLuaReply(t, "1", quotas)
		if !bytes.Equal(got, want) {
			t.Fatalf("float %v (bits %x) encodes as %s, encoding/json writes %s", f, math.Float64bits(f), got, want)
		}
	}
}

func BenchmarkEncodeLuaReply(b *testing.B) {
	users := protocol.Quotas{}
	for u := 0; u < 1000; u++ {
		users["user-"+strconv.Itoa(u)] = map[string]float64{"traffic_up": 1048576.5, "traffic_down": 2e6, "database_read": 51200, "database_write": 10}
	}
	quotas := map[string]protocol.Quotas{"front": users}
	b.Run("reflection-free", func(b *testing.B) {
		for b.Loop() {
			appendLuaReply(nil, "1796411857", quotas)
		}
	})
	encoded := encodeAhead(quotas)
	b.Run("encoded-ahead", func(b *testing.B) {
		for b.Loop() {
			appendEncodedLuaReply(nil, "1796411857", encoded)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			marshalLuaReply(b, "1796411857", quotas)
		}
	})
}

// BenchmarkQuotaFormat compares writing 4,000 quotas as split shares of a
// limit (fractions with 16 or 17 significant digits) in the shortest
// representation, as encoding/json does, and rounded to thousandths, as
// replies do.
func BenchmarkQuotaFormat(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	quotas := make([]float64, 4000)
	for i := range quotas {
		quotas[i] = 1_000_000 / 500 * (0.5 + rng.Float64())
	}
	buf := make([]byte, 0, 100_000)
	b.Run("shortest", func(b *testing.B) {
		for b.Loop() {
			buf = buf[:0]
			for _, q := range quotas {
				buf = appendJSONFloat(buf, q)
			}
		}
	})
	b.Run("thousandths", func(b *testing.B) {
		for b.Loop() {
			buf = buf[:0]
			for _, q := range quotas {
				buf = appendQuota(buf, q)
			}
		}
	})
}

func TestQuotaEntriesSizeIsEnough(t *testing.T) {
	entries := []quota.QuotaEntry{
		{Service: "front", User: "alice", Resources: []string{"traffic_up", "db"}, Amounts: []float64{-1.2345678901234567e-300, 1.7976931348623157e308}},
		{Service: "front", User: "bob", Resources: []string{"requests"}, Amounts: []float64{53.333333333333336}},
		{Service: "front", User: "carol", Resources: []string{"x"}, Amounts: []float64{-0.000123456789012345}},
	}
	size := QuotaEntriesSize(entries)
	if got := AppendQuotaEntries(make([]byte, 0, size), entries); len(got) > size {
		t.Errorf("encoded %d bytes (%s), more than QuotaEntriesSize %d", len(got), got, size)
	}
}
