// Package membership runs a member of the gossip pool that centrals and Go
// edge nodes share, on hashicorp/memberlist v0.5.4. It owns joining and
// leaving, each member's metadata (role, node ID, and for a central its
// HTTP and Raft addresses), and a view of every member's state from which
// Live decides which edge nodes count as live.
//
// It only reports the state gossip finds. It never changes Raft membership,
// because the leader decides what to do with the view.
package membership

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's state in this member's view.
type State string

// NOTE: memberlist v0.5.4 does not report when it suspects a member (its
// EventDelegate has join, leave and update only, and Node.State of
// Memberlist.Members is never set), so a suspect member shows as alive
// until it is declared dead.
const (
	// StateAlive is a member that responds to probes, or is suspect but
	// not yet declared dead.
	StateAlive State = "alive"
	// StateDead is a member that stopped responding to probes.
	StateDead State = "dead"
	// StateLeft is a member that announced its departure.
	StateLeft State = "left"
)

// Member is one member of the pool in this member's view.
type Member struct {
	// Name is the memberlist node name, which is the node ID.
	Name string
	Role Role
	// Addr is the gossip IP:port.
	Addr string
	// HTTPAddr and RaftAddr are a central's addresses; empty for edges.
	HTTPAddr string
	RaftAddr string
	State    State
	// Since is when this member saw State begin.
	Since time.Time
}

// maxReconnectTargets caps the failed members one reconnect round tries,
// because each unreachable address can hold the round for memberlist's
// TCP timeout (10 s).
const maxReconnectTargets = 8

// Pool is this process's member of the gossip pool.
type Pool struct {
	cfg  Config
	log  *slog.Logger
	list *memberlist.Memberlist
	addr string

	// meta is the metadata memberlist sends in this member's alive
	// messages; Leave swaps in leavingMeta.
	meta        atomic.Pointer[[]byte]
	leavingMeta []byte

	// mu guards members. memberlist calls the delegate with its own node
	// lock held, so no code may call memberlist while holding mu.
	mu      sync.RWMutex
	members map[string]*Member

	cancel context.CancelFunc
	done   chan struct{}
	// stopping is set when Shutdown begins; see logWriter.
	stopping atomic.Bool

	// lifeMu serializes Leave, Shutdown and Close; memberlist panics on a
	// Leave after Shutdown.
	lifeMu   sync.Mutex
	left     bool
	shutdown bool
}

// Start validates cfg, starts memberlist on cfg.BindAddr and joins the
// addresses in cfg.Join in the background, retrying with backoff until one
// responds.
func Start(cfg Config) (*Pool, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	key, err := ParseKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	meta := nodeMeta{Version: metaVersion, Role: cfg.Role, NodeID: cfg.Name, HTTPAddr: cfg.HTTPAddr, RaftAddr: cfg.RaftAddr}
	aliveMeta, err := encodeMeta(meta)
	if err != nil {
		return nil, err
	}
	meta.Leaving = true
	leavingMeta, err := encodeMeta(meta)
	if err != nil {
		return nil, err
	}

	p := &Pool{
		cfg:         cfg,
		log:         cfg.Logger.With(slog.String("component", "membership"), slog.String("node_id", cfg.Name)),
		leavingMeta: leavingMeta,
		members:     make(map[string]*Member),
		done:        make(chan struct{}),
	}
	p.meta.Store(&aliveMeta)

	list, err := memberlist.Create(p.memberlistConfig(key))
	if err != nil {
		return nil, fmt.Errorf("membership: starting memberlist on %s: %w", cfg.BindAddr, err)
	}
	p.list = list
	local := list.LocalNode()
	p.addr = net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))

	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(collector{pool: p}); err != nil {
			_ = list.Shutdown()
			return nil, fmt.Errorf("membership: registering metrics: %w", err)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		defer close(p.done)
		p.maintain(ctx)
	}()
	p.log.Info("gossip started", slog.String("role", string(cfg.Role)), slog.String("gossip_addr", p.addr),
		slog.Any("join", cfg.Join), slog.Bool("encrypted", key != nil))
	return p, nil
}

// memberlistConfig starts from memberlist's LAN defaults and applies cfg.
func (p *Pool) memberlistConfig(key []byte) *memberlist.Config {
	cfg := p.cfg
	bindIP, bindPort, _ := ParseIPPort(cfg.BindAddr)
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = bindIP.String()
	mc.BindPort = bindPort
	mc.AdvertiseAddr, mc.AdvertisePort = "", bindPort
	if cfg.AdvertiseAddr != "" {
		ip, port, _ := ParseIPPort(cfg.AdvertiseAddr)
		mc.AdvertiseAddr, mc.AdvertisePort = ip.String(), port
	}
	mc.SecretKey = key
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.GossipInterval = cfg.GossipInterval
	mc.PushPullInterval = cfg.PushPullInterval
	mc.DeadNodeReclaimTime = cfg.DeadNodeReclaimTime
	d := &delegate{pool: p}
	mc.Delegate = d
	mc.Events = d
	mc.Alive = d
	mc.Logger = log.New(&logWriter{logger: p.log.With(slog.String("module", "memberlist")), stopping: &p.stopping}, "", 0)
	return mc
}

// Addr returns the gossip IP:port other members reach this one at, with
// the port the kernel picked when BindAddr had port 0.
func (p *Pool) Addr() string { return p.addr }

// Members returns every member in this member's view, itself included,
// sorted by name. Dead and left members stay for DeadRetention after they failed
// or left.
func (p *Pool) Members() []Member {
	p.prune(time.Now())
	p.mu.RLock()
	out := make([]Member, 0, len(p.members))
	for _, m := range p.members {
		out = append(out, *m)
	}
	p.mu.RUnlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Live reports whether the edge node nodeID may receive quota according to
// gossip, which makes a Pool a quota.Liveness. It returns false for
// an edge member that is dead or left, or has announced that it is
// leaving, and true for one that is alive, including suspect. A node that
// gossip has never seen, such as a Lua client that only reports, or one
// dead or left for longer than DeadRetention, returns true: the quota
// engine then goes by its reports alone. Members of another role are not
// consulted.
func (p *Pool) Live(nodeID string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	m, ok := p.members[nodeID]
	if !ok || m.Role != RoleEdge {
		return true
	}
	return m.State == StateAlive
}

// prune drops members that have been dead or left for longer than
// DeadRetention. It keeps the local member.
func (p *Pool) prune(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, m := range p.members {
		if name != p.cfg.Name && m.State != StateAlive && now.Sub(m.Since) > p.cfg.DeadRetention {
			delete(p.members, name)
			p.log.Debug("forgot member", slog.String("member", name), slog.String("state", string(m.State)))
		}
	}
}

// maintain joins cfg.Join with backoff, then, every ReconnectInterval,
// prunes the view and tries to rejoin failed members.
func (p *Pool) maintain(ctx context.Context) {
	if len(p.cfg.Join) > 0 {
		p.joinWithRetry(ctx)
	}
	ticker := time.NewTicker(p.cfg.ReconnectInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			p.prune(now)
			p.reconnect(ctx)
		}
	}
}

// joinWithRetry tries cfg.Join until one address responds, starting with a
// delay of 500 ms between rounds and doubling it up to ReconnectInterval.
func (p *Pool) joinWithRetry(ctx context.Context) {
	delay := min(500*time.Millisecond, p.cfg.ReconnectInterval)
	for round := 1; ; round++ {
		contacted, err := p.list.Join(p.cfg.Join)
		if p.stopping.Load() {
			return // a join that ended after Shutdown is not news
		}
		if contacted > 0 {
			p.log.Info("joined the gossip pool", slog.Int("contacted", contacted), slog.Int("round", round),
				slog.Int("members", p.list.NumMembers()))
			if err != nil {
				p.log.Debug("some join addresses did not answer", slog.Any("error", err))
			}
			return
		}
		p.log.Warn("joining the gossip pool failed", slog.Any("join", p.cfg.Join), slog.Int("round", round),
			slog.Duration("retry_in", delay), slog.Any("error", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, p.cfg.ReconnectInterval)
	}
}

// reconnect tries to rejoin up to maxReconnectTargets members that are
// dead, or are centrals that left (a central that leaves is usually
// restarting), and the Join addresses when no other member is alive.
// memberlist alone stops talking to a dead member after
// GossipToTheDeadTime (30 s), so without this a member that comes back
// without a Join list, or two sides of a partition that lasted longer,
// would stay apart.
func (p *Pool) reconnect(ctx context.Context) {
	var departed []string
	othersAlive := false
	p.mu.RLock()
	for name, m := range p.members {
		switch {
		case name == p.cfg.Name:
		case m.State == StateAlive:
			othersAlive = true
		case m.State == StateDead, m.State == StateLeft && m.Role == RoleCentral:
			departed = append(departed, m.Addr)
		}
	}
	p.mu.RUnlock()

	rand.Shuffle(len(departed), func(i, j int) { departed[i], departed[j] = departed[j], departed[i] })
	targets := departed[:min(len(departed), maxReconnectTargets)]
	if !othersAlive {
		for _, addr := range p.cfg.Join {
			if addr != p.addr && !slices.Contains(targets, addr) {
				targets = append(targets, addr)
			}
		}
	}
	if len(targets) == 0 || ctx.Err() != nil {
		return
	}
	contacted, err := p.list.Join(targets)
	p.log.Debug("reconnect round", slog.Any("targets", targets), slog.Int("contacted", contacted), slog.Any("error", err))
}

// Leave announces this member's departure and waits up to timeout for the
// announcement to go out. The member keeps responding to gossip until
// Shutdown. It first gossips metadata marked leaving, so the others count
// it as left, not dead. Each of the two steps gets half of timeout. Calling it
// again, or after Shutdown, does nothing.
func (p *Pool) Leave(timeout time.Duration) error {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	if p.left || p.shutdown {
		return nil
	}
	p.left = true
	start := time.Now()
	p.meta.Store(&p.leavingMeta)
	if err := p.list.UpdateNode(max(timeout/2, time.Millisecond)); err != nil {
		p.log.Warn("gossiping the leaving metadata failed; others may count this member as dead", slog.Any("error", err))
	}
	// memberlist's Leave waits forever for a timeout of 0.
	remaining := max(timeout-time.Since(start), time.Millisecond)
	if err := p.list.Leave(remaining); err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	p.log.Info("left the gossip pool", slog.Duration("duration", time.Since(start)))
	return nil
}

// Shutdown stops gossip without a leave: the others detect this member
// as dead. The view stays readable. Calling it again does nothing.
func (p *Pool) Shutdown() error {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	if p.shutdown {
		return nil
	}
	p.shutdown = true
	p.stopping.Store(true)
	p.cancel()
	if err := p.list.Shutdown(); err != nil {
		return fmt.Errorf("membership: shutdown: %w", err)
	}
	p.log.Info("gossip stopped")
	return nil
}

// Close leaves the pool and shuts gossip down. The leave waits up to half
// the time left before ctx's deadline, at most DefaultLeaveTimeout. A ctx
// that is already done skips the leave, as a crash would. Close then waits
// until ctx is done for a join running in the background to end.
func (p *Pool) Close(ctx context.Context) error {
	var errs []error
	if ctx.Err() == nil {
		timeout := DefaultLeaveTimeout
		if deadline, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(deadline)/2)
		}
		p.cancel()
		if err := p.Leave(timeout); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.Shutdown(); err != nil {
		errs = append(errs, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		select {
		case <-p.done:
		default:
			p.log.Warn("a background join is still running after gossip stopped; it ends within memberlist's TCP timeout (10 s)")
		}
	}
	return errors.Join(errs...)
}
