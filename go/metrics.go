package autostandby

import (
	"context"

	"github.com/libautostandby/libautostandby/go/internal/binding"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metric names: hypeman's, plus wake attempts, suppressed wakes, the restore queue and
// lost-event counts.
const (
	metricConntrackEvents     = "hypeman_auto_standby_conntrack_events_total"
	metricStartupResync       = "hypeman_auto_standby_startup_resync_duration_seconds"
	metricStandbyAttempts     = "hypeman_auto_standby_standby_attempts_total"
	metricControllerErrors    = "hypeman_auto_standby_controller_errors_total"
	metricTrackedInstances    = "hypeman_auto_standby_tracked_instances_total"
	metricActiveConnections   = "hypeman_auto_standby_active_connections_total"
	metricStandbyInFlight     = "hypeman_auto_standby_standby_in_flight"
	metricStandbyQueued       = "hypeman_auto_standby_standby_queued"
	metricWakeAttempts        = "hypeman_auto_standby_wake_attempts_total"
	metricConntrackEventsLost = "hypeman_auto_standby_conntrack_events_lost_total"
	metricWakesSuppressed     = "hypeman_auto_standby_wakes_suppressed_total"
	metricRestoreQueued       = "hypeman_auto_standby_restore_queued"
	metricRestoreInFlight     = "hypeman_auto_standby_restore_in_flight"
)

// Values of the operation label of controller_errors_total used here.
const (
	opStartupResync = "startup_resync"
	opInstanceEvent = "instance_event"
	opSnapshotSync  = "snapshot_sync"
	opPersistRT     = "persist_runtime"
	opStandby       = "standby"
	opPoll          = "poll_decisions"
	opRestore       = "restore"
	// With a caller's ConnectionSource, hypeman's operations on it.
	opConnect        = "connect"
	opStream         = "stream"
	opStreamClosed   = "stream_closed"
	opReconnect      = "reconnect"
	opReconcile      = "reconcile"
	opStandbyConfirm = "standby_confirm"
)

// Values of the status label of standby_attempts_total and wake_attempts_total.
const (
	attemptSuccess   = "success"
	attemptError     = "error"
	attemptCancelled = "cancelled"
	attemptDryRun    = "dry_run"
)

// durationBuckets matches hypeman's common duration histogram buckets, in seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// metrics holds the instruments; a nil *metrics records nothing.
type metrics struct {
	resync   metric.Float64Histogram
	attempts metric.Int64Counter
	errors   metric.Int64Counter
	wakes    metric.Int64Counter
}

// gaugeSnapshot is what the observable instruments report, read in one callback.
type gaugeSnapshot struct {
	phases            map[string]int64
	activeConnections int64
	inFlight          int64
	queued            int64
	flowEvents        int64
	eventsLost        int64
	// wakesSuppressed: new flows to instances in Standby that did not ask for a
	// restore, by reason.
	wakesSuppressed  map[string]uint64
	restoresQueued   int64
	restoresInFlight int64
}

// newMetrics creates every instrument on meter. As in hypeman, a failure to create
// any of them disables metrics rather than failing the controller.
func newMetrics(meter metric.Meter, snapshot func() gaugeSnapshot) (*metrics, error) {
	if meter == nil {
		return nil, nil
	}
	m := &metrics{}
	var err error
	if m.resync, err = meter.Float64Histogram(metricStartupResync, metric.WithUnit("s"),
		metric.WithDescription("Duration of auto-standby startup resyncs"),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, err
	}
	if m.attempts, err = meter.Int64Counter(metricStandbyAttempts,
		metric.WithDescription("Auto-standby standby attempts")); err != nil {
		return nil, err
	}
	if m.errors, err = meter.Int64Counter(metricControllerErrors,
		metric.WithDescription("Auto-standby controller errors by operation")); err != nil {
		return nil, err
	}
	if m.wakes, err = meter.Int64Counter(metricWakeAttempts,
		metric.WithDescription("Restores of standby instances on inbound traffic")); err != nil {
		return nil, err
	}
	events, err := meter.Int64ObservableCounter(metricConntrackEvents,
		metric.WithDescription("Conntrack flow events received by the library"))
	if err != nil {
		return nil, err
	}
	lost, err := meter.Int64ObservableCounter(metricConntrackEventsLost,
		metric.WithDescription("Times conntrack events were lost (answered with a resync)"))
	if err != nil {
		return nil, err
	}
	tracked, err := meter.Int64ObservableGauge(metricTrackedInstances,
		metric.WithDescription("Tracked instances by auto-standby phase"))
	if err != nil {
		return nil, err
	}
	active, err := meter.Int64ObservableGauge(metricActiveConnections,
		metric.WithDescription("Qualifying inbound connections across instances"))
	if err != nil {
		return nil, err
	}
	inFlight, err := meter.Int64ObservableGauge(metricStandbyInFlight,
		metric.WithDescription("Standby operations executing"))
	if err != nil {
		return nil, err
	}
	queued, err := meter.Int64ObservableGauge(metricStandbyQueued,
		metric.WithDescription("Standby operations waiting for a worker"))
	if err != nil {
		return nil, err
	}
	suppressed, err := meter.Int64ObservableCounter(metricWakesSuppressed,
		metric.WithDescription("New connections to standby instances that did not restore them, by reason"))
	if err != nil {
		return nil, err
	}
	restoreQueued, err := meter.Int64ObservableGauge(metricRestoreQueued,
		metric.WithDescription("Restores on inbound traffic waiting for a slot (max_concurrent_restores)"))
	if err != nil {
		return nil, err
	}
	restoreInFlight, err := meter.Int64ObservableGauge(metricRestoreInFlight,
		metric.WithDescription("Restores on inbound traffic asked for and not yet finished"))
	if err != nil {
		return nil, err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := snapshot()
		for _, phase := range []string{"active", "idle_countdown", "ready_for_standby", "ineligible"} {
			o.ObserveInt64(tracked, s.phases[phase], metric.WithAttributes(attribute.String("phase", phase)))
		}
		o.ObserveInt64(active, s.activeConnections)
		o.ObserveInt64(inFlight, s.inFlight)
		o.ObserveInt64(queued, s.queued)
		o.ObserveInt64(events, s.flowEvents, metric.WithAttributes(attribute.String("result", "received")))
		o.ObserveInt64(lost, s.eventsLost)
		for _, reason := range binding.WakeSuppressedReasons {
			o.ObserveInt64(suppressed, int64(s.wakesSuppressed[reason]),
				metric.WithAttributes(attribute.String("reason", reason)))
		}
		o.ObserveInt64(restoreQueued, s.restoresQueued)
		o.ObserveInt64(restoreInFlight, s.restoresInFlight)
		return nil
	}, tracked, active, inFlight, queued, events, lost, suppressed, restoreQueued, restoreInFlight)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) resyncDone(ctx context.Context, seconds float64, ok bool) {
	if m == nil {
		return
	}
	status := "success"
	if !ok {
		status = "error"
	}
	m.resync.Record(ctx, seconds, metric.WithAttributes(attribute.String("status", status)))
}

func (m *metrics) attempt(ctx context.Context, status string) {
	if m == nil {
		return
	}
	m.attempts.Add(ctx, 1, metric.WithAttributes(attribute.String("status", status)))
}

func (m *metrics) wake(ctx context.Context, status string) {
	if m == nil {
		return
	}
	m.wakes.Add(ctx, 1, metric.WithAttributes(attribute.String("status", status)))
}

func (m *metrics) controllerError(ctx context.Context, operation string) {
	if m == nil {
		return
	}
	m.errors.Add(ctx, 1, metric.WithAttributes(attribute.String("operation", operation)))
}

// phaseOf maps a status to hypeman's tracked_instances_total phase.
func phaseOf(status Status, active int) string {
	switch status {
	case StatusActive:
		return "active"
	case StatusIdleCountdown:
		return "idle_countdown"
	case StatusReadyForStandby, StatusStandbyRequested:
		return "ready_for_standby"
	case StatusError:
		if active > 0 {
			return "active"
		}
		return "idle_countdown"
	}
	return "ineligible"
}
