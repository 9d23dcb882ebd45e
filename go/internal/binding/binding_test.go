//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

package binding

import (
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

func newManual(t *testing.T) *Controller {
	t.Helper()
	c, err := New(Config{Mode: ModeManual, ManualStart: time.Date(2026, 4, 5, 11, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestABIVersionMatchesHeader(t *testing.T) {
	if got := ABIVersion(); got != abiVersion {
		t.Fatalf("linked library ABI %d, binding %d", got, abiVersion)
	}
	if Version() == "" {
		t.Fatal("empty library version")
	}
}

func TestStatusAndReasonNamesAreTheLibrarys(t *testing.T) {
	if StatusName(3) != "active" || StatusName(7) != "error" || StatusName(8) != "" {
		t.Fatalf("status names: %q %q %q", StatusName(3), StatusName(7), StatusName(8))
	}
	if ReasonName(0) != "unsupported_platform" || ReasonName(14) != "confirm_failed" || ReasonName(16) != "conntrack_events_off" ||
		ReasonName(17) != "restore_failed" || ReasonName(18) != "" {
		t.Fatalf("reason names: %q %q %q %q", ReasonName(0), ReasonName(14), ReasonName(16), ReasonName(17))
	}
}

func TestClosedControllerReportsShutdown(t *testing.T) {
	c := newManual(t)
	c.Close()
	c.Close() // idempotent
	_, err := c.Status(1)
	if CodeOf(err) != ErrShutdown {
		t.Fatalf("status after close: %v", err)
	}
	if !errors.Is(err, &Error{Code: ErrShutdown}) {
		t.Fatalf("errors.Is by code failed for %v", err)
	}
}

func TestUnknownKeyIsNotFound(t *testing.T) {
	c := newManual(t)
	if _, err := c.Status(42); CodeOf(err) != ErrNotFound {
		t.Fatalf("status of unknown key: %v", err)
	}
	if err := c.Unregister(42); CodeOf(err) != ErrNotFound {
		t.Fatalf("unregister of unknown key: %v", err)
	}
	var e *Error
	if _, err := c.Hold(42); !errors.As(err, &e) || e.Message == "" || e.Op != "hold" {
		t.Fatalf("hold of unknown key: %#v", err)
	}
}

func TestPollWithNothingDueReturnsNothing(t *testing.T) {
	c := newManual(t)
	buf := make([]Decision, 8)
	start := time.Now()
	n, err := c.PollDecisions(buf, 20*time.Millisecond)
	if err != nil || n != 0 {
		t.Fatalf("poll: %d, %v", n, err)
	}
	if time.Since(start) < 15*time.Millisecond {
		t.Fatal("poll did not wait for its timeout")
	}
}

func TestManualModeAcceptsTimeAndEvents(t *testing.T) {
	c := newManual(t)
	if err := c.AdvanceClock(time.Second); err != nil {
		t.Fatalf("advance in manual mode: %v", err)
	}
	if err := c.Ingest(nil); err != nil {
		t.Fatalf("empty ingest: %v", err)
	}
}

func TestConcurrentCallsAndClose(t *testing.T) {
	c, err := New(Config{Mode: ModeManual})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			buf := make([]Decision, 4)
			for {
				if _, err := c.PollDecisions(buf, 5*time.Millisecond); CodeOf(err) == ErrShutdown {
					return
				}
			}
		})
	}
	time.Sleep(30 * time.Millisecond)
	c.Close()
	wg.Wait()
}

func TestUnclosedControllerIsFreedByCleanup(t *testing.T) {
	h := func() *handle {
		c, err := New(Config{Mode: ModeManual})
		if err != nil {
			t.Fatal(err)
		}
		return c.h
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		h.mu.RLock()
		freed := h.p == nil
		h.mu.RUnlock()
		if freed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("cleanup never freed an unreachable controller")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestIPConversionRoundTrips(t *testing.T) {
	for _, text := range []string{"10.0.0.2", "fd00::1", "::ffff:10.1.2.3"} {
		a := netip.MustParseAddr(text)
		c := ipToC(a)
		if got := ipFromC(&c); got != a.Unmap() {
			t.Fatalf("%s came back as %s", a, got)
		}
	}
	if z := ipToC(netip.Addr{}); z.family != 0 {
		t.Fatalf("zero address has family %d", z.family)
	}
}

func TestDurationRoundsUpToMilliseconds(t *testing.T) {
	if durationToMillis(time.Nanosecond) != 1 || durationToMillis(0) != 0 || durationToMillis(-time.Second) != 0 ||
		durationToMillis(1500*time.Microsecond) != 2 {
		t.Fatal("durationToMillis")
	}
}

var manualStart = time.Date(2026, 4, 5, 11, 0, 0, 0, time.UTC)

func newManualWith(t *testing.T, cfg Config) *Controller {
	t.Helper()
	cfg.Mode, cfg.ManualStart = ModeManual, manualStart
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func registerGuest(t *testing.T, c *Controller, key uint64, addr string) {
	t.Helper()
	err := c.Register(key, &Instance{
		Addresses:      []netip.Addr{netip.MustParseAddr(addr)},
		Policy:         &Policy{Enabled: true, IdleTimeout: 10 * time.Second, TCP: true},
		Lifecycle:      LifecycleRunning,
		NetworkEnabled: true,
	})
	if err != nil {
		t.Fatalf("register %d: %v", key, err)
	}
}

// actions polls and returns the decisions other than PersistRuntime.
func actions(t *testing.T, c *Controller) []Decision {
	t.Helper()
	buf := make([]Decision, 32)
	n, err := c.PollDecisions(buf, 0)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	var out []Decision
	for _, d := range buf[:n] {
		if d.Kind != DecisionPersistRuntime {
			out = append(out, d)
		}
	}
	return out
}

func established(guest string) FlowEvent {
	client := netip.MustParseAddrPort("192.0.2.10:40000")
	server := netip.AddrPortFrom(netip.MustParseAddr(guest), 8080)
	return FlowEvent{Protocol: 6, OrigSrc: client, OrigDst: server, ReplySrc: server, ReplyDst: client,
		ID: 1, HasTCPState: true, TCPState: 3}
}

func TestConfirmRoundTripInManualMode(t *testing.T) {
	c := newManualWith(t, Config{ConfirmBeforeStandby: true})
	registerGuest(t, c, 1, "10.0.0.2")
	registerGuest(t, c, 2, "10.0.0.3")
	if err := c.AdvanceClock(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := actions(t, c)
	if len(got) != 2 || got[0].Kind != DecisionConfirm || got[0].Key != 1 || got[1].Kind != DecisionConfirm || got[1].Key != 2 {
		t.Fatalf("at the deadline: %+v, want CONFIRM for 1 and 2", got)
	}
	// 1 is idle: its standby follows the answer.
	if err := c.Confirm(1, false, nil); err != nil {
		t.Fatalf("confirm 1: %v", err)
	}
	if got := actions(t, c); len(got) != 1 || got[0].Kind != DecisionStandby || got[0].Key != 1 {
		t.Fatalf("after confirming 1 idle: %+v", got)
	}
	// 2 has a connection the event feed missed: it stays awake.
	if err := c.Confirm(2, false, []FlowEvent{established("10.0.0.3")}); err != nil {
		t.Fatalf("confirm 2: %v", err)
	}
	if got := actions(t, c); len(got) != 0 {
		t.Fatalf("after confirming 2 busy: %+v", got)
	}
	if st, err := c.Status(2); err != nil || StatusName(st.Status) != "active" || st.ActiveInbound != 1 {
		t.Fatalf("status of 2: %+v, %v", st, err)
	}
	// Stale answers change nothing.
	if err := c.Confirm(1, false, nil); CodeOf(err) != ErrNoConfirmPending {
		t.Fatalf("second answer for 1: %v", err)
	}
	if err := c.Confirm(9, true, nil); CodeOf(err) != ErrNotFound {
		t.Fatalf("answer for an unknown key: %v", err)
	}
	if err := c.Confirm(2, true, []FlowEvent{established("10.0.0.3")}); CodeOf(err) != ErrInvalidArgument {
		t.Fatalf("flows with a failed answer: %v", err)
	}
}

func TestFailedConfirmKeepsTheInstanceAwake(t *testing.T) {
	c := newManualWith(t, Config{ConfirmBeforeStandby: true})
	registerGuest(t, c, 1, "10.0.0.2")
	if err := c.AdvanceClock(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := actions(t, c); len(got) != 1 || got[0].Kind != DecisionConfirm {
		t.Fatalf("at the deadline: %+v", got)
	}
	if err := c.Confirm(1, true, nil); err != nil {
		t.Fatalf("failed confirm: %v", err)
	}
	if got := actions(t, c); len(got) != 0 {
		t.Fatalf("after a failed confirm: %+v", got)
	}
	st, err := c.Status(1)
	if err != nil || ReasonName(st.Reason) != "confirm_failed" || !st.NextStandbyAt.Equal(manualStart.Add(20*time.Second)) {
		t.Fatalf("status: %+v, %v", st, err)
	}
}

func TestConfirmIsOffInManualModeByDefault(t *testing.T) {
	c := newManualWith(t, Config{})
	registerGuest(t, c, 1, "10.0.0.2")
	if err := c.AdvanceClock(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := actions(t, c); len(got) != 1 || got[0].Kind != DecisionStandby {
		t.Fatalf("at the deadline: %+v", got)
	}
	if err := c.Confirm(1, false, nil); CodeOf(err) != ErrNoConfirmPending {
		t.Fatalf("unasked answer: %v", err)
	}
}

// failStandby lets 1 fall due, fails its standby and returns when it is due again.
func failStandby(t *testing.T, c *Controller) time.Time {
	t.Helper()
	registerGuest(t, c, 1, "10.0.0.2")
	if err := c.AdvanceClock(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := actions(t, c); len(got) != 1 || got[0].Kind != DecisionStandby {
		t.Fatalf("at the deadline: %+v", got)
	}
	if ok, _, err := c.BeginStandby(1); !ok || err != nil {
		t.Fatalf("begin: %v %v", ok, err)
	}
	if err := c.ReportStandby(1, OutcomeFailed); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	return st.NextStandbyAt
}

func TestStandbyRetryPolicy(t *testing.T) {
	failedAt := manualStart.Add(10 * time.Second)
	if next := failStandby(t, newManualWith(t, Config{})); !next.Equal(failedAt.Add(10 * time.Second)) {
		t.Fatalf("default retry at %v, want a full timeout after %v", next, failedAt)
	}
	if next := failStandby(t, newManualWith(t, Config{StandbyRetry: StandbyRetryBackoff})); !next.Equal(failedAt.Add(time.Second)) {
		t.Fatalf("backoff retry at %v, want 1s after %v", next, failedAt)
	}
	if _, err := New(Config{Mode: ModeManual, StandbyRetry: 9}); CodeOf(err) != ErrInvalidArgument {
		t.Fatalf("unknown retry policy: %v", err)
	}
}

func TestStatsReportAFailedObserver(t *testing.T) {
	c := newManual(t)
	if err := c.SetObserverError("netlink socket closed", true); err != nil {
		t.Fatal(err)
	}
	if s, err := c.Stats(); err != nil || !s.ObserverFailed || s.ObserverErrors != 1 {
		t.Fatalf("stats while failed: %+v, %v", s, err)
	}
	if err := c.SetObserverError("", false); err != nil {
		t.Fatal(err)
	}
	if s, err := c.Stats(); err != nil || s.ObserverFailed {
		t.Fatalf("stats when healthy: %+v, %v", s, err)
	}
}
