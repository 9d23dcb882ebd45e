//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

package autostandby

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests drive the library from a caller's ConnectionSource, with the step
// functions hypeman's own controller tests call (startupResync, handleConnectionEvent,
// handleStandbyTimer, ...) and with Run.

// tableSource is a ConnectionSource whose table the test sets. hook, when set, runs
// inside ListConnections (a listing in flight); streams receives every stream opened.
type tableSource struct {
	mu      sync.Mutex
	conns   []Connection
	listErr error
	openErr error
	lists   int
	hook    func()
	streams chan *chanStream
}

func (s *tableSource) ListConnections(context.Context) ([]Connection, error) {
	s.mu.Lock()
	hook := s.hook
	s.lists++
	conns, err := append([]Connection(nil), s.conns...), s.listErr
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	if err != nil {
		return nil, err
	}
	return conns, nil
}

func (s *tableSource) OpenStream(context.Context) (ConnectionStream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.openErr != nil {
		return nil, s.openErr
	}
	st := &chanStream{events: make(chan ConnectionEvent, 16), errs: make(chan error, 1)}
	if s.streams != nil {
		s.streams <- st
	}
	return st, nil
}

func (s *tableSource) set(conns ...Connection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns = conns
}

func (s *tableSource) failLists(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listErr = err
}

func (s *tableSource) listCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lists
}

type chanStream struct {
	events chan ConnectionEvent
	errs   chan error
}

func (s *chanStream) Events() <-chan ConnectionEvent { return s.events }
func (s *chanStream) Errors() <-chan error           { return s.errs }
func (s *chanStream) Close() error                   { return nil }

// inbound is an ESTABLISHED connection from a client to ip:8080.
func inbound(ip string, port uint16) Connection {
	return Connection{OriginalSourceIP: netip.MustParseAddr("203.0.113.7"), OriginalSourcePort: port,
		OriginalDestinationIP: netip.MustParseAddr(ip), OriginalDestinationPort: 8080,
		TCPState: TCPStateEstablished}
}

// idleSince is a running instance with a 1m policy, idle since since.
func idleSince(id, ip string, since time.Time) Instance {
	inst := running(id, ip)
	inst.Runtime = &Runtime{IdleSince: &since}
	return inst
}

// clock is a settable Now for ControllerOptions.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func newSourceController(t *testing.T, store InstanceStore, src ConnectionSource, clk *clock, opts ControllerOptions) *Controller {
	t.Helper()
	opts.Now = clk.now
	c, err := New(store, src, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// seededSourceController is newSourceController after its startup resync.
func seededSourceController(t *testing.T, store InstanceStore, src ConnectionSource, clk *clock, opts ControllerOptions) *Controller {
	t.Helper()
	c := newSourceController(t, store, src, clk, opts)
	if err := c.startupResync(context.Background()); err != nil {
		t.Fatalf("startupResync: %v", err)
	}
	return c
}

func lastWrite(t *testing.T, store *fakeStore, id string) *Runtime {
	t.Helper()
	writes := store.runtimesFor(id)
	if len(writes) == 0 {
		t.Fatalf("no runtime written for %s", id)
	}
	return writes[len(writes)-1]
}

func TestSourceNewControllerAsHypemanWritesIt(t *testing.T) {
	// hypeman's provider: NewController(store, NewConntrackSource(), opts), one value.
	c := NewController(&nopStore{}, NewConntrackSource(), ControllerOptions{})
	if c == nil {
		t.Fatal("NewController returned nil")
	}
	defer c.Close()
	if c.unavailable != nil {
		t.Fatalf("kernel-mode library unavailable: %v", c.unavailable)
	}
	if c.manual != nil || c.feed != nil || c.trackingMode != "conntrack_events_v4_tcp" {
		t.Fatalf("not kernel mode: manual %v feed %v mode %q", c.manual, c.feed, c.trackingMode)
	}
}

func TestSourceStartupResyncClearsPersistedIdleWhenConnectionsExist(t *testing.T) {
	store := newFakeStore(idleSince("a", "10.0.0.2", t1055))
	src := &tableSource{conns: []Connection{inbound("10.0.0.2", 40000)}}
	c := seededSourceController(t, store, src, &clock{t: t1100}, ControllerOptions{})
	if snap := c.Describe(store.instance("a")); snap.Status != StatusActive || snap.IdleSince != nil {
		t.Fatalf("snapshot %+v", snap)
	}
	if rt := lastWrite(t, store, "a"); rt == nil || rt.IdleSince != nil {
		t.Fatalf("persisted %+v", rt)
	}
}

func TestSourceConnectionEventsUseTheirObservedTime(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	c := seededSourceController(t, store, &tableSource{}, &clock{t: t1100}, ControllerOptions{})
	ev := ConnectionEvent{Type: ConnectionEventNew, Connection: inbound("10.0.0.2", 40000), ObservedAt: t1100.Add(5 * time.Second)}
	c.handleConnectionEvent(context.Background(), ev)
	if snap := c.Describe(store.instance("a")); snap.Status != StatusActive || snap.ActiveInboundCount != 1 {
		t.Fatalf("after new: %+v", snap)
	}
	ev.Type, ev.ObservedAt = ConnectionEventDestroy, t1100.Add(10*time.Second)
	c.handleConnectionEvent(context.Background(), ev)
	c.handleConnectionEvent(context.Background(), ev)
	snap := c.Describe(store.instance("a"))
	if snap.Status != StatusIdleCountdown || snap.ActiveInboundCount != 0 || !sameTime(snap.IdleSince, ev.ObservedAt) ||
		!sameTime(snap.NextStandbyAt, ev.ObservedAt.Add(time.Minute)) {
		t.Fatalf("after destroy: %+v", snap)
	}
}

func TestSourceReconcileStartsCountdownWhenConnectionsDrain(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	src := &tableSource{conns: []Connection{inbound("10.0.0.2", 40000)}}
	clk := &clock{t: t1100}
	c := seededSourceController(t, store, src, clk, ControllerOptions{})
	src.set()
	clk.set(t1100.Add(5 * time.Second))
	c.handleActiveReconcile(context.Background(), "a")
	snap := c.Describe(store.instance("a"))
	if snap.Status != StatusIdleCountdown || !sameTime(snap.IdleSince, clk.now()) {
		t.Fatalf("snapshot %+v", snap)
	}
}

func TestSourceStandbyTimerConfirmsThenStandsBy(t *testing.T) {
	store := newFakeStore(idleSince("a", "10.0.0.2", t1055))
	src := &tableSource{}
	c := seededSourceController(t, store, src, &clock{t: t1055.Add(time.Minute)}, ControllerOptions{})
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v before the deadline was delivered", got)
	}
	lists := src.listCount()
	c.handleStandbyTimer(context.Background(), "a")
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("standbys %v, want one for a", got)
	}
	if src.listCount() != lists+1 {
		t.Fatalf("the standby was not confirmed by one listing (%d listings)", src.listCount()-lists)
	}
	if rt := lastWrite(t, store, "a"); rt != nil {
		t.Fatalf("runtime %+v left after a successful standby", rt)
	}
}

func TestSourceConfirmationFindsMissedConnection(t *testing.T) {
	store := newFakeStore(idleSince("a", "10.0.0.2", t1055))
	src := &tableSource{}
	now := t1055.Add(time.Minute)
	c := seededSourceController(t, store, src, &clock{t: now}, ControllerOptions{})
	// Its NEW event never arrived: only the table knows.
	src.set(inbound("10.0.0.2", 40000))
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v with a connection open", got)
	}
	if snap := c.Describe(store.instance("a")); snap.Status != StatusActive || snap.ActiveInboundCount != 1 ||
		snap.IdleSince != nil || snap.NextStandbyAt != nil {
		t.Fatalf("snapshot %+v", snap)
	}
	if rt := lastWrite(t, store, "a"); rt == nil || rt.IdleSince != nil {
		t.Fatalf("persisted %+v", rt)
	}
}

func TestSourceConfirmationFailureRestartsCountdown(t *testing.T) {
	store := newFakeStore(idleSince("a", "10.0.0.2", t1055))
	src := &tableSource{}
	now := t1055.Add(time.Minute)
	c := seededSourceController(t, store, src, &clock{t: now}, ControllerOptions{})
	src.failLists(errors.New("conntrack dump failed"))
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v although the confirmation failed", got)
	}
	snap := c.Describe(store.instance("a"))
	if snap.Status != StatusIdleCountdown || snap.Reason != ReasonConfirmFailed ||
		!sameTime(snap.IdleSince, now) || !sameTime(snap.NextStandbyAt, now.Add(time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
	if rt := lastWrite(t, store, "a"); rt == nil || !sameTime(rt.IdleSince, now) {
		t.Fatalf("persisted %+v", rt)
	}
}

func TestSourceConfirmationFailureKeepsActiveState(t *testing.T) {
	store := newFakeStore(idleSince("a", "10.0.0.2", t1055))
	src := &tableSource{}
	now := t1055.Add(time.Minute)
	c := seededSourceController(t, store, src, &clock{t: now}, ControllerOptions{})
	c.handleConnectionEvent(context.Background(), ConnectionEvent{Type: ConnectionEventNew,
		Connection: inbound("10.0.0.2", 40000), ObservedAt: now})
	src.failLists(errors.New("conntrack dump failed"))
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v", got)
	}
	if snap := c.Describe(store.instance("a")); snap.Status != StatusActive || snap.IdleSince != nil {
		t.Fatalf("snapshot %+v", snap)
	}
	if rt := lastWrite(t, store, "a"); rt == nil || rt.IdleSince != nil {
		t.Fatalf("persisted %+v", rt)
	}
}

func TestSourceHoldDuringConfirmationPreventsStandby(t *testing.T) {
	inst := idleSince("a", "10.0.0.2", t1055)
	store := newFakeStore(inst)
	src := &tableSource{}
	now := t1055.Add(time.Minute)
	c := seededSourceController(t, store, src, &clock{t: now}, ControllerOptions{})
	src.hook = func() {
		if _, err := c.HoldStandby(context.Background(), inst); err != nil {
			t.Errorf("hold: %v", err)
		}
	}
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v although a hold landed during the confirmation", got)
	}
	snap := c.Describe(inst)
	if !sameTime(snap.HoldUntil, now.Add(time.Minute)) || !sameTime(snap.NextStandbyAt, now.Add(time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
}

func TestSourceHoldIgnoresStaleTimerDelivery(t *testing.T) {
	inst := idleSince("a", "10.0.0.2", t1055)
	store := newFakeStore(inst)
	now := t1055.Add(time.Minute)
	c := seededSourceController(t, store, &tableSource{}, &clock{t: now}, ControllerOptions{})
	// The deadline has passed and its delivery waits; a hold moves it out first.
	snap, err := c.HoldStandby(context.Background(), inst)
	if err != nil || !sameTime(snap.NextStandbyAt, now.Add(time.Minute)) {
		t.Fatalf("hold: %+v, %v", snap, err)
	}
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("stale delivery stood %v by", got)
	}
}

func TestSourceStandbyFailureRestartsFullCountdown(t *testing.T) {
	store := newFakeStore(idleSince("a", "10.0.0.2", t1055))
	store.failStandby("a", errors.New("snapshot failed"))
	now := t1055.Add(time.Minute)
	c := seededSourceController(t, store, &tableSource{}, &clock{t: now}, ControllerOptions{})
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 1 {
		t.Fatalf("standbys %v", got)
	}
	snap := c.Describe(store.instance("a"))
	if snap.Status != StatusIdleCountdown || !sameTime(snap.IdleSince, now) || !sameTime(snap.NextStandbyAt, now.Add(time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
	if rt := lastWrite(t, store, "a"); rt == nil || !sameTime(rt.IdleSince, now) {
		t.Fatalf("persisted %+v", rt)
	}
}

func TestSourceQueuedStandbyCancelledByReconcile(t *testing.T) {
	store := newFakeStore(idleSince("a", "10.0.0.2", t1055), idleSince("b", "10.0.0.3", t1055))
	store.standbyGate = make(chan struct{})
	src := &tableSource{}
	c := seededSourceController(t, store, src, &clock{t: t1055.Add(time.Minute)}, ControllerOptions{MaxConcurrentStandbys: 1})
	c.handleStandbyTimer(context.Background(), "a")
	if id := <-store.started; id != "a" {
		t.Fatalf("started %s", id)
	}
	c.handleStandbyTimer(context.Background(), "b")
	src.set(inbound("10.0.0.3", 40000))
	c.handleActiveReconcile(context.Background(), "b")
	if snap := c.Describe(store.instance("b")); snap.Status != StatusActive || snap.ActiveInboundCount != 1 {
		t.Fatalf("queued instance: %+v", snap)
	}
	close(store.standbyGate)
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("standbys %v, want only a", got)
	}
}

func TestSourceObserverErrorBeforeRegistration(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	c := newSourceController(t, store, &tableSource{}, &clock{t: t1100}, ControllerOptions{})
	c.setObserverError(errors.New("boom"))
	if snap := c.Describe(store.instance("a")); snap.Status != StatusError || snap.Reason != ReasonObserverError {
		t.Fatalf("snapshot %+v", snap)
	}
}

func TestSourceRunDegradesWhenListingFails(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	src := &tableSource{listErr: errors.New("conntrack permission denied")}
	c := newSourceController(t, store, src, &clock{t: t1100}, ControllerOptions{})
	stop := startRun(t, c)
	eventually(t, "observer error", func() bool {
		snap := c.Describe(store.instance("a"))
		return snap.Status == StatusError && snap.Reason == ReasonObserverError
	})
	stop()
}

func TestSourceStreamRestoreResyncsFromTable(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	src := &tableSource{streams: make(chan *chanStream, 4)}
	c := newSourceController(t, store, src, &clock{t: t1100}, ControllerOptions{ReconnectDelay: time.Millisecond})
	startRun(t, c)
	stream := <-src.streams
	// Opened while the stream is down: its NEW event is never delivered.
	src.set(inbound("10.0.0.2", 40000))
	stream.errs <- errors.New("recv conntrack events: no buffer space available")
	<-src.streams
	eventually(t, "active after the restore", func() bool { return c.Describe(store.instance("a")).Status == StatusActive })
}

func TestSourceStreamRestoreKeepsObserverHealthyWhenResyncFails(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	src := &tableSource{streams: make(chan *chanStream, 4)}
	c := newSourceController(t, store, src, &clock{t: t1100}, ControllerOptions{ReconnectDelay: time.Millisecond})
	startRun(t, c)
	stream := <-src.streams
	eventually(t, "registered", func() bool { _, ok := c.lookupID("a"); return ok })
	before := src.listCount()
	src.failLists(errors.New("conntrack dump failed"))
	stream.errs <- errors.New("recv conntrack events: no buffer space available")
	<-src.streams
	eventually(t, "healthy after the restore", func() bool {
		return src.listCount() > before && c.Describe(store.instance("a")).Status != StatusError
	})
}

func TestSourceRunStandsByIdleInstance(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.instances[0].AutoStandby.IdleTimeout = "200ms"
	src := &tableSource{streams: make(chan *chanStream, 4)}
	c := newSourceController(t, store, src, &clock{t: time.Now()}, ControllerOptions{})
	c.now = time.Now
	startRun(t, c)
	stream := <-src.streams
	stream.events <- ConnectionEvent{Type: ConnectionEventNew, Connection: inbound("10.0.0.2", 40000)}
	eventually(t, "active", func() bool { return c.Describe(store.instance("a")).Status == StatusActive })
	stream.events <- ConnectionEvent{Type: ConnectionEventDestroy, Connection: inbound("10.0.0.2", 40000)}
	eventually(t, "standby", func() bool { return len(store.standbys()) == 1 })
}

func TestSourceUpstreamReasonsOption(t *testing.T) {
	// Idle for 30s of 1m: the hold moves the deadline, so the reason is the hold's.
	inst := idleSince("a", "10.0.0.2", t1100.Add(-30*time.Second))
	for _, upstream := range []bool{false, true} {
		store := newFakeStore(inst)
		c := seededSourceController(t, store, &tableSource{}, &clock{t: t1100}, ControllerOptions{UpstreamReasons: upstream})
		snap, err := c.HoldStandby(context.Background(), inst)
		want := ReasonStandbyHeld
		if upstream {
			want = ReasonIdleTimeoutNotElapsed
		}
		if err != nil || snap.Reason != want {
			t.Fatalf("UpstreamReasons=%v: %+v, %v; want reason %s", upstream, snap, err, want)
		}
	}
}

func TestActiveInboundCountCountsOnlyQualifyingInboundTCP(t *testing.T) {
	inst := running("a", "192.168.100.10")
	inst.AutoStandby = &Policy{Enabled: true, IdleTimeout: "5m",
		IgnoreSourceCIDRs: []string{"10.0.0.0/8"}, IgnoreDestinationPorts: []uint16{22}}
	conn := func(src string, sport uint16, dst string, dport uint16, st TCPState) Connection {
		return Connection{OriginalSourceIP: netip.MustParseAddr(src), OriginalSourcePort: sport,
			OriginalDestinationIP: netip.MustParseAddr(dst), OriginalDestinationPort: dport, TCPState: st}
	}
	conns := []Connection{
		conn("203.0.113.7", 40000, "192.168.100.10", 8080, TCPStateEstablished), // counts
		conn("192.168.100.10", 40001, "203.0.113.7", 443, TCPStateEstablished),  // guest's own
		conn("10.1.2.3", 40002, "192.168.100.10", 8080, TCPStateEstablished),    // ignored client
		conn("203.0.113.7", 40003, "192.168.100.10", 22, TCPStateEstablished),   // ignored port
		conn("203.0.113.7", 40004, "192.168.100.10", 8080, TCPStateTimeWait),    // finished
		conn("203.0.113.7", 40005, "192.168.100.10", 8080, TCPStateSynSent),     // half-open counts
	}
	n, timeout, err := ActiveInboundCount(inst, conns)
	if err != nil || n != 2 || timeout != 5*time.Minute {
		t.Fatalf("got %d, %v, %v; want 2, 5m, nil", n, timeout, err)
	}
	inst.IP = "not-an-ip"
	if _, _, err := ActiveInboundCount(inst, conns); err == nil || !strings.Contains(err.Error(), "parse instance IP") {
		t.Fatalf("bad IP: %v", err)
	}
	inst.AutoStandby.Enabled = false
	if n, timeout, err := ActiveInboundCount(inst, conns); n != 0 || timeout != 0 || err != nil {
		t.Fatalf("disabled: %d, %v, %v", n, timeout, err)
	}
}

func TestSourceCountdownRestartedDuringConfirmationPreventsStandby(t *testing.T) {
	inst := idleSince("a", "10.0.0.2", t1055)
	store := newFakeStore(inst)
	src := &tableSource{}
	now := t1055.Add(time.Minute)
	c := seededSourceController(t, store, src, &clock{t: now}, ControllerOptions{})
	// While the confirmation listing runs, a short connection comes and goes: the idle
	// period restarts, and the confirmation in flight no longer answers for it.
	src.hook = func() {
		src.hook = nil
		conn := inbound("10.0.0.2", 40000)
		c.handleConnectionEvent(context.Background(), ConnectionEvent{Type: ConnectionEventNew, Connection: conn, ObservedAt: now})
		c.handleConnectionEvent(context.Background(), ConnectionEvent{Type: ConnectionEventDestroy, Connection: conn, ObservedAt: now})
	}
	c.handleStandbyTimer(context.Background(), "a")
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v for a countdown restarted during its confirmation", got)
	}
	if snap := c.Describe(inst); !sameTime(snap.NextStandbyAt, now.Add(time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
}

func TestSourceResyncDuringExecutingStandbyDoesNotDoubleDispatch(t *testing.T) {
	inst := idleSince("a", "10.0.0.2", t1055)
	store := newFakeStore(inst)
	store.standbyGate = make(chan struct{})
	c := seededSourceController(t, store, &tableSource{}, &clock{t: t1055.Add(time.Minute)}, ControllerOptions{})
	c.handleStandbyTimer(context.Background(), "a")
	<-store.started
	if err := c.handleInstanceEvent(context.Background(), InstanceEvent{Action: InstanceEventUpdate, InstanceID: "a", Instance: &inst}); err != nil {
		t.Fatal(err)
	}
	c.handleStandbyTimer(context.Background(), "a")
	select {
	case id := <-store.started:
		t.Fatalf("second standby of %s while one executes", id)
	case <-time.After(100 * time.Millisecond):
	}
	close(store.standbyGate)
	c.standbyWG.Wait()
	if got := store.standbys(); len(got) != 1 {
		t.Fatalf("standbys %v", got)
	}
}

func TestSourceHoldDoesNotWaitForRuntimePersistence(t *testing.T) {
	inst := running("a", "10.0.0.2")
	store := newFakeStore(inst)
	store.setGate, store.setEntered = make(chan struct{}), make(chan string, 4)
	src := &tableSource{conns: []Connection{inbound("10.0.0.2", 40000)}}
	c := newSourceController(t, store, src, &clock{t: t1100}, ControllerOptions{})
	resynced := make(chan error, 1)
	go func() { resynced <- c.startupResync(context.Background()) }()
	<-store.setEntered
	held := make(chan error, 1)
	go func() {
		_, err := c.HoldStandby(context.Background(), inst)
		held <- err
	}()
	select {
	case err := <-held:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("HoldStandby waited for a runtime write")
	}
	close(store.setGate)
	if err := <-resynced; err != nil {
		t.Fatal(err)
	}
}
