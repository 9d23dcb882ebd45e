package autostandby

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// Connection is one conntrack flow in hypeman's normalised form: the original tuple
// and the TCP state.
type Connection struct {
	// OriginalSourceIP and OriginalSourcePort are the client's side of the flow.
	OriginalSourceIP   netip.Addr
	OriginalSourcePort uint16
	// OriginalDestinationIP and OriginalDestinationPort are the side the client
	// connected to (the guest).
	OriginalDestinationIP   netip.Addr
	OriginalDestinationPort uint16
	// TCPState is the flow's conntrack TCP state.
	TCPState TCPState
	// Protocol is the IP protocol number; zero means TCP, as all of hypeman's
	// connections are.
	Protocol uint8
}

// ConnectionEventType is what a ConnectionEvent reports (hypeman's strings).
type ConnectionEventType string

// Connection event types. A conntrack update is reported as "new", as hypeman does.
const (
	ConnectionEventNew     ConnectionEventType = "new"
	ConnectionEventDestroy ConnectionEventType = "destroy"
)

// ConnectionEvent is one conntrack event from a ConnectionSource's stream.
type ConnectionEvent struct {
	// Type is new (created or updated) or destroy.
	Type ConnectionEventType
	// Connection is the flow the event is about.
	Connection Connection
	// ObservedAt is when the event was received; zero means now.
	ObservedAt time.Time
}

// ConnectionStream is a live stream of conntrack events.
type ConnectionStream interface {
	// Events delivers events until the stream fails or is closed.
	Events() <-chan ConnectionEvent
	// Errors reports a failure of the stream; the controller then closes it and
	// opens a new one after ControllerOptions.ReconnectDelay.
	Errors() <-chan error
	// Close ends the stream.
	Close() error
}

// ConnectionSource supplies the flows the controller judges idleness by.
//
// NewConntrackSource returns the library's own observer of the host's conntrack
// table, which the library reads itself. Any other implementation (hypeman's test
// fakes, a simulation) drives the library in manual mode: the controller takes table
// snapshots from ListConnections (at start, on every periodic sync and reconcile, after
// a stream is restored, and to confirm idleness right before each standby) and events
// from OpenStream's stream, with time from ControllerOptions.Now.
type ConnectionSource interface {
	// ListConnections returns every flow in the table now.
	ListConnections(ctx context.Context) ([]Connection, error)
	// OpenStream starts a stream of events.
	OpenStream(ctx context.Context) (ConnectionStream, error)
}

// protocol is the connection's IP protocol number (TCP when unset).
func (c Connection) protocol() uint8 {
	if c.Protocol == 0 {
		return ProtoTCP
	}
	return c.Protocol
}

// flowEvent converts the connection for the library. Only TCP carries a state.
func (c Connection) flowEvent(kind binding.FlowEventKind) binding.FlowEvent {
	src := netip.AddrPortFrom(c.OriginalSourceIP.Unmap(), c.OriginalSourcePort)
	dst := netip.AddrPortFrom(c.OriginalDestinationIP.Unmap(), c.OriginalDestinationPort)
	proto := c.protocol()
	return binding.FlowEvent{
		Kind: kind, Protocol: proto,
		OrigSrc: src, OrigDst: dst, ReplySrc: dst, ReplyDst: src,
		HasTCPState: proto == ProtoTCP, TCPState: uint8(c.TCPState),
	}
}

// flowEvents converts a table snapshot for the library; flows without valid
// addresses (which conntrack never reports) are left out.
func flowEvents(conns []Connection) []binding.FlowEvent {
	out := make([]binding.FlowEvent, 0, len(conns))
	for _, c := range conns {
		if c.OriginalSourceIP.IsValid() && c.OriginalDestinationIP.IsValid() {
			out = append(out, c.flowEvent(binding.FlowNew))
		}
	}
	return out
}

// ActiveInboundCount counts the connections that keep inst awake under its policy, and
// returns the policy's idle timeout. A nil or disabled policy gives 0, 0, nil. The
// classification is the library's own, run on a throwaway manual-mode controller, so
// it is exactly what a running controller decides; ErrUnsupported where the library is
// not built in.
func ActiveInboundCount(inst Instance, conns []Connection) (int, time.Duration, error) {
	policy, err := compilePolicy(inst.AutoStandby)
	if err != nil {
		return 0, 0, err
	}
	if policy == nil || !policy.enabled {
		return 0, 0, nil
	}
	// Counting is about flows, not eligibility: count as for a running instance.
	inst.State, inst.NetworkEnabled, inst.HasVGPU = StateRunning, true, false
	if _, err := netip.ParseAddr(inst.IP); err != nil {
		return 0, 0, fmt.Errorf("parse instance IP %q: %w", inst.IP, err)
	}
	spec, _, err := instanceSpec(&inst)
	if err != nil {
		return 0, 0, err
	}
	lib, err := binding.New(binding.Config{Mode: binding.ModeManual, MaxConcurrentStandbys: 1,
		ManualStart: time.Now()})
	if err != nil {
		if err == binding.ErrUnsupported {
			return 0, 0, ErrUnsupported
		}
		return 0, 0, err
	}
	defer lib.Close()
	if err := lib.Register(1, spec); err != nil {
		return 0, 0, err
	}
	if err := lib.Resync(flowEvents(conns)); err != nil {
		return 0, 0, err
	}
	st, err := lib.Status(1)
	if err != nil {
		return 0, 0, err
	}
	return int(st.ActiveInbound), policy.idleTimeout, nil
}
