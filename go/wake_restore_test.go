//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

package autostandby

import (
	"net/netip"
	"slices"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Only clients in wake_source_cidrs restore the instance; the others are counted by
// reason in hypeman_auto_standby_wakes_suppressed_total, and Describe lists the
// connections that asked.
func TestWakeSourcesGateRestoresAndAreCounted(t *testing.T) {
	inst := guest("a", "10.0.0.2", "1m")
	inst.AutoStandby.WakeOnTraffic = true
	inst.AutoStandby.WakeSourceCIDRs = []string{"198.51.100.0/24"}
	inst.AutoStandby.IgnoreDestinationPorts = []uint16{22}
	inst.State = StateStandby
	reader := sdkmetric.NewManualReader()
	opts := ControllerOptions{Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("t")}
	s := newScenario(t, t1100, opts, inst).run()
	// Hold restores so the instance stays in Standby while it is described.
	s.store.mu.Lock()
	s.store.restoreErr = errFakeRestore
	s.store.mu.Unlock()

	vm := netip.MustParseAddr("10.0.0.2")
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateSynSent)) // 203.0.113.7: not allowed
	allowed := netip.MustParseAddrPort("198.51.100.4:41000")
	s.ingest(TCPEvent(FlowNew, allowed, netip.AddrPortFrom(vm, 22), 2, TCPStateSynSent)) // ignored port
	s.settle()
	if n := s.store.restoreCount(); n != 0 {
		t.Fatalf("restores = %d, want 0", n)
	}
	got := collect(t, reader)
	for reason, want := range map[string]float64{"source_not_allowed": 1, "not_counted_port": 1, "ignored_source": 0} {
		if v := got["hypeman_auto_standby_wakes_suppressed_total{reason="+reason+"}"]; v != want {
			t.Errorf("wakes_suppressed_total{reason=%s} = %v, want %v", reason, v, want)
		}
	}

	s.ingest(TCPEvent(FlowNew, allowed, netip.AddrPortFrom(vm, 8080), 3, TCPStateSynSent))
	eventually(t, "restore", func() bool { return s.store.restoreCount() == 1 })
	eventually(t, "restore failure reported", func() bool { return s.describe("a").Reason == ReasonRestoreFailed })
	snap := s.describe("a")
	if len(snap.WakeRequestedBy) != 1 || snap.WakeRequestedBy[0].Client != allowed {
		t.Fatalf("wake_requested_by = %+v, want the allowed client's connection", snap.WakeRequestedBy)
	}
	if v := collect(t, reader)["hypeman_auto_standby_wake_attempts_total{status=error}"]; v != 1 {
		t.Fatalf("wake attempts with status error = %v, want 1", v)
	}
}

// With MaxConcurrentRestores 1, a second instance's restore waits for the first: the
// queue shows in hypeman_auto_standby_restore_queued.
func TestRestoresBeyondTheLimitWaitInTheQueue(t *testing.T) {
	a := guest("a", "10.0.0.2", "1m")
	b := guest("b", "10.0.0.3", "1m")
	for _, inst := range []*Instance{&a, &b} {
		inst.AutoStandby.WakeOnTraffic = true
		inst.State = StateStandby
	}
	reader := sdkmetric.NewManualReader()
	opts := ControllerOptions{MaxConcurrentRestores: 1,
		Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("t")}
	s := newScenario(t, t1100, opts, a, b).run()
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	s.store.mu.Lock()
	s.store.restoreBlock = release
	s.store.mu.Unlock()

	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateSynSent))
	s.ingest(flow(FlowNew, "10.0.0.3", 2, TCPStateSynSent))
	eventually(t, "first restore", func() bool { return s.store.restoreCount() == 1 })
	s.settle()
	if n := s.store.restoreCount(); n != 1 {
		t.Fatalf("restores while the slot is taken = %d, want 1", n)
	}
	got := collect(t, reader)
	if got["hypeman_auto_standby_restore_queued{}"] != 1 || got["hypeman_auto_standby_restore_in_flight{}"] != 1 {
		t.Fatalf("queued %v, in flight %v; want 1 and 1", got["hypeman_auto_standby_restore_queued{}"],
			got["hypeman_auto_standby_restore_in_flight{}"])
	}
	close(release)
	eventually(t, "second restore", func() bool { return s.store.restoreCount() == 2 })
	s.store.mu.Lock()
	order := slices.Clone(s.store.restores)
	s.store.mu.Unlock()
	if !slices.Equal(order, []string{"a", "b"}) {
		t.Fatalf("restore order = %v, want [a b]", order)
	}
	eventually(t, "queue empty", func() bool {
		got := collect(t, reader)
		return got["hypeman_auto_standby_restore_queued{}"] == 0
	})
}
