//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

// Needs root: it creates network namespaces and runs the library in kernel mode.

package autostandby

import (
	"errors"
	"io"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/libautostandby/libautostandby/go/internal/nettest"
)

// A real TCP connection, tracked by the kernel in a namespace this test creates and
// observed by the library in kernel mode, keeps the instance awake past its idle
// timeout; once it closes, StandbyInstance is called exactly once, within the timeout
// plus two seconds, and the persisted runtime tells a consistent story.
func TestKernelConntrackKeepsInstanceAwakeUntilConnectionCloses(t *testing.T) {
	nettest.RequireRoot(t)
	for _, tool := range []string{"socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s (scripts/install-deps.sh installs it): %v", tool, err)
		}
	}
	hostNS, guestNS := nettest.Name("host", false), nettest.Name("guest", false)
	hostPath := nettest.Namespace(t, hostNS)
	nettest.Namespace(t, guestNS)
	nettest.Veth(t, hostNS, "10.213.7.1/24", guestNS, "10.213.7.2/24")
	nettest.TrackConnections(t, hostNS)

	// The "guest": an echo server.
	server := exec.Command("ip", "netns", "exec", guestNS, "socat", "TCP-LISTEN:8080,fork,reuseaddr", "EXEC:cat")
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })

	const timeout = 2 * time.Second
	inst := guest("vm", "10.213.7.2", timeout.String())
	store := newFakeStore(inst)
	store.lifecycle = true
	c, err := New(store, NewConntrackSource(SourceOptions{NetnsPath: hostPath, EnableConntrackEvents: true}), ControllerOptions{})
	if err != nil {
		t.Fatalf("NewController (kernel mode): %v", err)
	}
	t.Cleanup(c.Close)

	// The client connects from the host namespace (as hypeman's host dials its guest).
	var client *exec.Cmd
	var stdin io.WriteCloser
	eventually(t, "server listening", func() bool {
		return exec.Command("ip", "netns", "exec", hostNS, "socat", "-u", "OPEN:/dev/null", "TCP:10.213.7.2:8080").Run() == nil
	})
	client = exec.Command("ip", "netns", "exec", hostNS, "socat", "-", "TCP:10.213.7.2:8080")
	if stdin, err = client.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Process.Kill(); _ = client.Wait() })
	if _, err := stdin.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}

	connectedAt := time.Now()
	startRun(t, c)
	keyOf(t, c, "vm")
	eventually(t, "the connection counted as active", func() bool {
		snap := c.Describe(store.instance("vm"))
		return snap.Status == StatusActive && snap.ActiveInboundCount >= 1
	})
	snap := c.Describe(store.instance("vm"))
	if len(snap.KeptAwakeBy) == 0 || snap.KeptAwakeBy[0].Destination != netip.MustParseAddrPort("10.213.7.2:8080") {
		t.Fatalf("explanation %+v", snap.KeptAwakeBy)
	}

	time.Sleep(2 * timeout)
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v while a connection was open", got)
	}
	if snap := c.Describe(store.instance("vm")); snap.Status != StatusActive {
		t.Fatalf("open connection, status %+v", snap)
	}

	_ = stdin.Close()
	_ = client.Wait()
	closedAt := time.Now()
	var standbyAt time.Time
	eventually(t, "standby after close", func() bool {
		if len(store.standbys()) > 0 {
			standbyAt = time.Now()
			return true
		}
		return false
	})
	t.Logf("standby %v after the connection closed (idle timeout %v)", standbyAt.Sub(closedAt).Round(time.Millisecond), timeout)
	if late := standbyAt.Sub(closedAt); late > timeout+2*time.Second {
		t.Fatalf("standby %v after the connection closed, want within %v", late, timeout+2*time.Second)
	}
	time.Sleep(time.Second)
	if got := store.standbys(); len(got) != 1 {
		t.Fatalf("standby calls %v, want exactly one", got)
	}

	// The runtime writes: activity first, then an idle countdown starting after the
	// connection opened and no later than the standby, then deletion on success.
	writes := store.runtimesFor("vm")
	for i, w := range writes {
		if w == nil {
			t.Logf("runtime write %d: delete", i)
		} else {
			t.Logf("runtime write %d: idle_since=%v last_inbound_activity_at=%v", i, w.IdleSince, w.LastInboundActivityAt)
		}
	}
	if len(writes) < 2 || writes[len(writes)-1] != nil {
		t.Fatalf("runtime writes %+v: want the countdown, then a delete", writes)
	}
	var idle *Runtime
	for _, w := range writes {
		if w != nil && w.IdleSince != nil {
			idle = w
		}
	}
	if idle == nil {
		t.Fatalf("no idle countdown persisted: %+v", writes)
	}
	if idle.IdleSince.Before(connectedAt.Add(-time.Second)) || idle.IdleSince.After(standbyAt) {
		t.Fatalf("idle_since %v outside [%v, %v]", idle.IdleSince, connectedAt, standbyAt)
	}
	if idle.LastInboundActivityAt == nil || idle.LastInboundActivityAt.After(*idle.IdleSince) {
		t.Fatalf("last_inbound_activity_at %v after idle_since %v", idle.LastInboundActivityAt, idle.IdleSince)
	}
}

// Beyond hypeman: a connection attempt to an instance in Standby whose policy asks for
// wake on traffic reaches RestoreInstance, from a real conntrack event.
func TestKernelConntrackWakesInstanceInStandby(t *testing.T) {
	store, _, hostNS := standbyGuestInKernel(t, "w", "10.213.8")

	// Nothing listens in the "guest" (it is in Standby): the attempt is refused, but
	// its SYN has already created the conntrack entry that wakes the instance.
	dialFrom(hostNS, "10.213.8.2")
	eventually(t, "RestoreInstance", func() bool {
		store.mu.Lock()
		defer store.mu.Unlock()
		return len(store.restores) == 1 && store.restores[0] == "vm"
	})
	if got := store.standbys(); len(got) != 0 {
		t.Fatalf("standby %v for an instance already in Standby", got)
	}
}

// A restore that fails is reported, shows in the status, and is tried again by the
// next connection after the backoff, with real conntrack events.
func TestKernelConntrackRetriesAFailedRestore(t *testing.T) {
	store, c, hostNS := standbyGuestInKernel(t, "r", "10.213.9")
	store.mu.Lock()
	store.restoreErr = errors.New("restore failed")
	store.mu.Unlock()

	dialFrom(hostNS, "10.213.9.2")
	eventually(t, "the failed restore", func() bool { return store.restoreCount() == 1 })
	eventually(t, "restore_failed", func() bool {
		st := c.Describe(store.instance("vm"))
		return st.Status == StatusError && st.Reason == ReasonRestoreFailed
	})
	store.mu.Lock()
	store.restoreErr = nil
	store.mu.Unlock()
	time.Sleep(1100 * time.Millisecond) // the first backoff
	dialFrom(hostNS, "10.213.9.2")
	eventually(t, "the second restore", func() bool { return store.restoreCount() == 2 })
	eventually(t, "restore_failed cleared", func() bool {
		return c.Describe(store.instance("vm")).Reason == ReasonInstanceNotRunning
	})
}

// standbyGuestInKernel runs a kernel-mode controller over a host namespace joined to a
// "guest" namespace at <net>.2, whose instance is in Standby with wake_on_traffic. It
// returns the store, the controller and the host namespace's name.
func standbyGuestInKernel(t *testing.T, tag, net string) (*fakeStore, *Controller, string) {
	t.Helper()
	nettest.RequireRoot(t)
	if _, err := exec.LookPath("socat"); err != nil {
		t.Fatalf("this test needs socat (scripts/install-deps.sh installs it): %v", err)
	}
	hostNS, guestNS := nettest.Name(tag+"host", false), nettest.Name(tag+"guest", false)
	hostPath := nettest.Namespace(t, hostNS)
	nettest.Namespace(t, guestNS)
	nettest.Veth(t, hostNS, net+".1/24", guestNS, net+".2/24")
	nettest.TrackConnections(t, hostNS)

	inst := guest("vm", net+".2", "2s")
	inst.State = StateStandby
	inst.AutoStandby.WakeOnTraffic = true
	store := newFakeStore(inst)
	c, err := New(store, NewConntrackSource(SourceOptions{NetnsPath: hostPath, EnableConntrackEvents: true}), ControllerOptions{})
	if err != nil {
		t.Fatalf("NewController (kernel mode): %v", err)
	}
	t.Cleanup(c.Close)
	startRun(t, c)
	keyOf(t, c, "vm")
	time.Sleep(200 * time.Millisecond) // let the startup resync install the address filter
	return store, c, hostNS
}

// dialFrom attempts a TCP connection from namespace ns to addr:8080 (refused when
// nothing listens; its SYN is what conntrack sees).
func dialFrom(ns, addr string) {
	_ = exec.Command("ip", "netns", "exec", ns, "socat", "-u", "OPEN:/dev/null", "TCP:"+addr+":8080,connect-timeout=1").Run()
}
