package autostandby

import (
	"context"
	"errors"
	"time"
)

// Error sentinels shared with hypeman.
var (
	// ErrInstanceNotFound is returned by InstanceStore.StandbyInstance when the
	// instance no longer exists; the controller then forgets it.
	ErrInstanceNotFound = errors.New("instance not found")
	// ErrStandbyInProgress is returned by HoldStandby while a standby executes.
	ErrStandbyInProgress = errors.New("standby in progress")
	// ErrUnsupported is returned by NewController where the library is not available
	// (not Linux, or built without cgo).
	ErrUnsupported = errors.New("conntrack-backed auto-standby is only supported on Linux")
)

// Instance states the controller distinguishes (hypeman's spellings).
const (
	StateRunning = "Running"
	StateStandby = "Standby"
	StateStopped = "Stopped"
)

// Instance is the controller's view of a VM, shaped like hypeman's.
type Instance struct {
	// ID identifies the instance in the store.
	ID string
	// Name is for logs only.
	Name string
	// State is hypeman's state name; only "Running" is eligible.
	State string
	// NetworkEnabled: the instance has networking.
	NetworkEnabled bool
	// IP is the guest's primary address.
	IP string
	// ExtraIPs are further guest addresses (for example its IPv6 address).
	ExtraIPs []string
	// HasVGPU: instances with a vGPU are never put into Standby.
	HasVGPU bool
	// AutoStandby is the policy; nil means not configured.
	AutoStandby *Policy
	// Runtime is the persisted countdown, nil when none is stored.
	Runtime *Runtime
	// Version orders snapshots of the instance, for stores that have such a number (a
	// revision or generation that grows with every change and is never reused by an
	// instance re-created under the same ID); 0 means unknown. Lifecycle events may be
	// delivered out of order, so the controller ignores a snapshot older than the
	// newest it applied for the instance; one with Version 0 is always applied.
	Version uint64
}

// Runtime is the idle countdown persisted in instance metadata (hypeman's JSON).
type Runtime struct {
	// IdleSince is when the instance became idle, if it is idle.
	IdleSince *time.Time `json:"idle_since,omitempty"`
	// LastInboundActivityAt is when inbound activity was last seen.
	LastInboundActivityAt *time.Time `json:"last_inbound_activity_at,omitempty"`
}

// Clone deep-copies the runtime with its times in UTC; nil stays nil.
func (r *Runtime) Clone() *Runtime {
	if r == nil {
		return nil
	}
	return &Runtime{IdleSince: cloneTime(r.IdleSince), LastInboundActivityAt: cloneTime(r.LastInboundActivityAt)}
}

func cloneTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	utc := t.UTC()
	return &utc
}

// InstanceEventAction is a lifecycle action (hypeman's strings).
type InstanceEventAction string

// Lifecycle actions.
const (
	InstanceEventCreate  InstanceEventAction = "create"
	InstanceEventUpdate  InstanceEventAction = "update"
	InstanceEventStart   InstanceEventAction = "start"
	InstanceEventStop    InstanceEventAction = "stop"
	InstanceEventStandby InstanceEventAction = "standby"
	InstanceEventRestore InstanceEventAction = "restore"
	InstanceEventDelete  InstanceEventAction = "delete"
	InstanceEventFork    InstanceEventAction = "fork"
)

// InstanceEvent is one lifecycle event. Instance is nil for delete; for fork it is
// the new fork.
type InstanceEvent struct {
	// Action is what happened.
	Action InstanceEventAction
	// InstanceID is the instance it happened to.
	InstanceID string
	// Instance is its state after the action (nil for delete).
	Instance *Instance
}

// InstanceStore is what the controller needs from the VM manager.
type InstanceStore interface {
	// ListInstances returns every instance with its persisted runtime.
	ListInstances(ctx context.Context) ([]Instance, error)
	// StandbyInstance snapshots and stops the instance; ErrInstanceNotFound (wrapped
	// or not) when it no longer exists.
	StandbyInstance(ctx context.Context, id string) error
	// SetRuntime persists the countdown; nil deletes it.
	SetRuntime(ctx context.Context, id string, runtime *Runtime) error
	// SubscribeInstanceEvents delivers lifecycle events until the returned func is
	// called (hypeman's signature: no context).
	SubscribeInstanceEvents() (<-chan InstanceEvent, func(), error)
}

// InstanceGetter is optionally implemented by an InstanceStore: before each standby the
// controller re-reads the instance with it (otherwise with ListInstances), because
// lifecycle events may be reordered and, unless the store sets Instance.Version, a stale
// "start" delivered after its "stop" would otherwise have a stopped VM put into Standby.
type InstanceGetter interface {
	// GetInstance returns the instance's current state, or ErrInstanceNotFound.
	GetInstance(ctx context.Context, id string) (*Instance, error)
}

// InstanceRestorer is optionally implemented by an InstanceStore: the controller then
// restores instances whose policy has wake_on_traffic when traffic arrives for them.
type InstanceRestorer interface {
	// RestoreInstance brings an instance in Standby back to Running.
	RestoreInstance(ctx context.Context, id string) error
}
