package autostandby

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// collect reads every data point as "name{k=v,...}" -> value.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	key := func(name string, attrs attribute.Set) string {
		s := name + "{"
		for i, kv := range attrs.ToSlice() {
			if i > 0 {
				s += ","
			}
			s += string(kv.Key) + "=" + kv.Value.Emit()
		}
		return s + "}"
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range data.DataPoints {
					out[key(m.Name, p.Attributes)] = float64(p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range data.DataPoints {
					out[key(m.Name, p.Attributes)] = float64(p.Value)
				}
			case metricdata.Histogram[float64]:
				for _, p := range data.DataPoints {
					out[key(m.Name, p.Attributes)] = float64(p.Count)
				}
			}
		}
	}
	return out
}

func TestMetricsUseHypemansNamesAndLabels(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("hypeman/autostandby")
	store := newFakeStore(running("a", "10.0.0.2"), running("b", "10.0.0.3"))
	store.standbyErr["b"] = errors.New("snapshot failed")
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{Meter: meter})
	startRun(t, c)
	ka, kb := keyOf(t, c, "a"), keyOf(t, c, "b")
	eng.mu.Lock()
	eng.statuses[ka] = binding.Status{Status: 3, ActiveInbound: 2} // active
	eng.statuses[kb] = binding.Status{Status: 4}                   // idle_countdown
	eng.mu.Unlock()
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: ka}
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: kb}
	eventually(t, "both reports", func() bool { return len(eng.reportsFor(ka)) == 1 && len(eng.reportsFor(kb)) == 1 })

	got := collect(t, reader)
	want := map[string]float64{
		"hypeman_auto_standby_standby_attempts_total{status=success}":           1,
		"hypeman_auto_standby_standby_attempts_total{status=error}":             1,
		"hypeman_auto_standby_controller_errors_total{operation=standby}":       1,
		"hypeman_auto_standby_startup_resync_duration_seconds{status=success}":  1,
		"hypeman_auto_standby_standby_in_flight{}":                              0,
		"hypeman_auto_standby_standby_queued{}":                                 0,
		"hypeman_auto_standby_active_connections_total{}":                       0,
		"hypeman_auto_standby_tracked_instances_total{phase=ineligible}":        2,
		"hypeman_auto_standby_tracked_instances_total{phase=active}":            0,
		"hypeman_auto_standby_tracked_instances_total{phase=idle_countdown}":    0,
		"hypeman_auto_standby_tracked_instances_total{phase=ready_for_standby}": 0,
		"hypeman_auto_standby_conntrack_events_total{result=received}":          0,
		"hypeman_auto_standby_conntrack_events_lost_total{}":                    0,
	}
	for name, value := range want {
		if v, ok := got[name]; !ok || v != value {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, value)
		}
	}
	if t.Failed() {
		t.Logf("collected: %v", got)
	}
}

func TestPhaseOfFollowsHypeman(t *testing.T) {
	cases := map[Status]string{
		StatusActive: "active", StatusIdleCountdown: "idle_countdown",
		StatusReadyForStandby: "ready_for_standby", StatusStandbyRequested: "ready_for_standby",
		StatusDisabled: "ineligible", StatusIneligible: "ineligible", StatusUnsupported: "ineligible",
	}
	for status, want := range cases {
		if got := phaseOf(status, 0); got != want {
			t.Errorf("phaseOf(%s) = %s, want %s", status, got, want)
		}
	}
	if phaseOf(StatusError, 2) != "active" || phaseOf(StatusError, 0) != "idle_countdown" {
		t.Error("an error status is phased by its live flows")
	}
}

func TestSpansUseHypemansNames(t *testing.T) {
	recorder := tracetest.NewSpanRecorder()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder)).Tracer("hypeman/autostandby")
	store := newFakeStore(running("a", "10.0.0.2"))
	store.standbyErr["a"] = errors.New("snapshot failed")
	eng := newFakeEngine()
	c := newController(store, eng, TrackingModeConntrack, ControllerOptions{Tracer: tracer})
	startRun(t, c)
	ka := keyOf(t, c, "a")
	eng.decisions <- binding.Decision{Kind: binding.DecisionStandby, Key: ka}
	eventually(t, "report", func() bool { return len(eng.reportsFor(ka)) == 1 })
	eventually(t, "spans", func() bool { return len(recorder.Ended()) >= 2 })
	names := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range recorder.Ended() {
		names[s.Name()] = s
	}
	if _, ok := names["AutoStandbyStartupResync"]; !ok {
		t.Fatalf("no startup resync span in %v", names)
	}
	attempt, ok := names["AutoStandbyStandbyAttempt"]
	if !ok {
		t.Fatalf("no standby attempt span in %v", names)
	}
	if attempt.Status().Code != codes.Error {
		t.Errorf("failed attempt span status %v", attempt.Status())
	}
	found := false
	for _, kv := range attempt.Attributes() {
		found = found || (kv.Key == "instance_id" && kv.Value.AsString() == "a")
	}
	if !found {
		t.Errorf("attempt span attributes %v lack instance_id=a", attempt.Attributes())
	}
}
