package central

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/throttlecentral/throttle-central/api/sigv4"
	"github.com/throttlecentral/throttle-central/protocol"
)

// secureEdge is a simulated edge node that reports either with HTTPS POSTs
// or over a presigned wss:// WebSocket, as the Lua client does.
type secureEdge struct {
	id        string
	websocket bool
	target    *testNode
	conn      *websocket.Conn
}

// report sends the edge's report for slot and returns its quota for slot+1
// and whether it got one.
func (e *secureEdge) report(t *testing.T, client *http.Client, slot int64) (float64, bool) {
	t.Helper()
	body, err := json.Marshal(protocol.Report{NodeID: e.id, Slot: slot,
		Consumption: protocol.Counts{"front": {"alice": {"traffic_up": 1000}}},
		Rejection:   protocol.Counts{"front": {"alice": {"traffic_up": 3}}}})
	if err != nil {
		t.Fatal(err)
	}
	var reply []byte
	if e.websocket {
		reply = e.exchange(t, client, body)
	} else {
		resp, err := client.Post("https://"+e.target.c.HTTPAddr()+"/v1/report", "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, false
		}
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		reply = buf.Bytes()
	}
	var quotas map[string]map[string]protocol.Quotas
	if reply == nil || json.Unmarshal(reply, &quotas) != nil {
		return 0, false
	}
	if len(quotas) != 1 {
		t.Errorf("edge %s, slot %d: reply %s names services other than front", e.id, slot, reply)
	}
	q, ok := quotas["front"][strconv.FormatInt(slot+1, 10)]["alice"]["traffic_up"]
	return q, ok
}

// exchange sends one frame and reads its reply, dialling first when the
// edge has no socket. A closed socket is dropped, so the next report dials
// again, as the Lua client moves on to its next central.
func (e *secureEdge) exchange(t *testing.T, client *http.Client, frame []byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	if e.conn == nil {
		addr := e.target.c.HTTPAddr()
		query := sigv4.Presign(testAccessKey, testSecretKey, http.MethodGet, addr, "/throttle",
			time.Now(), 60*time.Second, sigv4.DefaultRegion, sigv4.DefaultService)
		conn, _, err := websocket.Dial(ctx, "wss://"+addr+"/throttle?"+query.Encode(), &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			return nil
		}
		e.conn = conn
	}
	if err := e.conn.Write(ctx, websocket.MessageText, frame); err != nil {
		e.conn.CloseNow()
		e.conn = nil
		return nil
	}
	kind, reply, err := e.conn.Read(ctx)
	if err != nil || kind != websocket.MessageText {
		e.conn.CloseNow()
		e.conn = nil
		return nil
	}
	return reply
}

// TestSecureClusterReportsAcrossFailover runs a three-central cluster with
// TLS and SigV4. Two edges report over HTTPS to different centrals and one
// over a presigned WebSocket, for eight slots; then the leader is killed and
// quotas must continue from the new leader without a jump.
func TestSecureClusterReportsAcrossFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 15 s of real slots")
	}
	certFile, keyFile := writeSelfSignedCert(t, t.TempDir())
	secure := func(cfg *Config) {
		cfg.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: certFile}
		cfg.AccessKeys = map[string]string{testAccessKey: testSecretKey}
	}
	first := startNodeWith(t, "c1", true, nil, secure)
	nodes := []*testNode{first}
	for i := 2; i <= 3; i++ {
		nodes = append(nodes, startNodeWith(t, fmt.Sprintf("c%d", i), false, []string{first.c.HTTPAddr()}, secure))
	}
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))
	transport := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: socketTimeout}
	waitForQuotaEngine(t, client, "https://"+leader.c.HTTPAddr())

	const rate = 3000.0
	var follower *testNode
	for _, n := range nodes {
		if n != leader {
			follower = n
			break
		}
	}
	status, body := secureRequest(t, client, http.MethodPut, "https://"+follower.c.HTTPAddr()+"/v1/limits/front/alice",
		fmt.Sprintf(`{"limit":{"traffic_up":%v}}`, rate))
	if status != http.StatusOK {
		t.Fatalf("PUT on follower %s: %d %s", follower.id(), status, body)
	}

	edges := []*secureEdge{
		{id: "edge-1", target: nodes[0]},
		{id: "edge-2", target: nodes[1]},
		{id: "edge-ws", target: nodes[2], websocket: true},
	}
	t.Cleanup(func() {
		for _, e := range edges {
			if e.conn != nil {
				e.conn.CloseNow()
			}
		}
	})
	// round sends every edge's report of one slot and returns the quotas
	// they got for the next slot.
	round := func() (int64, map[string]float64) {
		slot := waitForSlotStart(50 * time.Millisecond)
		held := map[string]float64{}
		for _, e := range edges {
			if q, ok := e.report(t, client, slot); ok {
				held[e.id] = q
			}
		}
		return slot, held
	}
	sum := func(held map[string]float64) float64 {
		total := 0.0
		for _, q := range held {
			total += q
		}
		return total
	}

	allHeld := 0
	for range 8 {
		slot, held := round()
		if total := sum(held); total > rate*(1.05+0.01) {
			t.Errorf("slot %d: quotas add up to %v, more than the saturated bucket may grant (%v)", slot+1, total, rate*1.05)
		}
		if len(held) == len(edges) {
			allHeld++
		}
	}
	if allHeld < 4 {
		t.Fatalf("every edge held a quota in only %d of 8 slots", allHeld)
	}

	// Kill the leader; edges whose central died move to a survivor.
	leader.kill(t)
	var survivor *testNode
	for _, n := range nodes {
		if n.c != nil {
			survivor = n
			break
		}
	}
	for _, e := range edges {
		if e.target == leader {
			e.target = survivor
			if e.conn != nil {
				e.conn.CloseNow()
				e.conn = nil
			}
		}
	}
	killed := time.Now().Unix()
	for range 10 {
		slot, held := round()
		if len(held) == len(edges) {
			if total := sum(held); total > rate*(1.05+0.01) {
				t.Errorf("slot %d after failover: quotas add up to %v, a jump above %v", slot+1, total, rate*1.05)
			}
			// The kill falls somewhere in slot `killed`; the new leader
			// needs an election (under a second with these timeouts) and
			// then assigns two slots ahead, so quotas are back 3 slots
			// later (measured on a 2-core machine, see docs/benchmarks.md).
			// The bound here is looser, so a slow test machine does not
			// fail it: it guards against quotas that do not come back.
			if slot+1-killed > 5 {
				t.Errorf("quotas resumed for slot %d, %d slots after the kill in slot %d", slot+1, slot+1-killed, killed)
			}
			t.Logf("leader killed in slot %d; every edge held a quota again for slot %d", killed, slot+1)
			return
		}
	}
	t.Fatalf("quotas did not resume within 10 slots of the leader kill")
}
