package central

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
)

// BenchmarkPutLimits measures sustained limit PUTs over HTTP on a
// three-node loopback cluster: each PUT is replicated to a quorum before
// it is answered. The "follower" case adds the forward to the leader.
func BenchmarkPutLimits(b *testing.B) {
	for _, target := range []string{"leader", "follower"} {
		b.Run("to="+target, func(b *testing.B) {
			nodes := startCluster(b, 3)
			leaderID := waitForCluster(b, nodes)
			addr := ""
			for _, n := range nodes {
				if (n.id() == leaderID) == (target == "leader") {
					addr = n.c.HTTPAddr()
					break
				}
			}
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			var seq atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := seq.Add(1)
					body := fmt.Sprintf(`{"limit":{"traffic_up":%d}}`, i)
					req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/v1/limits/bench/u%d", addr, i%1000), bytes.NewBufferString(body))
					if err != nil {
						b.Error(err)
						return
					}
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("PUT: status %d", resp.StatusCode)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
		})
	}
}
