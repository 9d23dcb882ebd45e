package qemustore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	autostandby "github.com/libautostandby/libautostandby/go"
	"github.com/libautostandby/libautostandby/tests/e2e/qemu"
)

// fakeMachine stands in for a QEMU guest.
type fakeMachine struct {
	mu         sync.Mutex
	state      qemu.State
	standbyErr error
	restores   int
}

func (m *fakeMachine) State() qemu.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

func (m *fakeMachine) Standby(context.Context) (qemu.StandbyResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.standbyErr != nil {
		return qemu.StandbyResult{}, m.standbyErr
	}
	m.state = qemu.StateStandby
	return qemu.StandbyResult{Duration: time.Millisecond, SnapshotSize: 42}, nil
}

func (m *fakeMachine) Restore(context.Context) (qemu.RestoreResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.restores++
	m.state = qemu.StateRunning
	return qemu.RestoreResult{Duration: time.Millisecond}, nil
}

func newStore(t *testing.T) (*Store, *fakeMachine, chan Record, <-chan autostandby.InstanceEvent) {
	t.Helper()
	records := make(chan Record, 16)
	s := New(records)
	events, unsubscribe, err := s.SubscribeInstanceEvents()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsubscribe)
	m := &fakeMachine{state: qemu.StateRunning}
	s.Add(autostandby.Instance{ID: "a", IP: "10.0.0.2", NetworkEnabled: true}, m)
	if ev := <-events; ev.Action != autostandby.InstanceEventCreate || ev.Instance.State != autostandby.StateRunning {
		t.Fatalf("first event = %+v", ev)
	}
	return s, m, records, events
}

func TestStandbyAndRestorePublishStateChanges(t *testing.T) {
	s, m, records, events := newStore(t)
	ctx := context.Background()
	if err := s.StandbyInstance(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if ev := <-events; ev.Action != autostandby.InstanceEventStandby || ev.Instance.State != autostandby.StateStandby {
		t.Fatalf("after standby: %+v", ev)
	}
	if r := <-records; r.Kind != OpStandbyStarted {
		t.Fatalf("record = %+v", r)
	}
	if r := <-records; r.Kind != OpStandby || r.SnapshotSize != 42 {
		t.Fatalf("record = %+v", r)
	}
	list, _ := s.ListInstances(ctx)
	if len(list) != 1 || list[0].State != autostandby.StateStandby {
		t.Fatalf("list = %+v", list)
	}
	if err := s.RestoreInstance(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if ev := <-events; ev.Action != autostandby.InstanceEventRestore || ev.Instance.State != autostandby.StateRunning {
		t.Fatalf("after restore: %+v", ev)
	}
	// A second wake for a guest already running restores nothing.
	if err := s.RestoreInstance(ctx, "a"); err != nil || m.restores != 1 {
		t.Fatalf("second restore: err %v, restores %d", err, m.restores)
	}
}

func TestUnknownInstanceIsNotFound(t *testing.T) {
	s, _, _, _ := newStore(t)
	ctx := context.Background()
	for name, err := range map[string]error{
		"standby":     s.StandbyInstance(ctx, "nope"),
		"restore":     s.RestoreInstance(ctx, "nope"),
		"set runtime": s.SetRuntime(ctx, "nope", nil),
	} {
		if !errors.Is(err, autostandby.ErrInstanceNotFound) {
			t.Errorf("%s: err = %v, want ErrInstanceNotFound", name, err)
		}
	}
}

func TestFailedStandbyKeepsTheInstanceRunning(t *testing.T) {
	s, m, _, events := newStore(t)
	m.standbyErr = errors.New("migration failed")
	if err := s.StandbyInstance(context.Background(), "a"); err == nil {
		t.Fatal("standby succeeded")
	}
	select {
	case ev := <-events:
		t.Fatalf("event after a failed standby: %+v", ev)
	default:
	}
	if inst, _ := s.Instance("a"); inst.State != autostandby.StateRunning {
		t.Fatalf("state = %s", inst.State)
	}
}

func TestRuntimeIsCopied(t *testing.T) {
	s, _, _, _ := newStore(t)
	at := time.Unix(100, 0)
	rt := &autostandby.Runtime{IdleSince: &at}
	if err := s.SetRuntime(context.Background(), "a", rt); err != nil {
		t.Fatal(err)
	}
	*rt.IdleSince = time.Unix(200, 0) // the caller's copy must not leak in
	inst, _ := s.Instance("a")
	if inst.Runtime == nil || !inst.Runtime.IdleSince.Equal(time.Unix(100, 0)) {
		t.Fatalf("runtime = %+v", inst.Runtime)
	}
	if err := s.SetRuntime(context.Background(), "a", nil); err != nil {
		t.Fatal(err)
	}
	if inst, _ := s.Instance("a"); inst.Runtime != nil {
		t.Fatalf("runtime after delete = %+v", inst.Runtime)
	}
}

func TestUnsubscribedListenerDoesNotBlockStandby(t *testing.T) {
	s := New(nil)
	_, unsubscribe, _ := s.SubscribeInstanceEvents()
	m := &fakeMachine{state: qemu.StateRunning}
	done := make(chan error, 1)
	go func() {
		// Fills the subscriber's buffer, then must not block once it unsubscribes.
		for i := 0; i < 20; i++ {
			s.Add(autostandby.Instance{ID: "a"}, m)
		}
		done <- s.StandbyInstance(context.Background(), "a")
	}()
	time.Sleep(50 * time.Millisecond)
	unsubscribe()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publishing blocked after the subscriber left")
	}
}
