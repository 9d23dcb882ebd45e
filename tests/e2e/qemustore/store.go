// Package qemustore is an autostandby.InstanceStore over real QEMU guests: standby
// snapshots a guest to a file and stops QEMU, restore starts QEMU from that file. It is
// what the end-to-end tests and the demo plug into the Go controller.
package qemustore

import (
	"context"
	"fmt"
	"sync"
	"time"

	autostandby "github.com/libautostandby/libautostandby/go"
	"github.com/libautostandby/libautostandby/tests/e2e/qemu"
)

// OpKind names what the store did.
type OpKind string

// The operations a Record describes.
const (
	OpStandbyStarted OpKind = "standby_started"
	OpStandby        OpKind = "standby"
	OpRestoreStarted OpKind = "restore_started" // the controller asked for a Wake
	OpRestore        OpKind = "restore"
)

// Record is one standby or restore the store carried out, for tests and the demo.
type Record struct {
	Kind         OpKind
	InstanceID   string
	At           time.Time     // when the operation started (the *_started kinds) or ended
	Duration     time.Duration // standby or restore time
	SnapshotSize int64         // bytes, for standbys
	Err          error
}

// Machine is what the store needs from a guest; *qemu.VM implements it.
type Machine interface {
	State() qemu.State
	Standby(ctx context.Context) (qemu.StandbyResult, error)
	Restore(ctx context.Context) (qemu.RestoreResult, error)
}

var _ Machine = (*qemu.VM)(nil)

// Store holds instances, each backed by a Machine (a QEMU guest). Safe for concurrent use.
type Store struct {
	mu        sync.Mutex
	instances map[string]*entry
	subs      map[int]*subscriber
	nextSub   int
	records   chan Record
}

type entry struct {
	inst autostandby.Instance
	vm   Machine
	op   sync.Mutex // one standby or restore at a time per VM
}

type subscriber struct {
	ch   chan autostandby.InstanceEvent
	done chan struct{}
}

// New returns an empty store. Records of what it does are sent to records when it is
// not nil (dropped when it is full, so a slow reader cannot stall a standby).
func New(records chan Record) *Store {
	return &Store{instances: map[string]*entry{}, subs: map[int]*subscriber{}, records: records}
}

var (
	_ autostandby.InstanceStore    = (*Store)(nil)
	_ autostandby.InstanceRestorer = (*Store)(nil)
)

// Add registers inst, backed by vm. Its State follows the VM's from then on.
func (s *Store) Add(inst autostandby.Instance, vm Machine) {
	s.mu.Lock()
	inst.State = stateOf(vm.State())
	s.instances[inst.ID] = &entry{inst: inst, vm: vm}
	s.mu.Unlock()
	s.publish(autostandby.InstanceEventCreate, inst)
}

// Instance returns the current view of instance id.
func (s *Store) Instance(id string) (autostandby.Instance, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.instances[id]
	if !ok {
		return autostandby.Instance{}, false
	}
	e.inst.State = stateOf(e.vm.State())
	return cloneInstance(e.inst), true
}

func stateOf(st qemu.State) string {
	switch st {
	case qemu.StateRunning:
		return autostandby.StateRunning
	case qemu.StateStandby:
		return autostandby.StateStandby
	default:
		return autostandby.StateStopped
	}
}

func cloneInstance(inst autostandby.Instance) autostandby.Instance {
	inst.Runtime = inst.Runtime.Clone()
	inst.ExtraIPs = append([]string(nil), inst.ExtraIPs...)
	if inst.AutoStandby != nil {
		p := *inst.AutoStandby
		inst.AutoStandby = &p
	}
	return inst
}

// ListInstances returns every instance with its persisted runtime.
func (s *Store) ListInstances(ctx context.Context) ([]autostandby.Instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]autostandby.Instance, 0, len(s.instances))
	for _, e := range s.instances {
		e.inst.State = stateOf(e.vm.State())
		out = append(out, cloneInstance(e.inst))
	}
	return out, nil
}

func (s *Store) lookup(id string) (*entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.instances[id]
	if !ok {
		return nil, fmt.Errorf("qemustore: %s: %w", id, autostandby.ErrInstanceNotFound)
	}
	return e, nil
}

// StandbyInstance snapshots the guest to its snapshot file and stops QEMU.
func (s *Store) StandbyInstance(ctx context.Context, id string) error {
	e, err := s.lookup(id)
	if err != nil {
		return err
	}
	e.op.Lock()
	defer e.op.Unlock()
	s.record(Record{Kind: OpStandbyStarted, InstanceID: id, At: time.Now()})
	res, err := e.vm.Standby(ctx)
	s.record(Record{Kind: OpStandby, InstanceID: id, At: time.Now(), Duration: res.Duration, SnapshotSize: res.SnapshotSize, Err: err})
	if err != nil {
		return err
	}
	s.publish(autostandby.InstanceEventStandby, s.setState(e, autostandby.StateStandby))
	return nil
}

// RestoreInstance starts the guest again from its snapshot.
func (s *Store) RestoreInstance(ctx context.Context, id string) error {
	e, err := s.lookup(id)
	if err != nil {
		return err
	}
	s.record(Record{Kind: OpRestoreStarted, InstanceID: id, At: time.Now()})
	e.op.Lock()
	defer e.op.Unlock()
	if e.vm.State() == qemu.StateRunning {
		return nil // a second wake for a guest already restored
	}
	res, err := e.vm.Restore(ctx)
	s.record(Record{Kind: OpRestore, InstanceID: id, At: time.Now(), Duration: res.Duration, Err: err})
	if err != nil {
		return err
	}
	s.publish(autostandby.InstanceEventRestore, s.setState(e, autostandby.StateRunning))
	return nil
}

func (s *Store) setState(e *entry, state string) autostandby.Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.inst.State = state
	return cloneInstance(e.inst)
}

// SetRuntime persists the idle countdown; nil deletes it.
func (s *Store) SetRuntime(ctx context.Context, id string, runtime *autostandby.Runtime) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.instances[id]
	if !ok {
		return fmt.Errorf("qemustore: %s: %w", id, autostandby.ErrInstanceNotFound)
	}
	e.inst.Runtime = runtime.Clone()
	return nil
}

// SubscribeInstanceEvents delivers lifecycle events until the returned func is called.
func (s *Store) SubscribeInstanceEvents() (<-chan autostandby.InstanceEvent, func(), error) {
	sub := &subscriber{ch: make(chan autostandby.InstanceEvent, 16), done: make(chan struct{})}
	s.mu.Lock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = sub
	s.mu.Unlock()
	var once sync.Once
	return sub.ch, func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.subs, id)
			s.mu.Unlock()
			close(sub.done)
		})
	}, nil
}

// publish sends an event to every subscriber, waiting for each unless it unsubscribes.
func (s *Store) publish(action autostandby.InstanceEventAction, inst autostandby.Instance) {
	s.mu.Lock()
	subs := make([]*subscriber, 0, len(s.subs))
	for _, sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		ev := autostandby.InstanceEvent{Action: action, InstanceID: inst.ID, Instance: &inst}
		select {
		case sub.ch <- ev:
		case <-sub.done:
		}
	}
}

func (s *Store) record(r Record) {
	if s.records == nil {
		return
	}
	select {
	case s.records <- r:
	default:
	}
}
