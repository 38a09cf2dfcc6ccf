package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/throttlecentral/throttle-central/quota"
)

// benchReportBody is a report of users x 4 resources, as the load tool
// sends it.
func benchReportBody(users int, slot int64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"node_id":"bench","slot_number":%d,"consumption":{"front":{`, slot)
	for u := 0; u < users; u++ {
		if u > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"user-%d":{"traffic_up":%d,"traffic_down":1.2345678901234e+14,"database_read":%d,"database_write":3}`, u, 100+u, u%17)
	}
	b.WriteString(`}},"rejection":{"front":{"user-0":{"traffic_up":1}}}}`)
	return b.Bytes()
}

// BenchmarkReportDecoding compares, on the same bytes, plain JSON decoding
// into generic maps, DecodeReport (decoding and validation), and
// DecodeReport followed by the engine's Ingest: what one core can take in
// per second.
func BenchmarkReportDecoding(b *testing.B) {
	const users = 1000
	body := benchReportBody(users, 1_800_000_000)
	b.Run("json-any", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			var v map[string]any
			if err := json.Unmarshal(body, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-report", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if _, err := DecodeReport(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-and-ingest", func(b *testing.B) {
		e, err := quota.New(quota.Config{HistorySlots: 2})
		if err != nil {
			b.Fatal(err)
		}
		for u := 0; u < users; u++ {
			limits := map[string]quota.Limit{"traffic_up": {Rate: 1e6}, "traffic_down": {Rate: 1e15}, "database_read": {Rate: 100}, "database_write": {Rate: 100}}
			if err := e.SetLimits("front", "user-"+strconv.Itoa(u), limits, 1); err != nil {
				b.Fatal(err)
			}
		}
		bodies := make([][]byte, 64)
		for i := range bodies {
			bodies[i] = benchReportBody(users, int64(1_800_000_000+i))
		}
		b.SetBytes(int64(len(body)))
		i := 0
		for b.Loop() {
			r, err := DecodeReport(bodies[i%len(bodies)])
			if err != nil {
				b.Fatal(err)
			}
			// A slot the node has not sent yet, so nothing is skipped as a
			// duplicate.
			r.Slot += int64(i / len(bodies) * len(bodies))
			if _, err := e.Ingest(r); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
