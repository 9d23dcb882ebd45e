package autostandby

import (
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// Manual feeds a controller created with NewManualSource: flow events, dumps, time and
// observer health come from here instead of the kernel. Tests and simulations use it.
type Manual struct {
	eng manualEngine
}

// Manual returns the manual input of a controller created with NewManualSource, or nil.
func (c *Controller) Manual() *Manual {
	if c == nil || c.manual == nil || c.feed != nil {
		return nil
	}
	return &Manual{eng: c.manual}
}

// Ingest applies flow events in order.
func (m *Manual) Ingest(events ...FlowEvent) error {
	return m.eng.Ingest(toBindingEvents(events))
}

// Advance moves the library's clock forward and fires what became due.
func (m *Manual) Advance(d time.Duration) error {
	return m.eng.AdvanceClock(d)
}

// Resync replaces the library's view of the table with a full dump: flows missing
// from table are gone, those present are live in the given state.
func (m *Manual) Resync(table ...FlowEvent) error {
	return m.eng.Resync(toBindingEvents(table))
}

// SetObserverError marks the observer failed with err, or healthy when err is nil.
func (m *Manual) SetObserverError(err error) error {
	if err == nil {
		return m.eng.SetObserverError("", false)
	}
	return m.eng.SetObserverError(err.Error(), true)
}

func toBindingEvents(events []FlowEvent) []binding.FlowEvent {
	out := make([]binding.FlowEvent, len(events))
	for i, e := range events {
		reply := binding.FlowEvent{ReplySrc: e.ReplySource, ReplyDst: e.ReplyDestination}
		if !reply.ReplySrc.IsValid() {
			reply.ReplySrc = e.Destination
		}
		if !reply.ReplyDst.IsValid() {
			reply.ReplyDst = e.Client
		}
		out[i] = binding.FlowEvent{
			Kind: binding.FlowEventKind(e.Kind), Protocol: e.Protocol,
			OrigSrc: e.Client, OrigDst: e.Destination,
			ReplySrc: reply.ReplySrc, ReplyDst: reply.ReplyDst,
			Zone: e.Zone, ID: e.ID, HasTCPState: e.HasTCPState, TCPState: uint8(e.TCPState),
		}
	}
	return out
}
