//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

package autostandby

// Hypeman's controller scenarios (upstream controller_test.go), rewritten against our
// controller driven through the library's manual mode: flows and time come from
// Manual, the store is an in-memory fake.

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

type scenario struct {
	t     *testing.T
	c     *Controller
	m     *Manual
	store *fakeStore
	now   time.Time
	stop  func()
}

// newScenario builds a manual-mode controller at start over a store holding insts,
// and runs it until the test ends.
func newScenario(t *testing.T, start time.Time, opts ControllerOptions, insts ...Instance) *scenario {
	t.Helper()
	s := &scenario{t: t, store: newFakeStore(insts...), now: start}
	s.store.lifecycle = true
	c, err := New(s.store, NewManualSource(start), opts)
	if err != nil {
		t.Fatalf("NewController: %v", err)
	}
	t.Cleanup(c.Close)
	s.c, s.m = c, c.Manual()
	if s.m == nil {
		t.Fatal("manual controller has no Manual input")
	}
	return s
}

func (s *scenario) run() *scenario {
	s.stop = startRun(s.t, s.c)
	s.store.mu.Lock()
	var ids []string
	for _, inst := range s.store.instances {
		ids = append(ids, inst.ID)
	}
	s.store.mu.Unlock()
	for _, id := range ids {
		keyOf(s.t, s.c, id)
	}
	return s
}

func (s *scenario) advance(d time.Duration) {
	s.t.Helper()
	if err := s.m.Advance(d); err != nil {
		s.t.Fatalf("Advance: %v", err)
	}
	s.now = s.now.Add(d)
}

func (s *scenario) ingest(events ...FlowEvent) {
	s.t.Helper()
	if err := s.m.Ingest(events...); err != nil {
		s.t.Fatalf("Ingest: %v", err)
	}
}

func (s *scenario) resync(table ...FlowEvent) {
	s.t.Helper()
	if err := s.m.Resync(table...); err != nil {
		s.t.Fatalf("Resync: %v", err)
	}
}

func (s *scenario) describe(id string) StatusSnapshot {
	return s.c.Describe(s.store.instance(id))
}

// waitStatus waits until id reports status.
func (s *scenario) waitStatus(id string, status Status) StatusSnapshot {
	s.t.Helper()
	var snap StatusSnapshot
	eventually(s.t, string(status)+" for "+id, func() bool {
		snap = s.describe(id)
		return snap.Status == status
	})
	return snap
}

// settle gives the decision loop time to act on anything the library decided.
func (s *scenario) settle() { time.Sleep(150 * time.Millisecond) }

// lastRuntime waits for at least n writes for id and returns the last one.
func (s *scenario) lastRuntime(id string, n int) *Runtime {
	s.t.Helper()
	eventually(s.t, "runtime writes for "+id, func() bool { return len(s.store.runtimesFor(id)) >= n })
	writes := s.store.runtimesFor(id)
	return writes[len(writes)-1]
}

func guest(id, ip string, timeout string) Instance {
	inst := running(id, ip)
	inst.AutoStandby.IdleTimeout = timeout
	return inst
}

func flow(kind FlowEventKind, ip string, id uint32, state TCPState) FlowEvent {
	return TCPEvent(kind, client, netip.AddrPortFrom(netip.MustParseAddr(ip), 8080), id, state)
}

func TestEveryLibraryStatusAndReasonMapsToAGoConstant(t *testing.T) {
	n := uint32(0)
	for ; StatusName(n) != ""; n++ {
		if int(n) >= len(KnownStatuses) || statusFromCode(n) != Status(StatusName(n)) {
			t.Errorf("library status %d %q maps to %q", n, StatusName(n), statusFromCode(n))
		}
	}
	if int(n) != len(KnownStatuses) {
		t.Errorf("library has %d statuses, Go %d", n, len(KnownStatuses))
	}
	n = 0
	for ; ReasonName(n) != ""; n++ {
		if int(n) >= len(KnownReasons) || reasonFromCode(n) != Reason(ReasonName(n)) {
			t.Errorf("library reason %d %q maps to %q", n, ReasonName(n), reasonFromCode(n))
		}
	}
	if int(n) != len(KnownReasons) {
		t.Errorf("library has %d reasons, Go %d", n, len(KnownReasons))
	}
}

// 1
func TestStartupResyncClearsPersistedIdleWhenCurrentConnectionsExist(t *testing.T) {
	inst := guest("a", "10.0.0.2", "10m")
	inst.Runtime = &Runtime{IdleSince: at(t1055)}
	s := newScenario(t, t1100, ControllerOptions{}, inst).run()
	s.resync(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	snap := s.waitStatus("a", StatusActive)
	if snap.IdleSince != nil || snap.ActiveInboundCount != 1 {
		t.Fatalf("snapshot %+v", snap)
	}
	if rt := s.lastRuntime("a", 1); rt == nil || rt.IdleSince != nil {
		t.Fatalf("persisted runtime %+v still has idle_since", rt)
	}
}

// 2
func TestStartupResyncResumesPersistedIdleCountdown(t *testing.T) {
	inst := guest("a", "10.0.0.2", "10m")
	inst.Runtime = &Runtime{IdleSince: at(t1055)}
	s := newScenario(t, t1100, ControllerOptions{}, inst).run()
	snap := s.waitStatus("a", StatusIdleCountdown)
	if snap.Reason != ReasonIdleTimeoutNotElapsed || !sameTime(snap.IdleSince, t1055) ||
		!sameTime(snap.NextStandbyAt, t1055.Add(10*time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
	if snap.CountdownRemaining == nil || *snap.CountdownRemaining != 5*time.Minute {
		t.Fatalf("countdown %v", snap.CountdownRemaining)
	}
}

// 3
func TestPeriodicSnapshotSyncRefreshesTrackedState(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "10m")).run()
	s.waitStatus("a", StatusIdleCountdown)
	s.resync(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	if snap := s.waitStatus("a", StatusActive); snap.ActiveInboundCount != 1 {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 4
func TestInstanceEventClearsPersistedRuntimeWhenInstanceBecomesIneligible(t *testing.T) {
	inst := guest("a", "10.0.0.2", "10m")
	inst.Runtime = &Runtime{IdleSince: at(t1055)}
	s := newScenario(t, t1100, ControllerOptions{}, inst).run()
	s.waitStatus("a", StatusIdleCountdown)
	inst.NetworkEnabled = false
	s.store.replace(InstanceEventUpdate, inst)
	eventually(t, "runtime deleted", func() bool {
		writes := s.store.runtimesFor("a")
		return len(writes) > 0 && writes[len(writes)-1] == nil
	})
	if snap := s.describe("a"); snap.Status != StatusIneligible || snap.Reason != ReasonNetworkDisabled {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 5
func TestConnectionEventsClearIdleAndStartCountdown(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "10m")).run()
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	if snap := s.waitStatus("a", StatusActive); snap.IdleSince != nil || len(snap.KeptAwakeBy) != 1 ||
		snap.KeptAwakeBy[0].Client != client || snap.KeptAwakeBy[0].TCPState != "ESTABLISHED" {
		t.Fatalf("snapshot %+v", snap)
	}
	s.advance(30 * time.Second)
	s.ingest(flow(FlowDestroy, "10.0.0.2", 1, TCPStateClose))
	snap := s.waitStatus("a", StatusIdleCountdown)
	if !sameTime(snap.IdleSince, s.now) || !sameTime(snap.NextStandbyAt, s.now.Add(10*time.Minute)) {
		t.Fatalf("snapshot %+v (now %v)", snap, s.now)
	}
}

// 6 and 7
func TestSynSentConnectionKeepsInstanceActive(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "10m"), guest("b", "10.0.0.3", "10m")).run()
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateSynSent))
	s.resync(flow(FlowNew, "10.0.0.2", 1, TCPStateSynSent), flow(FlowNew, "10.0.0.3", 2, TCPStateSynSent))
	for _, id := range []string{"a", "b"} {
		if snap := s.waitStatus(id, StatusActive); snap.ActiveInboundCount != 1 {
			t.Fatalf("%s: %+v", id, snap)
		}
	}
}

// 8
func TestConnectionUpdateWithInactiveTCPStateStartsCountdown(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "10m")).run()
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	s.waitStatus("a", StatusActive)
	// An update without a TCP state leaves the flow live (hypeman read it as NONE).
	s.ingest(FlowEvent{Kind: FlowUpdate, Protocol: ProtoTCP, Client: client,
		Destination: netip.MustParseAddrPort("10.0.0.2:8080"), ID: 1})
	s.settle()
	if snap := s.describe("a"); snap.Status != StatusActive {
		t.Fatalf("update without state ended the flow: %+v", snap)
	}
	s.ingest(flow(FlowUpdate, "10.0.0.2", 1, TCPStateTimeWait))
	s.waitStatus("a", StatusIdleCountdown)
}

// 9
func TestActiveReconcileStartsCountdownForStartupSeededConnections(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "10m")).run()
	s.resync(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	s.waitStatus("a", StatusActive)
	s.advance(time.Minute)
	s.resync()
	snap := s.waitStatus("a", StatusIdleCountdown)
	if snap.NextStandbyAt == nil || snap.ActiveInboundCount != 0 {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 10
func TestDuplicateDestroyDoesNotGoNegative(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "10m")).run()
	s.ingest(flow(FlowDestroy, "10.0.0.2", 9, TCPStateClose), flow(FlowDestroy, "10.0.0.2", 9, TCPStateClose))
	s.settle()
	if snap := s.describe("a"); snap.ActiveInboundCount != 0 || snap.Status != StatusIdleCountdown {
		t.Fatalf("snapshot %+v", snap)
	}
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	if snap := s.waitStatus("a", StatusActive); snap.ActiveInboundCount != 1 {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 11 and 12
func TestStatusReportsObserverErrorAndRunDegrades(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m"))
	if err := s.m.SetObserverError(errors.New("conntrack permission denied")); err != nil {
		t.Fatal(err)
	}
	s.run()
	snap := s.waitStatus("a", StatusError)
	if snap.Reason != ReasonObserverError {
		t.Fatalf("snapshot %+v", snap)
	}
	// Never standby while the observer is down, however long it stays down.
	s.advance(5 * time.Minute)
	s.settle()
	if got := s.store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v while the observer was down", got)
	}
	// 21: healthy again, the instance leaves the error state.
	if err := s.m.SetObserverError(nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "observer healthy", func() bool { return s.describe("a").Status != StatusError })
}

// 13
func TestStandbyTimerCallsStandbyAndClearsState(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	s.waitStatus("a", StatusIdleCountdown)
	s.advance(61 * time.Second)
	eventually(t, "standby", func() bool { return len(s.store.standbys()) == 1 })
	eventually(t, "runtime deleted", func() bool {
		writes := s.store.runtimesFor("a")
		return len(writes) > 0 && writes[len(writes)-1] == nil
	})
	snap := s.waitStatus("a", StatusIneligible)
	if snap.Reason != ReasonInstanceNotRunning || snap.IdleSince != nil || snap.NextStandbyAt != nil {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 14
func TestStandbyFailureRearmsIdleCountdown(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	s.store.failStandby("a", errors.New("snapshot failed"))
	s.advance(61 * time.Second)
	eventually(t, "standby attempt", func() bool { return len(s.store.standbys()) == 1 })
	snap := s.waitStatus("a", StatusIdleCountdown)
	if !snap.Configured || snap.NextStandbyAt == nil || !snap.NextStandbyAt.After(s.now) {
		t.Fatalf("snapshot %+v", snap)
	}
	// The retry comes, and succeeds once the store does.
	s.store.failStandby("a", nil)
	s.advance(time.Minute)
	eventually(t, "retried standby", func() bool { return len(s.store.standbys()) == 2 })
}

// 15 and 20
func TestStandbySkippedWhenTableShowsMissedConnection(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	s.advance(50 * time.Second)
	// The NEW event was lost; the resync that follows the loss finds the flow.
	s.resync(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	s.advance(20 * time.Second)
	s.settle()
	if got := s.store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v despite a live flow", got)
	}
	if snap := s.waitStatus("a", StatusActive); snap.IdleSince != nil || snap.NextStandbyAt != nil {
		t.Fatalf("snapshot %+v", snap)
	}
	if rt := s.lastRuntime("a", 1); rt == nil || rt.IdleSince != nil {
		t.Fatalf("persisted %+v", rt)
	}
}

// 22
func TestStandbyExecutionBoundedByMaxConcurrent(t *testing.T) {
	insts := []Instance{guest("a", "10.0.0.2", "1m"), guest("b", "10.0.0.3", "1m"),
		guest("c", "10.0.0.4", "1m"), guest("d", "10.0.0.5", "1m")}
	s := newScenario(t, t1100, ControllerOptions{MaxConcurrentStandbys: 2}, insts...)
	s.store.standbyGate = make(chan struct{})
	s.run()
	s.advance(61 * time.Second)
	<-s.store.started
	<-s.store.started
	select {
	case id := <-s.store.started:
		t.Fatalf("a third standby (%s) started while two were executing", id)
	case <-time.After(200 * time.Millisecond):
	}
	close(s.store.standbyGate)
	eventually(t, "all four standbys", func() bool { return len(s.store.standbys()) == 4 })
}

// 23 and 27
func TestStandbyCancelledByInboundActivityWhileQueued(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{MaxConcurrentStandbys: 1},
		guest("a", "10.0.0.2", "1m"), guest("b", "10.0.0.3", "1m"), guest("c", "10.0.0.4", "1m"))
	s.store.standbyGate = make(chan struct{})
	s.run()
	s.advance(61 * time.Second)
	first := <-s.store.started
	others := map[string]string{"a": "10.0.0.2", "b": "10.0.0.3", "c": "10.0.0.4"}
	delete(others, first)
	var ips []string
	for _, ip := range others {
		ips = append(ips, ip)
	}
	// One queued instance gets a NEW, the other shows a flow in a resync.
	s.ingest(flow(FlowNew, ips[0], 1, TCPStateEstablished))
	s.resync(flow(FlowNew, ips[0], 1, TCPStateEstablished), flow(FlowNew, ips[1], 2, TCPStateEstablished))
	close(s.store.standbyGate)
	s.settle()
	if got := s.store.standbys(); len(got) != 1 || got[0] != first {
		t.Fatalf("standbys %v, want only %s", got, first)
	}
	for id := range others {
		if snap := s.waitStatus(id, StatusActive); snap.ActiveInboundCount != 1 {
			t.Fatalf("%s: %+v", id, snap)
		}
	}
}

// 24 and 26
func TestStandbyDispatchDeduplicatesPendingRequests(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m"))
	s.store.standbyGate = make(chan struct{})
	s.run()
	s.advance(61 * time.Second)
	<-s.store.started
	// A refresh and more time while the standby executes dispatch nothing more.
	s.store.replace(InstanceEventUpdate, s.store.instance("a"))
	s.advance(2 * time.Minute)
	if _, err := s.c.HoldStandby(context.Background(), s.store.instance("a")); !errors.Is(err, ErrStandbyInProgress) {
		t.Fatalf("hold while executing: %v, want ErrStandbyInProgress", err) // 36
	}
	s.settle()
	close(s.store.standbyGate)
	s.settle()
	if got := s.store.standbys(); len(got) != 1 {
		t.Fatalf("standbys %v, want one", got)
	}
}

// 25
func TestStandbyNotFoundDropsStateWithoutRearming(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	s.store.failStandby("a", ErrInstanceNotFound)
	s.advance(61 * time.Second)
	eventually(t, "forgotten", func() bool { _, ok := s.c.lookupID("a"); return !ok })
	s.advance(10 * time.Minute)
	s.settle()
	if got := s.store.standbys(); len(got) != 1 {
		t.Fatalf("standbys %v, want one", got)
	}
	if stats, err := s.c.eng.Stats(); err != nil || stats.Instances != 0 {
		t.Fatalf("library still tracks instances: %+v %v", stats, err)
	}
}

// 28
func TestStandbyFailureWithMidFlightActivityDoesNotRearmIdle(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m"))
	s.store.standbyGate = make(chan struct{})
	s.store.standbyErr["a"] = errors.New("snapshot failed")
	s.run()
	s.advance(61 * time.Second)
	<-s.store.started
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	close(s.store.standbyGate)
	snap := s.waitStatus("a", StatusActive)
	if snap.ActiveInboundCount != 1 || snap.IdleSince != nil || snap.NextStandbyAt != nil {
		t.Fatalf("snapshot %+v", snap)
	}
	eventually(t, "persisted activity", func() bool {
		writes := s.store.runtimesFor("a")
		return len(writes) > 0 && writes[len(writes)-1] != nil && writes[len(writes)-1].IdleSince == nil
	})
}

// 29
func TestShutdownCancelsQueuedStandbyAndDrainsWorkers(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{MaxConcurrentStandbys: 1},
		guest("a", "10.0.0.2", "1m"), guest("b", "10.0.0.3", "1m"))
	s.store.standbyGate = make(chan struct{})
	s.run()
	s.advance(61 * time.Second)
	first := <-s.store.started
	s.stop()
	if got := s.store.standbys(); len(got) != 1 || got[0] != first {
		t.Fatalf("standbys %v, want only %s", got, first)
	}
}

// 30
func TestErroringRefreshDoesNotCancelQueuedStandby(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{MaxConcurrentStandbys: 1},
		guest("a", "10.0.0.2", "1m"), guest("b", "10.0.0.3", "1m"))
	s.store.standbyGate = make(chan struct{})
	s.run()
	s.advance(61 * time.Second)
	first := <-s.store.started
	other := "a"
	if first == "a" {
		other = "b"
	}
	bad := s.store.instance(other)
	bad.IP = "not-an-ip"
	s.store.events <- InstanceEvent{Action: InstanceEventUpdate, InstanceID: other, Instance: &bad}
	s.settle()
	close(s.store.standbyGate)
	eventually(t, "both standbys", func() bool { return len(s.store.standbys()) == 2 })
}

// 31
func TestRefreshPersistFailureStillArmsIdleTimer(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m"))
	s.store.setErr = errors.New("disk full")
	s.run()
	snap := s.waitStatus("a", StatusIdleCountdown)
	if snap.NextStandbyAt == nil || snap.IdleSince == nil {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 33 and 42
func TestHoldStandbyExtendsArmedCountdown(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.Runtime = &Runtime{IdleSince: at(t1055)}
	start := t1055.Add(50 * time.Second)
	s := newScenario(t, start, ControllerOptions{}, inst).run()
	s.waitStatus("a", StatusIdleCountdown)
	writes := len(s.store.runtimesFor("a"))
	snap, err := s.c.HoldStandby(context.Background(), s.store.instance("a"))
	if err != nil {
		t.Fatal(err)
	}
	want := start.Add(time.Minute)
	if snap.Status != StatusIdleCountdown || !sameTime(snap.HoldUntil, want) || !sameTime(snap.NextStandbyAt, want) {
		t.Fatalf("snapshot %+v", snap)
	}
	s.store.replace(InstanceEventUpdate, s.store.instance("a"))
	s.settle()
	if snap := s.describe("a"); !sameTime(snap.NextStandbyAt, want) {
		t.Fatalf("refresh lost the hold: %+v", snap)
	}
	s.advance(30 * time.Second)
	s.settle()
	if len(s.store.standbys()) != 0 || len(s.store.runtimesFor("a")) != writes {
		t.Fatalf("hold did not hold or was persisted: %v %v", s.store.standbys(), s.store.runtimesFor("a"))
	}
	s.advance(2 * time.Minute)
	eventually(t, "standby after the hold", func() bool { return len(s.store.standbys()) == 1 })
}

// 34
func TestHoldStandbyReplacesLongerHold(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "10m")).run()
	if _, err := s.c.HoldStandby(context.Background(), s.store.instance("a")); err != nil {
		t.Fatal(err)
	}
	inst := s.store.instance("a")
	inst.AutoStandby = &Policy{Enabled: true, IdleTimeout: "1m"}
	s.store.replace(InstanceEventUpdate, inst)
	eventually(t, "new policy", func() bool { return s.describe("a").IdleTimeout == "1m0s" })
	s.settle()
	snap, err := s.c.HoldStandby(context.Background(), s.store.instance("a"))
	if err != nil {
		t.Fatal(err)
	}
	if !sameTime(snap.HoldUntil, t1100.Add(time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 35
func TestHoldStandbyCancelsQueuedStandby(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{MaxConcurrentStandbys: 1},
		guest("a", "10.0.0.2", "1m"), guest("b", "10.0.0.3", "1m"))
	s.store.standbyGate = make(chan struct{})
	s.run()
	s.advance(61 * time.Second)
	first := <-s.store.started
	other := "a"
	if first == "a" {
		other = "b"
	}
	snap, err := s.c.HoldStandby(context.Background(), s.store.instance(other))
	if err != nil {
		t.Fatal(err)
	}
	if !sameTime(snap.NextStandbyAt, s.now.Add(time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
	close(s.store.standbyGate)
	s.settle()
	if got := s.store.standbys(); len(got) != 1 || got[0] != first {
		t.Fatalf("standbys %v, want only %s", got, first)
	}
}

// 38
func TestHoldStandbySurvivesConnectionChurn(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	s.waitStatus("a", StatusActive)
	snap, err := s.c.HoldStandby(context.Background(), s.store.instance("a"))
	if err != nil || !sameTime(snap.HoldUntil, t1100.Add(time.Minute)) {
		t.Fatalf("hold: %+v %v", snap, err)
	}
	s.advance(50 * time.Second)
	s.ingest(flow(FlowDestroy, "10.0.0.2", 1, TCPStateClose))
	snap = s.waitStatus("a", StatusIdleCountdown)
	if !sameTime(snap.NextStandbyAt, t1100.Add(50*time.Second+time.Minute)) {
		t.Fatalf("snapshot %+v", snap)
	}
}

// 39
func TestHoldStandbyOnUntrackedEligibleInstance(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.Runtime = &Runtime{IdleSince: at(t1055)}
	s := newScenario(t, t1100, ControllerOptions{}, inst)
	snap, err := s.c.HoldStandby(context.Background(), inst)
	if err != nil || !sameTime(snap.HoldUntil, t1100.Add(time.Minute)) {
		t.Fatalf("hold: %+v %v", snap, err)
	}
	s.run()
	s.settle()
	snap = s.describe("a")
	if !sameTime(snap.NextStandbyAt, t1100.Add(time.Minute)) || len(s.store.standbys()) != 0 {
		t.Fatalf("snapshot %+v, standbys %v", snap, s.store.standbys())
	}
}

// 40
func TestHoldStandbyNoopWhenPolicyDisabled(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.AutoStandby.Enabled = false
	s := newScenario(t, t1100, ControllerOptions{}, inst).run()
	snap, err := s.c.HoldStandby(context.Background(), inst)
	if err != nil || snap.Status != StatusDisabled || snap.HoldUntil != nil {
		t.Fatalf("hold: %+v %v", snap, err)
	}
}

// 42
func TestDescribeOmitsExpiredHold(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	s.waitStatus("a", StatusActive)
	if snap, err := s.c.HoldStandby(context.Background(), s.store.instance("a")); err != nil || snap.HoldUntil == nil {
		t.Fatalf("hold: %+v %v", snap, err)
	}
	s.advance(2 * time.Minute)
	if snap := s.describe("a"); snap.HoldUntil != nil {
		t.Fatalf("expired hold still reported: %+v", snap)
	}
}

// An instance deleted and re-created under the same ID while the old one's
// StandbyInstance is blocked: the old call's ErrInstanceNotFound must forget only the
// old registration; the new one stays tracked and reaches Standby in its turn.
func TestRecreatedInstanceSurvivesTheOldStandbysNotFound(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m"))
	gate := make(chan struct{})
	s.store.standbyGate = gate
	s.run()
	oldKey := keyOf(t, s.c, "a")
	s.advance(61 * time.Second)
	<-s.store.started

	s.store.events <- InstanceEvent{Action: InstanceEventDelete, InstanceID: "a"}
	fresh := guest("a", "10.0.0.2", "1m")
	s.store.replace(InstanceEventCreate, fresh)
	var newKey uint64
	eventually(t, "re-created instance registered under a new key", func() bool {
		tr, ok := s.c.lookupID("a")
		newKey = tr.keyOr0(ok)
		return ok && newKey != oldKey
	})
	s.store.failStandby("a", ErrInstanceNotFound)
	s.store.mu.Lock()
	s.store.standbyGate = nil
	s.store.mu.Unlock()
	close(gate)
	eventually(t, "old standby reported", func() bool { return len(s.store.standbys()) == 1 })
	s.settle()

	if tr, ok := s.c.lookupID("a"); !ok || tr.key != newKey {
		t.Fatalf("the re-created instance was forgotten (tracked %v)", ok)
	}
	if snap := s.describe("a"); snap.Status != StatusIdleCountdown || snap.NextStandbyAt == nil {
		t.Fatalf("re-created instance not counting down in the library: %+v", snap)
	}
	s.store.failStandby("a", nil)
	s.advance(61 * time.Second)
	eventually(t, "the new instance's standby", func() bool { return len(s.store.standbys()) == 2 })
}

// A stale "start" delivered after the "stop" it preceded must not have the stopped VM
// put into Standby: the controller re-reads the instance before acting.
func TestStaleStartAfterStopDoesNotStandbyAStoppedInstance(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	running := s.store.instance("a")
	stopped := running
	stopped.State = StateStopped
	s.store.replace(InstanceEventStop, stopped)
	// The start that preceded the stop arrives last, carrying its old snapshot.
	s.store.events <- InstanceEvent{Action: InstanceEventStart, InstanceID: "a", Instance: &running}
	eventually(t, "stale start applied", func() bool {
		st, err := s.c.eng.Status(keyOf(t, s.c, "a"))
		return err == nil && statusFromCode(st.Status) == StatusIdleCountdown
	})
	s.advance(61 * time.Second)
	s.settle()
	if calls := s.store.standbys(); len(calls) != 0 {
		t.Fatalf("StandbyInstance called on a stopped instance: %v", calls)
	}
	eventually(t, "library told the instance is stopped", func() bool {
		st, err := s.c.eng.Status(keyOf(t, s.c, "a"))
		return err == nil && reasonFromCode(st.Reason) == ReasonInstanceNotRunning
	})
}

// With versions from the store, a stale "start" (version 5) delivered after the "stop"
// (version 6) is ignored, so the library never counts the stopped VM down; a snapshot
// whose version is unknown (0) is applied as before.
func TestVersionedStaleStartAfterStopIsIgnored(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.Version = 4
	s := newScenario(t, t1100, ControllerOptions{}, inst, guest("b", "10.0.0.3", "1m")).run()
	running := s.store.instance("a")
	running.Version = 5
	stopped := running
	stopped.State, stopped.Version = StateStopped, 6
	s.store.replace(InstanceEventStop, stopped)
	s.store.events <- InstanceEvent{Action: InstanceEventStart, InstanceID: "a", Instance: &running}
	// Events are applied in order: once this later one is, the stale start has been seen.
	b := s.store.instance("b")
	b.State = StateStopped
	s.store.events <- InstanceEvent{Action: InstanceEventStop, InstanceID: "b", Instance: &b}
	reason := func(id string) Reason {
		st, err := s.c.eng.Status(keyOf(t, s.c, id))
		if err != nil {
			return ""
		}
		return reasonFromCode(st.Reason)
	}
	eventually(t, "later event applied", func() bool { return reason("b") == ReasonInstanceNotRunning })
	if got := reason("a"); got != ReasonInstanceNotRunning {
		t.Fatalf("stale start applied: reason %q, want %q", got, ReasonInstanceNotRunning)
	}

	unknown := running
	unknown.Version = 0
	s.store.events <- InstanceEvent{Action: InstanceEventStart, InstanceID: "a", Instance: &unknown}
	eventually(t, "unversioned start applied", func() bool { return reason("a") == ReasonIdleTimeoutNotElapsed })
}

// Beyond hypeman: wake on traffic through RestoreInstance.
func TestWakeOnTrafficRestoresInstance(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.AutoStandby.WakeOnTraffic = true
	inst.State = StateStandby
	s := newScenario(t, t1100, ControllerOptions{}, inst).run()
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateSynSent))
	eventually(t, "restore", func() bool {
		s.store.mu.Lock()
		defer s.store.mu.Unlock()
		return len(s.store.restores) == 1 && s.store.restores[0] == "a"
	})
}

// A failed restore must not strand the instance: it is reported (status, metric), and
// the next connection after the backoff restores it again.
func TestFailedRestoreIsRetriedOnNewTrafficAndReported(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.AutoStandby.WakeOnTraffic = true
	inst.State = StateStandby
	reader := sdkmetric.NewManualReader()
	opts := ControllerOptions{Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("t")}
	s := newScenario(t, t1100, opts, inst).run()
	s.store.mu.Lock()
	s.store.restoreErr = errors.New("snapshot unreadable")
	s.store.mu.Unlock()

	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateSynSent))
	eventually(t, "first restore", func() bool { return s.store.restoreCount() == 1 })
	snap := s.waitStatus("a", StatusError)
	if snap.Reason != ReasonRestoreFailed {
		t.Fatalf("reason = %q, want restore_failed", snap.Reason)
	}
	if got := collect(t, reader)["hypeman_auto_standby_wake_attempts_total{status=error}"]; got != 1 {
		t.Fatalf("wake attempts with status error = %v, want 1", got)
	}

	// Within the backoff: no new attempt. After it: the next connection retries.
	s.ingest(flow(FlowNew, "10.0.0.2", 2, TCPStateSynSent))
	s.settle()
	if n := s.store.restoreCount(); n != 1 {
		t.Fatalf("restores during the backoff = %d, want 1", n)
	}
	s.store.mu.Lock()
	s.store.restoreErr = nil
	s.store.mu.Unlock()
	s.advance(time.Second)
	s.ingest(flow(FlowNew, "10.0.0.2", 3, TCPStateSynSent))
	eventually(t, "retried restore", func() bool { return s.store.restoreCount() == 2 })
	eventually(t, "error cleared", func() bool { return s.describe("a").Reason != ReasonRestoreFailed })
}

// recordingHandler keeps every record's message and attributes.
type recordingHandler struct {
	log   *recordLog
	attrs string
}

type recordLog struct {
	mu      sync.Mutex
	records []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	next := &recordingHandler{log: h.log, attrs: h.attrs}
	for _, a := range attrs {
		next.attrs += " " + a.String()
	}
	return next
}

func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	line := r.Message + h.attrs
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	h.log.mu.Lock()
	h.log.records = append(h.log.records, line)
	h.log.mu.Unlock()
	return nil
}

func (h *recordingHandler) has(substrings ...string) bool {
	h.log.mu.Lock()
	defer h.log.mu.Unlock()
	for _, line := range h.log.records {
		all := true
		for _, s := range substrings {
			all = all && strings.Contains(line, s)
		}
		if all {
			return true
		}
	}
	return false
}

func TestLibraryLogsReachTheControllersLogger(t *testing.T) {
	h := &recordingHandler{log: &recordLog{}}
	s := newScenario(t, t1100, ControllerOptions{Log: slog.New(h)}, guest("a", "10.0.0.2", "1m")).run()
	s.advance(61 * time.Second)
	eventually(t, "standby", func() bool { return len(s.store.standbys()) == 1 })
	s.stop()
	for _, want := range [][]string{
		{"auto-standby controller started", "source=libautostandby"},
		{"auto-standby controller started", "tracking_mode=manual", "max_concurrent_standbys=16"},
		{"auto-standby startup resync seeded state", "instances=1"},
		{"auto-standby idle countdown started", "instance_id=a", "idle_timeout=1m0s"},
		{"auto-standby standby timer fired", "instance_id=a"},
		{"instance entered standby due to inbound inactivity", "instance_id=a", "idle_timeout=1m0s"},
	} {
		if !h.has(want...) {
			t.Errorf("no log line with %q in:\n%s", want, strings.Join(h.log.records, "\n"))
		}
	}
}

// Beyond hypeman: IPv6 and UDP flows count when the policy asks for them, and a DNAT'd
// flow (original destination a host address, reply source the guest) counts too.
func TestIPv6UDPAndDNATFlowsCount(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.ExtraIPs = []string{"fd00::2"}
	inst.AutoStandby.Protocols = []string{"tcp", "udp"}
	s := newScenario(t, t1100, ControllerOptions{}, inst).run()
	v6client := netip.MustParseAddrPort("[2001:db8::7]:5353")
	s.ingest(FlowEvent{Kind: FlowNew, Protocol: ProtoUDP, Client: v6client,
		Destination: netip.MustParseAddrPort("[fd00::2]:53"), ID: 1})
	snap := s.waitStatus("a", StatusActive)
	if snap.ActiveInboundCount != 1 || snap.KeptAwakeBy[0].Protocol != "udp" || snap.KeptAwakeBy[0].Client != v6client {
		t.Fatalf("snapshot %+v", snap)
	}
	hostPort := netip.MustParseAddrPort("192.0.2.1:8443")
	s.ingest(FlowEvent{Kind: FlowNew, Protocol: ProtoTCP, Client: client, Destination: hostPort,
		ReplySource: netip.MustParseAddrPort("10.0.0.2:443"), ReplyDestination: client,
		ID: 2, HasTCPState: true, TCPState: TCPStateEstablished})
	eventually(t, "DNAT flow counted", func() bool { return s.describe("a").ActiveInboundCount == 2 })
	// The guest's own outbound flows never count.
	s.ingest(TCPEvent(FlowNew, netip.MustParseAddrPort("10.0.0.2:40000"),
		netip.MustParseAddrPort("198.51.100.1:443"), 3, TCPStateEstablished))
	s.settle()
	if n := s.describe("a").ActiveInboundCount; n != 2 {
		t.Fatalf("outbound flow counted: %d", n)
	}
}

// Describe, HoldStandby, lifecycle events, flow events and standbys all at once: no
// race, no deadlock, and the library stays consistent.
func TestConcurrentCallersDuringDecisions(t *testing.T) {
	var insts []Instance
	for i := range 8 {
		insts = append(insts, guest("vm"+strconv.Itoa(i), "10.0.1."+strconv.Itoa(i+2), "1m"))
	}
	s := newScenario(t, t1100, ControllerOptions{MaxConcurrentStandbys: 2}, insts...).run()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, inst := range insts {
		wg.Go(func() {
			for ctx.Err() == nil {
				_ = s.c.Describe(s.store.instance(inst.ID))
				if _, err := s.c.HoldStandby(ctx, s.store.instance(inst.ID)); err != nil && !errors.Is(err, ErrStandbyInProgress) {
					t.Errorf("hold %s: %v", inst.ID, err)
					return
				}
			}
		})
	}
	for i := range 20 {
		ip := insts[i%len(insts)].IP
		s.ingest(flow(FlowNew, ip, uint32(i), TCPStateEstablished))
		s.store.replace(InstanceEventUpdate, s.store.instance(insts[(i+1)%len(insts)].ID))
		s.advance(40 * time.Second)
		s.ingest(flow(FlowDestroy, ip, uint32(i), TCPStateClose))
	}
	cancel()
	wg.Wait()
	s.stop()
	if stats, err := s.c.eng.Stats(); err != nil || stats.Instances != uint64(len(insts)) {
		t.Fatalf("library stats %+v, %v", stats, err)
	}
}

// Close while Run goes: library calls fail cleanly, nothing crashes, Run still returns
// on cancel, and Describe reports an error rather than stale state.
func TestCloseWhileRunning(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	s.waitStatus("a", StatusIdleCountdown)
	s.c.Close()
	s.store.replace(InstanceEventUpdate, s.store.instance("a"))
	if err := s.m.Advance(time.Minute); err == nil {
		t.Fatal("advance on a closed controller succeeded")
	}
	if snap := s.describe("a"); snap.Status != StatusError {
		t.Fatalf("describe after close: %+v", snap)
	}
	s.stop()
}

// The explanation lists every flow, however many (the binding grows its buffer).
func TestDescribeExplainsEveryFlow(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "1m")).run()
	var events []FlowEvent
	for i := range 40 {
		c := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(30000+i))
		events = append(events, TCPEvent(FlowNew, c, netip.MustParseAddrPort("10.0.0.2:8080"), uint32(i+1), TCPStateEstablished))
	}
	s.ingest(events...)
	snap := s.waitStatus("a", StatusActive)
	if snap.ActiveInboundCount != 40 || len(snap.KeptAwakeBy) != 40 {
		t.Fatalf("count %d, explained %d", snap.ActiveInboundCount, len(snap.KeptAwakeBy))
	}
	ports := map[uint16]bool{}
	for _, f := range snap.KeptAwakeBy {
		ports[f.Client.Port()] = true
	}
	if len(ports) != 40 {
		t.Fatalf("explanation repeats flows: %d distinct", len(ports))
	}
}

// A standby decision taken by a Run that is being cancelled is handed back to the
// library: the concurrency slot it held is free for the next Run.
func TestStandbyDecisionDroppedByCancelledRunFreesItsSlot(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{MaxConcurrentStandbys: 1},
		guest("a", "10.0.0.2", "1m"), guest("b", "10.0.0.3", "1m")).run()
	s.stop()
	s.advance(61 * time.Second)
	// What the poll loop does when Run's context ends right after a poll returned a
	// standby decision: the decision is dispatched with the ended context, and its
	// worker gives up before beginning it.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	buf := make([]binding.Decision, 64)
	n, err := s.c.eng.PollDecisions(buf, time.Second)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	var took bool
	for _, d := range buf[:n] {
		took = took || d.Kind == binding.DecisionStandby
	}
	if !took {
		t.Fatalf("no standby decision in %+v", buf[:n])
	}
	s.c.dispatchAll(ended, buf[:n])
	s.c.standbyWG.Wait()

	s.run()
	eventually(t, "both instances in standby", func() bool { return len(s.store.standbys()) == 2 })
}
