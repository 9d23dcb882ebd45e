package autostandby

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// fakeEngine stands in for the library in unit tests of the Go-side orchestration
// (the scenario tests run the same paths against the real library in manual mode).
type fakeEngine struct {
	decisions chan binding.Decision

	mu          sync.Mutex
	registered  map[uint64]*binding.Instance
	unregisters []uint64
	reports     map[uint64][]binding.StandbyOutcome
	declines    []uint64
	begin       func(key uint64) (bool, uint32, error)
	holdErr     error
	holds       int
	statuses    map[uint64]binding.Status
	polls       atomic.Int64
}

func newFakeEngine() *fakeEngine {
	return &fakeEngine{
		decisions:  make(chan binding.Decision, 64),
		registered: map[uint64]*binding.Instance{},
		reports:    map[uint64][]binding.StandbyOutcome{},
		statuses:   map[uint64]binding.Status{},
	}
}

func (f *fakeEngine) Register(key uint64, inst *binding.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.registered[key]; ok {
		return &binding.Error{Code: binding.ErrAlreadyExists}
	}
	f.registered[key] = inst
	return nil
}

func (f *fakeEngine) Update(key uint64, inst *binding.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.registered[key]; !ok {
		return &binding.Error{Code: binding.ErrNotFound}
	}
	f.registered[key] = inst
	return nil
}

func (f *fakeEngine) Unregister(key uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.registered, key)
	f.unregisters = append(f.unregisters, key)
	return nil
}

func (f *fakeEngine) PollDecisions(out []binding.Decision, timeout time.Duration) (int, error) {
	f.polls.Add(1)
	select {
	case d := <-f.decisions:
		out[0] = d
	case <-time.After(timeout):
		return 0, nil
	}
	n := 1
	for n < len(out) {
		select {
		case d := <-f.decisions:
			out[n] = d
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (f *fakeEngine) BeginStandby(key uint64) (bool, uint32, error) {
	f.mu.Lock()
	begin := f.begin
	f.mu.Unlock()
	if begin != nil {
		return begin(key)
	}
	return true, 0, nil
}

func (f *fakeEngine) ReportStandby(key uint64, outcome binding.StandbyOutcome) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports[key] = append(f.reports[key], outcome)
	return nil
}

func (f *fakeEngine) DeclineStandby(key uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.declines = append(f.declines, key)
	return nil
}

func (f *fakeEngine) ReportWake(uint64, binding.WakeOutcome) error { return nil }

func (f *fakeEngine) Hold(uint64) (binding.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds++
	return binding.Status{}, f.holdErr
}

func (f *fakeEngine) Status(uint64) (binding.Status, error)      { return binding.Status{}, nil }
func (f *fakeEngine) Explain(uint64) ([]binding.FlowInfo, error) { return nil, nil }
func (f *fakeEngine) Recommend(uint64, binding.RecommendQuery) (binding.Recommendation, error) {
	return binding.Recommendation{}, nil
}
func (f *fakeEngine) Stats() (binding.Stats, error)              { return binding.Stats{}, nil }
func (f *fakeEngine) DrainLogs([]binding.LogRecord) (int, error) { return 0, nil }
func (f *fakeEngine) Close()                                     {}

// waitDispatched waits until every queued decision has been taken and dispatched: the
// poll loop is sequential, so two new polls after the queue emptied mean the batch
// holding the last decision was dispatched.
func (f *fakeEngine) waitDispatched(t *testing.T) {
	t.Helper()
	eventually(t, "decisions taken", func() bool { return len(f.decisions) == 0 })
	n := f.polls.Load()
	eventually(t, "decisions dispatched", func() bool { return f.polls.Load() >= n+2 })
}

func (f *fakeEngine) reportsFor(key uint64) []binding.StandbyOutcome {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]binding.StandbyOutcome(nil), f.reports[key]...)
}

// fakeStore is an in-memory InstanceStore that records calls and can block or fail.
type fakeStore struct {
	mu           sync.Mutex
	instances    []Instance
	listErr      error
	calls        []string
	standbyCalls []string
	standbyErr   map[string]error
	// standbyGate, when set, blocks StandbyInstance until it is closed or ctx ends.
	standbyGate chan struct{}
	started     chan string
	runtimes    map[string][]*Runtime
	setGate     chan struct{}
	// setEntered receives the id of every SetRuntime call as it starts, when set.
	setEntered chan string
	setErr     error
	// setFailN makes the next setFailN SetRuntime calls fail (after recording them).
	setFailN int
	// lifecycle makes a successful standby move the instance to Standby and emit the
	// standby event, as hypeman's manager does.
	lifecycle bool
	restores  []string
	// restoreErr, when set, is what RestoreInstance returns (after recording the call).
	restoreErr error
	// restoreBlock, when set, holds RestoreInstance (after recording the call) until it
	// is closed.
	restoreBlock chan struct{}
	events       chan InstanceEvent
}

func newFakeStore(instances ...Instance) *fakeStore {
	return &fakeStore{
		instances:  append([]Instance(nil), instances...),
		standbyErr: map[string]error{},
		started:    make(chan string, 64),
		runtimes:   map[string][]*Runtime{},
		events:     make(chan InstanceEvent, 64),
	}
}

func (s *fakeStore) ListInstances(context.Context) ([]Instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, "list")
	if s.listErr != nil {
		return nil, s.listErr
	}
	return append([]Instance(nil), s.instances...), nil
}

func (s *fakeStore) StandbyInstance(ctx context.Context, id string) error {
	s.mu.Lock()
	gate := s.standbyGate
	s.mu.Unlock()
	s.mu.Lock()
	s.standbyCalls = append(s.standbyCalls, id)
	s.mu.Unlock()
	s.started <- id
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.standbyErr[id]; err != nil {
		return err
	}
	if s.lifecycle {
		for i := range s.instances {
			if s.instances[i].ID == id {
				s.instances[i].State = StateStandby
				s.instances[i].Runtime = nil
				inst := s.instances[i]
				s.events <- InstanceEvent{Action: InstanceEventStandby, InstanceID: id, Instance: &inst}
			}
		}
	}
	return nil
}

func (s *fakeStore) SetRuntime(ctx context.Context, id string, rt *Runtime) error {
	s.mu.Lock()
	gate, entered := s.setGate, s.setEntered
	s.mu.Unlock()
	if entered != nil {
		entered <- id
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runtimes[id] = append(s.runtimes[id], rt.Clone())
	if s.setErr != nil {
		return s.setErr
	}
	if s.setFailN > 0 {
		s.setFailN--
		return errors.New("store briefly unavailable")
	}
	for i := range s.instances {
		if s.instances[i].ID == id {
			s.instances[i].Runtime = rt.Clone()
		}
	}
	return nil
}

func (s *fakeStore) SubscribeInstanceEvents() (<-chan InstanceEvent, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, "subscribe")
	return s.events, func() {}, nil
}

func (s *fakeStore) RestoreInstance(_ context.Context, id string) error {
	s.mu.Lock()
	s.restores = append(s.restores, id)
	block, err := s.restoreBlock, s.restoreErr
	s.mu.Unlock()
	if block != nil {
		<-block
	}
	return err
}

// errFakeRestore is a restore failure for tests.
var errFakeRestore = errors.New("restore failed")

func (s *fakeStore) restoreCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.restores)
}

// failStandby makes StandbyInstance(id) fail with err (nil: succeed).
func (s *fakeStore) failStandby(id string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.standbyErr, id)
	} else {
		s.standbyErr[id] = err
	}
}

// instance returns the stored instance id.
func (s *fakeStore) instance(id string) Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, inst := range s.instances {
		if inst.ID == id {
			return inst
		}
	}
	panic("no instance " + id)
}

// replace stores inst and emits a lifecycle event for it.
func (s *fakeStore) replace(action InstanceEventAction, inst Instance) {
	s.mu.Lock()
	for i := range s.instances {
		if s.instances[i].ID == inst.ID {
			s.instances[i] = inst
		}
	}
	s.mu.Unlock()
	s.events <- InstanceEvent{Action: action, InstanceID: inst.ID, Instance: &inst}
}

func (s *fakeStore) standbys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.standbyCalls...)
}

func (s *fakeStore) runtimesFor(id string) []*Runtime {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Runtime(nil), s.runtimes[id]...)
}

func running(id, ip string) Instance {
	return Instance{ID: id, Name: id, State: StateRunning, NetworkEnabled: true, IP: ip,
		AutoStandby: &Policy{Enabled: true, IdleTimeout: "1m"}}
}

// startRun runs c until the test ends (or the returned stop is called) and waits for
// Run to return.
func startRun(t *testing.T, c *Controller) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func keyOf(t *testing.T, c *Controller, id string) uint64 {
	t.Helper()
	var key uint64
	eventually(t, "instance "+id+" registered", func() bool {
		tr, ok := c.lookupID(id)
		if ok {
			key = tr.key
		}
		return ok
	})
	return key
}

func TestRunSubscribesBeforeListing(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	c := newController(store, newFakeEngine(), TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	keyOf(t, c, "a")
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.calls) < 2 || store.calls[0] != "subscribe" || store.calls[1] != "list" {
		t.Fatalf("calls %v; want subscribe before list", store.calls)
	}
}

func TestStartupListFailureIsRetriedNotFatal(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.listErr = errors.New("metadata unreadable")
	c := newController(store, newFakeEngine(), TrackingModeConntrack,
		ControllerOptions{RetryDelay: 20 * time.Millisecond})
	startRun(t, c)
	time.Sleep(50 * time.Millisecond)
	store.mu.Lock()
	store.listErr = nil
	store.mu.Unlock()
	keyOf(t, c, "a")
}

func TestStandbyWorkersBoundedByMaxConcurrent(t *testing.T) {
	var insts []Instance
	for _, id := range []string{"a", "b", "c", "d"} {
		insts = append(insts, running(id, "10.0.0."+string(rune('2'+len(insts)))))
	}
	store := newFakeStore(insts...)
	store.standbyGate = make(chan struct{})
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{MaxConcurrentStandbys: 2})
	startRun(t, c)
	for _, inst := range insts {
		eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: keyOf(t, c, inst.ID)}
	}
	<-store.started
	<-store.started
	select {
	case id := <-store.started:
		t.Fatalf("third standby %s started while two were executing", id)
	case <-time.After(100 * time.Millisecond):
	}
	if q := c.queued.Load(); q != 2 {
		t.Fatalf("queued gauge %d, want 2", q)
	}
	close(store.standbyGate)
	eventually(t, "all four standbys", func() bool { return len(store.standbys()) == 4 })
	for _, inst := range insts {
		key := keyOf(t, c, inst.ID)
		eventually(t, "report for "+inst.ID, func() bool { return len(eng.reportsFor(key)) == 1 })
		if got := eng.reportsFor(key); got[0] != binding.OutcomeSuccess {
			t.Fatalf("%s reported %v", inst.ID, got)
		}
	}
}

func TestStandbyCancelledAtBeginIsNotExecuted(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	eng := newFakeEngine()
	began := make(chan uint64, 4)
	eng.begin = func(key uint64) (bool, uint32, error) { began <- key; return false, 7, nil }
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	key := keyOf(t, c, "a")
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: key}
	<-began
	time.Sleep(50 * time.Millisecond)
	if len(store.standbys()) != 0 || len(eng.reportsFor(key)) != 0 {
		t.Fatalf("cancelled standby executed: %v %v", store.standbys(), eng.reportsFor(key))
	}
}

func TestStandbyDispatchDeduplicatesOutstandingDecisions(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.standbyGate = make(chan struct{})
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	key := keyOf(t, c, "a")
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: key}
	<-store.started
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: key}
	eng.waitDispatched(t)
	close(store.standbyGate)
	eventually(t, "report", func() bool { return len(eng.reportsFor(key)) == 1 })
	time.Sleep(50 * time.Millisecond)
	if n := len(store.standbys()); n != 1 {
		t.Fatalf("%d standby calls, want 1", n)
	}
}

func TestStandbyNotFoundForgetsInstance(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.standbyErr["a"] = errors.Join(errors.New("load metadata"), ErrInstanceNotFound)
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	key := keyOf(t, c, "a")
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: key}
	eventually(t, "not-found report", func() bool { return len(eng.reportsFor(key)) == 1 })
	if got := eng.reportsFor(key)[0]; got != binding.OutcomeNotFound {
		t.Fatalf("reported %v", got)
	}
	eventually(t, "forgotten", func() bool { _, ok := c.lookupID("a"); return !ok })
}

func TestStandbyFailureIsReported(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.standbyErr["a"] = errors.New("snapshot failed")
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	key := keyOf(t, c, "a")
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: key}
	eventually(t, "failure report", func() bool { return len(eng.reportsFor(key)) == 1 })
	if got := eng.reportsFor(key)[0]; got != binding.OutcomeFailed {
		t.Fatalf("reported %v", got)
	}
	if _, ok := c.lookupID("a"); !ok {
		t.Fatal("a failed standby must keep the instance tracked")
	}
}

func TestShutdownAbandonsQueuedStandbyAndDrainsWorkers(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"), running("b", "10.0.0.3"))
	store.standbyGate = make(chan struct{})
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{MaxConcurrentStandbys: 1})
	stop := startRun(t, c)
	ka, kb := keyOf(t, c, "a"), keyOf(t, c, "b")
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: ka}
	first := <-store.started
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: kb}
	eventually(t, "second queued", func() bool { return c.queued.Load() == 1 })
	stop() // the executing standby sees a cancelled context; Run waits for it.
	if got := store.standbys(); len(got) != 1 || got[0] != first {
		t.Fatalf("standbys after shutdown %v, want only %s", got, first)
	}
	select {
	case id := <-store.started:
		t.Fatalf("queued standby %s started after shutdown", id)
	default:
	}
}

func TestDryRunCallsNoStore(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{DryRun: true})
	startRun(t, c)
	key := keyOf(t, c, "a")
	now := time.Now()
	eng.decisions <- binding.Decision{Kind: binding.DecisionPersistRuntime, Key: key, RuntimePresent: true,
		Runtime: binding.Runtime{IdleSince: now}}
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: key}
	eng.decisions <- binding.Decision{Kind: binding.DecisionWake, Key: key}
	eventually(t, "dry-run report", func() bool { return len(eng.reportsFor(key)) == 1 })
	eng.waitDispatched(t)
	// Reported as failed so the library keeps the instance and retries later.
	if got := eng.reportsFor(key)[0]; got != binding.OutcomeFailed {
		t.Fatalf("dry run reported %v", got)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.standbyCalls) != 0 || len(store.runtimes) != 0 || len(store.restores) != 0 {
		t.Fatalf("dry run touched the store: %v %v %v", store.standbyCalls, store.runtimes, store.restores)
	}
}

func TestPersistenceIsLatestWinsPerInstance(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.setGate = make(chan struct{})
	store.setEntered = make(chan string, 8)
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	key := keyOf(t, c, "a")
	base := time.Date(2026, 4, 5, 10, 0, 0, 0, time.UTC)
	persist := func(i int) {
		eng.decisions <- binding.Decision{Kind: binding.DecisionPersistRuntime, Key: key, RuntimePresent: true,
			Runtime: binding.Runtime{IdleSince: base.Add(time.Duration(i) * time.Minute)}}
	}
	// The first write blocks in the store; the next three pile up behind it.
	persist(0)
	<-store.setEntered
	persist(1)
	persist(2)
	eng.decisions <- binding.Decision{Kind: binding.DecisionPersistRuntime, Key: key, RuntimePresent: false}
	eventually(t, "the delete pending behind the blocked write", func() bool {
		c.persist.mu.Lock()
		defer c.persist.mu.Unlock()
		rt, ok := c.persist.pending["a"]
		return ok && rt == nil
	})
	// Holds and descriptions never wait for a blocked write.
	held := make(chan struct{})
	go func() { _, _ = c.HoldStandby(context.Background(), running("a", "10.0.0.2")); close(held) }()
	select {
	case <-held:
	case <-time.After(time.Second):
		t.Fatal("HoldStandby waited for runtime persistence")
	}
	close(store.setGate)
	eventually(t, "writes", func() bool { return len(store.runtimesFor("a")) == 2 })
	got := store.runtimesFor("a")
	if got[0] == nil || !got[0].IdleSince.Equal(base) || got[1] != nil {
		t.Fatalf("writes %+v; want the first value, then the latest (delete)", got)
	}
}

func TestWakeDecisionRestoresInstance(t *testing.T) {
	inst := running("a", "10.0.0.2")
	inst.State = StateStandby
	store := newFakeStore(inst)
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	eng.decisions <- binding.Decision{Kind: binding.DecisionWake, Key: keyOf(t, c, "a"), Protocol: ProtoTCP}
	eventually(t, "restore", func() bool {
		store.mu.Lock()
		defer store.mu.Unlock()
		return len(store.restores) == 1 && store.restores[0] == "a"
	})
}

func TestInstanceEventsUpdateAndForget(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	startRun(t, c)
	key := keyOf(t, c, "a")

	// A refresh that fails (bad IP) changes nothing in the library.
	bad := running("a", "not-an-ip")
	store.events <- InstanceEvent{Action: InstanceEventUpdate, InstanceID: "a", Instance: &bad}
	stopped := running("a", "10.0.0.2")
	stopped.State = StateStopped
	store.events <- InstanceEvent{Action: InstanceEventStop, InstanceID: "a", Instance: &stopped}
	eventually(t, "stop applied", func() bool {
		eng.mu.Lock()
		defer eng.mu.Unlock()
		return eng.registered[key] != nil && eng.registered[key].Lifecycle == binding.LifecycleStopped
	})
	eng.mu.Lock()
	if addrs := eng.registered[key].Addresses; len(addrs) != 0 {
		t.Errorf("stopped instance still claims %v", addrs)
	}
	eng.mu.Unlock()

	fork := running("b", "10.0.0.3")
	store.events <- InstanceEvent{Action: InstanceEventFork, InstanceID: "b", Instance: &fork}
	keyOf(t, c, "b")
	store.events <- InstanceEvent{Action: InstanceEventDelete, InstanceID: "a"}
	eventually(t, "delete applied", func() bool { _, ok := c.lookupID("a"); return !ok })
	eng.mu.Lock()
	defer eng.mu.Unlock()
	if _, ok := eng.registered[key]; ok || len(eng.unregisters) != 1 || eng.unregisters[0] != key {
		t.Fatalf("delete did not unregister: %v", eng.unregisters)
	}
}

func TestHoldStandbyMapsStandbyInProgress(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	eng := newFakeEngine()
	eng.holdErr = &binding.Error{Code: binding.ErrStandbyInProgress, Message: "standby in progress"}
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{})
	// Not yet listed: the hold registers the instance itself.
	_, err := c.HoldStandby(context.Background(), running("a", "10.0.0.2"))
	if !errors.Is(err, ErrStandbyInProgress) {
		t.Fatalf("got %v, want ErrStandbyInProgress", err)
	}
	disabled := running("a", "10.0.0.2")
	disabled.AutoStandby.Enabled = false
	snap, err := c.HoldStandby(context.Background(), disabled)
	if err != nil || snap.Status != StatusDisabled || snap.Reason != ReasonPolicyDisabled || snap.HoldUntil != nil {
		t.Fatalf("disabled hold: %+v %v", snap, err)
	}
	if eng.holds != 1 {
		t.Fatalf("%d library holds, want 1", eng.holds)
	}
}

func TestRunReturnsWhenEventsChannelCloses(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	c := newController(store, newFakeEngine(), TrackingModeConntrack, ControllerOptions{})
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	keyOf(t, c, "a")
	close(store.events)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run kept going after the event channel closed")
	}
}

func (t *tracked) keyOr0(ok bool) uint64 {
	if !ok {
		return 0
	}
	return t.key
}
