package autostandby

import (
	"context"
	"errors"
	"time"
)

// SourceOptions configures the library's conntrack observer. Zero values take the
// library's defaults.
type SourceOptions struct {
	// NetnsPath observes the network namespace at this path (e.g. /run/netns/x)
	// instead of the current one.
	NetnsPath string
	// ReceiveBufferBytes sizes the event socket's receive buffer (default 16 MiB).
	ReceiveBufferBytes int
	// ResyncInterval is how often the library checks every flow it tracks, as a
	// safety net: an exact-tuple lookup each, not a walk of the table.
	ResyncInterval time.Duration
	// EnableConntrackEvents sets net.netfilter.nf_conntrack_events to 1 when it is not,
	// so flows created before the controller started also report events.
	EnableConntrackEvents bool
	// HoldPacketsInStandby makes the first packets of a wake wait on the host instead
	// of being lost. Right before StandbyInstance and again once it has returned, the
	// library removes the instance's neighbour entries (ARP, NDP) in the observed
	// namespace (also for an instance listed in Standby at start); a packet for
	// it then waits in the kernel's neighbour queue while the address resolves, and
	// goes out as soon as the guest, restored by RestoreInstance, announces itself or
	// answers. The kernel gives up after the device's mcast_solicit x retrans_time
	// (3 x 1 s by default; see HoldResolveWindow): a restore slower than that fails
	// the held packets, and a client waiting in connect gets "no route to host".
	// Nothing is installed, so nothing is left behind and nothing is ever
	// black-holed. Off by default.
	HoldPacketsInStandby bool
	// HoldResolveWindow is the restore time held packets must survive (zero leaves the
	// devices' settings alone: about 3 s). The library raises mcast_solicit on the
	// device reaching a held instance so that mcast_solicit x retrans_time covers it,
	// and puts it back when the last instance goes or the controller is closed; it
	// records the original under /run/autostandby first, and the next controller of
	// the namespace restores what a crash left behind.
	HoldResolveWindow time.Duration
}

// errReadByLibrary is what the library-owned sources answer when called directly.
var errReadByLibrary = errors.New("autostandby: this source is read by the library itself; " +
	"use Controller.Describe for the flows keeping an instance awake")

// ConntrackSource is the library's observer of the host's conntrack table (IPv4 and
// IPv6, TCP and UDP, kernel-filtered events, loss detection). A controller created
// with it runs the library in kernel mode, which needs CAP_NET_ADMIN. The library
// reads the table itself, so ListConnections and OpenStream are not for callers.
type ConntrackSource struct {
	opts SourceOptions
}

// NewConntrackSource returns the library's conntrack observer, configured by opts
// (at most one; none means the library's defaults and the current namespace).
func NewConntrackSource(opts ...SourceOptions) *ConntrackSource {
	s := &ConntrackSource{}
	if len(opts) > 0 {
		s.opts = opts[0]
	}
	return s
}

// ListConnections is not available: the library reads the table itself.
func (*ConntrackSource) ListConnections(context.Context) ([]Connection, error) {
	return nil, errReadByLibrary
}

// OpenStream is not available: the library reads the event stream itself.
func (*ConntrackSource) OpenStream(context.Context) (ConnectionStream, error) {
	return nil, errReadByLibrary
}

// ManualSource runs the library in manual mode with flows, time and observer health
// supplied through Controller.Manual, for tests and simulations (no privileges).
type ManualSource struct {
	start time.Time
}

// NewManualSource returns a manual source whose clock starts at start (now when zero)
// and moves only by Manual.Advance.
func NewManualSource(start time.Time) *ManualSource {
	if start.IsZero() {
		start = time.Now()
	}
	return &ManualSource{start: start}
}

// ListConnections is not available: flows come through Controller.Manual.
func (*ManualSource) ListConnections(context.Context) ([]Connection, error) {
	return nil, errReadByLibrary
}

// OpenStream is not available: flows come through Controller.Manual.
func (*ManualSource) OpenStream(context.Context) (ConnectionStream, error) {
	return nil, errReadByLibrary
}
