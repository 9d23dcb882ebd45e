package compat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"go.opentelemetry.io/otel"

	autostandby "github.com/libautostandby/libautostandby/go"
)

// ErrNotFound is the manager's "no such instance".
var ErrNotFound = errors.New("instance not found")

// ManagedInstance is the manager's view of a VM, with the fields hypeman's provider
// reads.
type ManagedInstance struct {
	ID, Name, State, IP     string
	NetworkEnabled          bool
	GPUProfile, GPUMdevUUID string
	AutoStandby             *autostandby.Policy
}

// LifecycleEvent is the manager's lifecycle notification; Instance is nil on delete.
type LifecycleEvent struct {
	Action     string
	InstanceID string
	Instance   *ManagedInstance
}

// Manager is the instance manager's method set that the provider uses.
type Manager interface {
	ListInstances(ctx context.Context) ([]ManagedInstance, error)
	StandbyInstance(ctx context.Context, id string) error
	GetAutoStandbyRuntime(ctx context.Context, id string) (*autostandby.Runtime, error)
	SetAutoStandbyRuntime(ctx context.Context, id string, rt *autostandby.Runtime) error
	SubscribeLifecycleEvents(consumer string) (<-chan LifecycleEvent, func())
}

// instanceStore adapts a Manager to autostandby.InstanceStore, shaped as hypeman's
// provider adapter is: value receiver, runtime read per instance, and a lifecycle
// subscription without a context whose forwarding goroutine enriches each event.
type instanceStore struct {
	manager Manager
}

var _ autostandby.InstanceStore = instanceStore{}

func (s instanceStore) ListInstances(ctx context.Context) ([]autostandby.Instance, error) {
	list, err := s.manager.ListInstances(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]autostandby.Instance, 0, len(list))
	for i := range list {
		inst := toInstance(&list[i])
		if inst.Runtime, err = s.manager.GetAutoStandbyRuntime(ctx, inst.ID); err != nil {
			return nil, err
		}
		out = append(out, *inst)
	}
	return out, nil
}

func (s instanceStore) StandbyInstance(ctx context.Context, id string) error {
	err := s.manager.StandbyInstance(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: %v", autostandby.ErrInstanceNotFound, err)
	}
	return err
}

func (s instanceStore) SetRuntime(ctx context.Context, id string, rt *autostandby.Runtime) error {
	return s.manager.SetAutoStandbyRuntime(ctx, id, rt)
}

func (s instanceStore) SubscribeInstanceEvents() (<-chan autostandby.InstanceEvent, func(), error) {
	events, unsubscribe := s.manager.SubscribeLifecycleEvents("auto_standby")
	out := make(chan autostandby.InstanceEvent, 32)
	go func() {
		defer close(out)
		for ev := range events {
			inst := toInstance(ev.Instance)
			if inst != nil {
				if rt, err := s.manager.GetAutoStandbyRuntime(context.Background(), inst.ID); err == nil {
					inst.Runtime = rt
				}
			}
			out <- autostandby.InstanceEvent{Action: autostandby.InstanceEventAction(ev.Action),
				InstanceID: ev.InstanceID, Instance: inst}
		}
	}()
	return out, unsubscribe, nil
}

func toInstance(m *ManagedInstance) *autostandby.Instance {
	if m == nil {
		return nil
	}
	return &autostandby.Instance{ID: m.ID, Name: m.Name, State: m.State,
		NetworkEnabled: m.NetworkEnabled, IP: m.IP,
		HasVGPU: m.GPUProfile != "" || m.GPUMdevUUID != "", AutoStandby: m.AutoStandby}
}

// ProvideAutoStandbyController builds the controller with the call hypeman's provider
// makes: the library's conntrack observer of the current network namespace.
func ProvideAutoStandbyController(m Manager, maxConcurrent int, log *slog.Logger) *autostandby.Controller {
	if m == nil || log == nil {
		return nil
	}
	return autostandby.NewController(
		instanceStore{manager: m},
		autostandby.NewConntrackSource(),
		autostandby.ControllerOptions{
			Log:                   log.With("controller", "auto_standby"),
			Meter:                 otel.GetMeterProvider().Meter("hypeman/autostandby"),
			Tracer:                otel.GetTracerProvider().Tracer("hypeman/autostandby"),
			MaxConcurrentStandbys: maxConcurrent,
		},
	)
}
