package autostandby

import (
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of ControllerOptions (hypeman's where it has one).
const (
	DefaultMaxConcurrentStandbys = 16
	DefaultMaxConcurrentRestores = 8
	DefaultSnapshotSyncInterval  = 5 * time.Minute
	DefaultRetryDelay            = 2 * time.Second
	DefaultReconnectDelay        = 2 * time.Second
	DefaultReconcileDelay        = 2 * time.Second
	DefaultLogDrainInterval      = time.Second
	defaultPollTimeout           = 200 * time.Millisecond
	// clockStep is how often a controller on a caller's ConnectionSource moves the
	// library's clock to Now while Run runs.
	clockStep = 50 * time.Millisecond
)

// ControllerOptions tunes the Go controller. Zero or negative values take defaults.
type ControllerOptions struct {
	// Log receives the controller's logs; slog.Default() when nil.
	Log *slog.Logger
	// Meter creates the hypeman_auto_standby_* instruments; none are recorded when nil.
	Meter metric.Meter
	// Tracer creates the AutoStandby* spans; a no-op tracer when nil.
	Tracer trace.Tracer
	// Now is the controller's clock (time.Now when nil). With a caller's
	// ConnectionSource it is the library's clock too; with NewConntrackSource the
	// library stamps flows with its own clock and Now only judges Describe's hold
	// expiry and countdown.
	Now func() time.Time
	// ReconnectDelay paces reopening a caller's ConnectionSource stream after it
	// fails (default 2s). With NewConntrackSource the library reopens its socket
	// with its own backoff.
	ReconnectDelay time.Duration
	// ReconcileDelay is how often a caller's ConnectionSource is re-listed while any
	// instance has live flows, to repair missed events (default 2s). With
	// NewConntrackSource the library detects lost events and resyncs itself.
	ReconcileDelay time.Duration
	// MaxConcurrentStandbys bounds StandbyInstance calls in flight (default 16).
	MaxConcurrentStandbys int
	// MaxConcurrentRestores bounds RestoreInstance calls on inbound traffic in flight
	// (default 8): more instances asked for wait, in the order of their first
	// connection, and are restored as earlier restores end.
	MaxConcurrentRestores int
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
	// StandbyRetryBackoff retries a failed standby after 1s, 2s, 4s ... (capped at the
	// idle timeout) within the same idle period. By default, as in hypeman, a failed
	// standby starts a new idle period (persisted, so a restart resumes it) and the
	// retry comes one full idle timeout later.
	StandbyRetryBackoff bool
	// UpstreamReasons reports only the reasons in hypeman's API enum: standby_held,
	// min_uptime_not_elapsed and confirm_pending become idle_timeout_not_elapsed;
	// resync_pending, confirm_failed, conntrack_events_off, restore_failed and
	// invalid_config become observer_error. For hosts whose generated API clients reject
	// unknown reasons.
	UpstreamReasons bool
}

func (o ControllerOptions) withDefaults() ControllerOptions {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxConcurrentStandbys <= 0 {
		o.MaxConcurrentStandbys = DefaultMaxConcurrentStandbys
	}
	if o.MaxConcurrentRestores <= 0 {
		o.MaxConcurrentRestores = DefaultMaxConcurrentRestores
	}
	if o.SnapshotSyncInterval <= 0 {
		o.SnapshotSyncInterval = DefaultSnapshotSyncInterval
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ReconnectDelay <= 0 {
		o.ReconnectDelay = DefaultReconnectDelay
	}
	if o.ReconcileDelay <= 0 {
		o.ReconcileDelay = DefaultReconcileDelay
	}
	if o.LogDrainInterval <= 0 {
		o.LogDrainInterval = DefaultLogDrainInterval
	}
	return o
}
