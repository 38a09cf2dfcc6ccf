package edge

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/protocol"
)

const benchSlot = 1000

// newBenchThrottler returns a throttler and n user names. Each user has a
// quota entry of two resources in benchSlot, too large to reject, and has
// consumed both resources once.
func newBenchThrottler(b *testing.B, n int) (*Throttler, []string) {
	b.Helper()
	throttler, err := NewThrottler(Options{})
	if err != nil {
		b.Fatalf("NewThrottler: %v", err)
	}
	users := make([]string, n)
	quotas := protocol.Quotas{}
	for i := range users {
		users[i] = fmt.Sprintf("user%d", i)
		quotas[users[i]] = map[string]float64{"traffic_up": 1e18, "database_read": 1e18}
	}
	throttler.SetQuotas(testService, benchSlot, quotas)
	amounts := map[string]float64{"traffic_up": 4096, "database_read": 1}
	for _, user := range users {
		throttler.Consume(benchSlot, testService, user, amounts)
	}
	return throttler, users
}

func BenchmarkThrottle(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		throttler, users := newBenchThrottler(b, 1024)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			throttler.Throttle(benchSlot, testService, users[i%len(users)])
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		throttler, users := newBenchThrottler(b, 1024)
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1)) * 97
			for pb.Next() {
				throttler.Throttle(benchSlot, testService, users[i%len(users)])
				i++
			}
		})
	})
	b.Run("parallel-one-user", func(b *testing.B) {
		throttler, users := newBenchThrottler(b, 1)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				throttler.Throttle(benchSlot, testService, users[0])
			}
		})
	})
	b.Run("fallback-open", func(b *testing.B) {
		throttler, err := NewThrottler(Options{DefaultFallback: FallbackOpen})
		if err != nil {
			b.Fatalf("NewThrottler: %v", err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				throttler.Throttle(benchSlot, testService, "alice")
			}
		})
	})
}

func BenchmarkConsume(b *testing.B) {
	amounts := map[string]float64{"traffic_up": 4096, "database_read": 1}
	b.Run("serial", func(b *testing.B) {
		throttler, users := newBenchThrottler(b, 1024)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			throttler.Consume(benchSlot, testService, users[i%len(users)], amounts)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		throttler, users := newBenchThrottler(b, 1024)
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1)) * 97
			for pb.Next() {
				throttler.Consume(benchSlot, testService, users[i%len(users)], amounts)
				i++
			}
		})
	})
	b.Run("parallel-one-user", func(b *testing.B) {
		throttler, users := newBenchThrottler(b, 1)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				throttler.Consume(benchSlot, testService, users[0], amounts)
			}
		})
	})
}

// newBenchClient returns a client on the real clock and n user names. The
// client holds quotas like newBenchThrottler's for the current slot and
// the next 60, so the benchmarks measure the check against a quota for up
// to a minute. It never sends a report: the loop is not started.
func newBenchClient(b *testing.B, n int) (*Client, []string) {
	b.Helper()
	client, err := NewClient(ClientOptions{
		NodeID:    testNode,
		Centrals:  []string{"http://127.0.0.1:1"},
		Throttler: Options{KeepSlots: 64},
	})
	if err != nil {
		b.Fatalf("NewClient: %v", err)
	}
	users := make([]string, n)
	quotas := protocol.Quotas{}
	for i := range users {
		users[i] = fmt.Sprintf("user%d", i)
		quotas[users[i]] = map[string]float64{"traffic_up": 1e18, "database_read": 1e18}
	}
	now := time.Now().Unix()
	for slot := now; slot <= now+60; slot++ {
		client.throttler.SetQuotas(testService, slot, quotas)
	}
	return client, users
}

// benchErr keeps the benchmarks' errors alive, so that the compiler cannot
// drop the allocation of a rejection.
var benchErr error

func BenchmarkClientThrottle(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		client, users := newBenchClient(b, 1024)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			benchErr = client.Throttle(testService, users[i%len(users)])
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		client, users := newBenchClient(b, 1024)
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1)) * 97
			for pb.Next() {
				_ = client.Throttle(testService, users[i%len(users)])
				i++
			}
		})
	})
	b.Run("rejected", func(b *testing.B) {
		client, _ := newBenchClient(b, 1)
		now := time.Now().Unix()
		for slot := now; slot <= now+60; slot++ {
			client.throttler.SetQuotas(testService, slot, protocol.Quotas{"alice": {"traffic_up": 0}})
		}
		b.ReportAllocs()
		for b.Loop() {
			benchErr = client.Throttle(testService, "alice")
		}
	})
}

func BenchmarkClientConsume(b *testing.B) {
	amounts := map[string]float64{"traffic_up": 4096, "database_read": 1}
	b.Run("serial", func(b *testing.B) {
		client, users := newBenchClient(b, 1024)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			client.Consume(testService, users[i%len(users)], amounts)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		client, users := newBenchClient(b, 1024)
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1)) * 97
			for pb.Next() {
				client.Consume(testService, users[i%len(users)], amounts)
				i++
			}
		})
	})
}
