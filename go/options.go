package autostandby

import (
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of ControllerOptions and SourceOptions (hypeman's where it has one).
const (
	DefaultMaxConcurrentStandbys = 16
	DefaultSnapshotSyncInterval  = 5 * time.Minute
	DefaultRetryDelay            = 2 * time.Second
	DefaultLogDrainInterval      = time.Second
	defaultPollTimeout           = 200 * time.Millisecond
)

// ControllerOptions tunes the Go controller. Zero or negative values take defaults.
type ControllerOptions struct {
	// Log receives the controller's logs; slog.Default() when nil.
	Log *slog.Logger
	// Meter creates the hypeman_auto_standby_* instruments; none are recorded when nil.
	Meter metric.Meter
	// Tracer creates the AutoStandby* spans; a no-op tracer when nil.
	Tracer trace.Tracer
	// MaxConcurrentStandbys bounds StandbyInstance calls in flight (default 16).
	MaxConcurrentStandbys int
	// SnapshotSyncInterval is how often the instance list is re-read and reconciled
	// with the library (default 5m).
	SnapshotSyncInterval time.Duration
	// RetryDelay is how soon a failed startup listing is retried (default 2s).
	RetryDelay time.Duration
	// LogDrainInterval is how often the library's log buffer is copied into Log
	// (default 1s).
	LogDrainInterval time.Duration
	// DryRun logs and counts what the controller would do (standby, restore, persist)
	// without calling the store.
	DryRun bool
}

func (o ControllerOptions) withDefaults() ControllerOptions {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxConcurrentStandbys <= 0 {
		o.MaxConcurrentStandbys = DefaultMaxConcurrentStandbys
	}
	if o.SnapshotSyncInterval <= 0 {
		o.SnapshotSyncInterval = DefaultSnapshotSyncInterval
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.LogDrainInterval <= 0 {
		o.LogDrainInterval = DefaultLogDrainInterval
	}
	return o
}

// SourceMode says where the library's flow events come from.
type SourceMode int

// Source modes.
const (
	// SourceKernel: the library watches the host's conntrack table (needs
	// CAP_NET_ADMIN).
	SourceKernel SourceMode = iota
	// SourceManual: flow events and time come from Controller.Manual (tests and
	// simulations; no privileges needed).
	SourceManual
)

// SourceOptions configures the library's conntrack observer. Zero values take the
// library's defaults.
type SourceOptions struct {
	// Mode selects kernel observation (default) or manual input.
	Mode SourceMode
	// NetnsPath observes the network namespace at this path (e.g. /run/netns/x)
	// instead of the current one.
	NetnsPath string
	// ReceiveBufferBytes sizes the event socket's receive buffer (default 16 MiB).
	ReceiveBufferBytes int
	// ResyncInterval is how often the library re-dumps the table as a safety net.
	ResyncInterval time.Duration
	// EnableConntrackEvents sets net.netfilter.nf_conntrack_events to 1 when it is not,
	// so flows created before the controller started also report events.
	EnableConntrackEvents bool
	// ManualStart is the manual clock's starting time (default: now).
	ManualStart time.Time
}
