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
	if ReasonName(0) != "unsupported_platform" || ReasonName(13) != "resync_pending" || ReasonName(14) != "" {
		t.Fatalf("reason names: %q %q %q", ReasonName(0), ReasonName(13), ReasonName(14))
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
