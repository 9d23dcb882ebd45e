//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

package compat

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	autostandby "github.com/libautostandby/libautostandby/go"
	"github.com/libautostandby/libautostandby/go/internal/nettest"
)

// insideEnv marks the test process re-run inside the host namespace.
const insideEnv = "AUTOSTANDBY_COMPAT_INSIDE"

// The provider, built as hypeman's is, watches the conntrack table of the namespace it
// runs in. So the test creates a host and a guest namespace joined by a veth pair,
// starts the guest's echo server, and runs itself again inside the host namespace,
// where the controller keeps the guest awake while a real connection is open and puts
// it into Standby once the connection has been closed for the idle timeout.
func TestHypemanProviderStandsByIdleGuest(t *testing.T) {
	if os.Getenv(insideEnv) != "" {
		providerScenario(t)
		return
	}
	nettest.RequireRoot(t)
	if _, err := exec.LookPath("socat"); err != nil {
		t.Fatalf("this test needs socat (scripts/install-deps.sh installs it): %v", err)
	}
	hostNS, guestNS := nettest.Name("chost", false), nettest.Name("cguest", false)
	nettest.Namespace(t, hostNS)
	nettest.Namespace(t, guestNS)
	nettest.Veth(t, hostNS, guestHostIP+"/24", guestNS, guestIP+"/24")
	nettest.TrackConnections(t, hostNS)
	server := exec.Command("ip", "netns", "exec", guestNS, "socat", "TCP-LISTEN:8080,fork,reuseaddr", "EXEC:cat")
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })

	inner := exec.Command("ip", "netns", "exec", hostNS, os.Args[0],
		"-test.run", "^TestHypemanProviderStandsByIdleGuest$", "-test.count", "1", "-test.timeout", "120s")
	inner.Env = append(os.Environ(), insideEnv+"=1")
	inner.Stdout, inner.Stderr = os.Stdout, os.Stderr
	if err := inner.Run(); err != nil {
		t.Fatalf("the provider scenario inside namespace %s failed: %v", hostNS, err)
	}
}

const (
	guestHostIP = "10.213.8.1"
	guestIP     = "10.213.8.2"
	idleTimeout = 2 * time.Second
)

func providerScenario(t *testing.T) {
	mgr := newManager(ManagedInstance{ID: "vm", Name: "vm", State: "Running", IP: guestIP,
		NetworkEnabled: true, AutoStandby: &autostandby.Policy{Enabled: true, IdleTimeout: idleTimeout.String()}})
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c := ProvideAutoStandbyController(mgr, 16, log)
	if c == nil {
		t.Fatal("ProvideAutoStandbyController returned nil")
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	conn := dialGuest(t)
	status := func() autostandby.StatusSnapshot { return c.Describe(mgr.instance("vm")) }
	// Right after registration the status is already active (resync_pending, before the
	// library's first dump of the address): wait for the connection itself.
	waitFor(t, "the open connection to count", func() bool {
		st := status()
		return st.Status == autostandby.StatusActive && st.ActiveInboundCount >= 1
	})
	time.Sleep(idleTimeout + time.Second)
	if calls := mgr.standbyCalls(); len(calls) != 0 || status().Status != autostandby.StatusActive {
		t.Fatalf("with a connection open past the idle timeout: standbys %v, status %+v", calls, status())
	}

	closed := time.Now()
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the standby", func() bool { return len(mgr.standbyCalls()) > 0 })
	if after := time.Since(closed); after < idleTimeout || after > idleTimeout+3*time.Second {
		t.Fatalf("standby %v after the connection closed; idle timeout %v", after, idleTimeout)
	}
	if calls := mgr.standbyCalls(); len(calls) != 1 || calls[0] != "vm" {
		t.Fatalf("standbys %v, want one for vm", calls)
	}
	waitFor(t, "the standby lifecycle event", func() bool {
		st := status()
		return st.Status == autostandby.StatusIneligible && st.Reason == autostandby.ReasonInstanceNotRunning
	})
}

// dialGuest connects to the guest's echo server and checks that it echoes.
func dialGuest(t *testing.T) net.Conn {
	t.Helper()
	var conn net.Conn
	waitFor(t, "the guest's server", func() bool {
		var err error
		conn, err = net.DialTimeout("tcp", guestIP+":8080", time.Second)
		return err == nil
	})
	if _, err := conn.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("echo: %q, %v", line, err)
	}
	return conn
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// manager is an in-memory instance manager with hypeman's lifecycle behaviour: a
// standby moves the instance to Standby and notifies subscribers.
type manager struct {
	mu        sync.Mutex
	instances map[string]ManagedInstance
	runtimes  map[string]*autostandby.Runtime
	standbys  []string
	subs      []chan LifecycleEvent
}

func newManager(insts ...ManagedInstance) *manager {
	m := &manager{instances: map[string]ManagedInstance{}, runtimes: map[string]*autostandby.Runtime{}}
	for _, inst := range insts {
		m.instances[inst.ID] = inst
	}
	return m
}

func (m *manager) ListInstances(context.Context) ([]ManagedInstance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]ManagedInstance, 0, len(m.instances))
	for _, inst := range m.instances {
		out = append(out, inst)
	}
	return out, nil
}

func (m *manager) StandbyInstance(_ context.Context, id string) error {
	m.mu.Lock()
	inst, ok := m.instances[id]
	if !ok {
		m.mu.Unlock()
		return ErrNotFound
	}
	m.standbys = append(m.standbys, id)
	inst.State = "Standby"
	m.instances[id] = inst
	subs := append([]chan LifecycleEvent(nil), m.subs...)
	m.mu.Unlock()
	for _, ch := range subs {
		ch <- LifecycleEvent{Action: "standby", InstanceID: id, Instance: &inst}
	}
	return nil
}

func (m *manager) GetAutoStandbyRuntime(_ context.Context, id string) (*autostandby.Runtime, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runtimes[id].Clone(), nil
}

func (m *manager) SetAutoStandbyRuntime(_ context.Context, id string, rt *autostandby.Runtime) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.runtimes[id] = rt.Clone()
	return nil
}

func (m *manager) SubscribeLifecycleEvents(string) (<-chan LifecycleEvent, func()) {
	ch := make(chan LifecycleEvent, 256)
	m.mu.Lock()
	m.subs = append(m.subs, ch)
	m.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			for i, s := range m.subs {
				if s == ch {
					m.subs = append(m.subs[:i], m.subs[i+1:]...)
				}
			}
			close(ch)
		})
	}
}

func (m *manager) instance(id string) autostandby.Instance {
	m.mu.Lock()
	inst := m.instances[id]
	m.mu.Unlock()
	return *toInstance(&inst)
}

func (m *manager) standbyCalls() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.standbys...)
}
