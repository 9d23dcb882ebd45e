//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	autostandby "github.com/libautostandby/libautostandby/go"
	"github.com/libautostandby/libautostandby/tests/e2e/qemu"
	"github.com/libautostandby/libautostandby/tests/e2e/qemustore"
)

const (
	instanceID  = "e2e-vm"
	idleTimeout = 3 * time.Second
	// standbySlack is how long after the idle timeout a standby may take to happen.
	standbySlack = 5 * time.Second
)

var (
	harness qemu.Harness
	guest   *qemu.VM
)

// TestMain boots the guest once; each test starts from a running guest, restoring it
// when the previous test left it in Standby.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	harness, err = qemu.HarnessFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	guest = qemu.NewVM(harness.Config("guest"))
	defer guest.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := guest.Boot(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: boot:", err)
		return 1
	}
	if err := guest.WaitBooted(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if err := qemu.WaitHTTP(ctx, harness.GuestHTTP()); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the guest did not come up:", err)
		return 1
	}
	fmt.Printf("e2e: guest booted and serving HTTP in %v (library build %s)\n", time.Since(start).Round(time.Millisecond), qemu.LibraryBuild)
	return m.Run()
}

// fixture is one controller in kernel mode over a store holding the guest.
type fixture struct {
	t       *testing.T
	store   *qemustore.Store
	records chan qemustore.Record
	inst    autostandby.Instance
	ctrl    *autostandby.Controller
	stop    func()
}

func newFixture(t *testing.T, policy autostandby.Policy) *fixture {
	t.Helper()
	ensureRunning(t)
	f := &fixture{t: t, records: make(chan qemustore.Record, 64)}
	f.store = qemustore.New(f.records)
	f.inst = autostandby.Instance{
		ID: instanceID, Name: "e2e", NetworkEnabled: true, IP: harness.GuestIP,
		ExtraIPs: []string{harness.GuestIP6}, AutoStandby: &policy,
	}
	f.store.Add(f.inst, guest)
	f.start()
	// No flow may be live at the start: a leftover one would keep the guest awake.
	f.waitStatus(5*time.Second, func(s autostandby.StatusSnapshot) bool {
		return s.Status == autostandby.StatusIdleCountdown && s.ActiveInboundCount == 0
	})
	t.Cleanup(f.shutdown)
	return f
}

// start runs a new controller over the fixture's store.
func (f *fixture) start() {
	f.t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{f.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctrl, err := autostandby.New(f.store,
		autostandby.NewConntrackSource(autostandby.SourceOptions{
			EnableConntrackEvents: true,
			// AS_E2E_NO_HOLD=1 measures wakes without the hold, for comparison.
			HoldPacketsInStandby: os.Getenv("AS_E2E_NO_HOLD") != "1",
			// Restores took up to 1.5 s on a loaded machine; the default covers 3 s.
			HoldResolveWindow: 10 * time.Second,
		}),
		autostandby.ControllerOptions{Log: log, LogDrainInterval: 100 * time.Millisecond})
	if err != nil {
		f.t.Fatalf("NewController (kernel mode): %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	f.ctrl = ctrl
	f.stop = func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				f.t.Errorf("controller Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			f.t.Errorf("controller Run did not return within 30 s of cancellation")
		}
		ctrl.Close()
	}
	// Wait until the controller has registered the instance.
	f.waitStatus(10*time.Second, func(s autostandby.StatusSnapshot) bool {
		return s.Status != autostandby.StatusUnsupported && s.TrackingMode != ""
	})
}

func (f *fixture) shutdown() {
	if f.stop != nil {
		f.stop()
		f.stop = nil
	}
}

func (f *fixture) describe() autostandby.StatusSnapshot {
	inst, ok := f.store.Instance(instanceID)
	if !ok {
		f.t.Fatalf("instance %s vanished from the store", instanceID)
	}
	return f.ctrl.Describe(inst)
}

func (f *fixture) waitStatus(within time.Duration, ok func(autostandby.StatusSnapshot) bool) autostandby.StatusSnapshot {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := f.describe()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("status not reached within %v; last: %s/%s, %d active flows%s", within, s.Status, s.Reason, s.ActiveInboundCount, flows(s))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitRecord waits for the store to record an operation of kind.
func (f *fixture) waitRecord(kind qemustore.OpKind, within time.Duration) qemustore.Record {
	f.t.Helper()
	timeout := time.After(within)
	for {
		select {
		case r := <-f.records:
			if r.Kind != kind {
				continue
			}
			if r.Err != nil {
				f.t.Fatalf("%s failed: %v", kind, r.Err)
			}
			return r
		case <-timeout:
			f.t.Fatalf("no %s within %v (guest %s, status %+v)", kind, within, guest.State(), f.describe())
		}
	}
}

// assertRunningFor checks the guest stays Running, with its flow counted, for d.
func (f *fixture) assertRunningFor(d time.Duration) {
	f.t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if st := guest.State(); st != qemu.StateRunning {
			f.t.Fatalf("guest is %s while a connection is open", st)
		}
		select {
		case r := <-f.records:
			if r.Kind == qemustore.OpStandbyStarted || r.Kind == qemustore.OpStandby {
				f.t.Fatalf("standby while a connection is open: %+v", r)
			}
		default:
		}
		if s := f.describe(); s.Status != autostandby.StatusActive || s.ActiveInboundCount < 1 {
			f.t.Fatalf("status %s/%s with %d active flows while a connection is open%s", s.Status, s.Reason, s.ActiveInboundCount, flows(s))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// assertStandbyAfterClose waits for the standby that must follow the last close.
func (f *fixture) assertStandbyAfterClose(closedAt time.Time) qemustore.Record {
	f.t.Helper()
	r := f.waitRecord(qemustore.OpStandby, idleTimeout+standbySlack+30*time.Second)
	if took := r.At.Sub(closedAt); took > idleTimeout+standbySlack {
		f.t.Fatalf("standby came %v after the connection closed, want within %v", took.Round(time.Millisecond), idleTimeout+standbySlack)
	}
	if st, err := os.Stat(guest.Config().SnapshotPath()); err != nil || st.Size() == 0 {
		f.t.Fatalf("snapshot file after standby: %v", err)
	}
	if guest.State() != qemu.StateStandby {
		f.t.Fatalf("guest is %s after the standby", guest.State())
	}
	f.t.Logf("standby %v after close: took %v, snapshot %.1f MiB",
		r.At.Sub(closedAt).Round(time.Millisecond), r.Duration.Round(time.Millisecond), float64(r.SnapshotSize)/(1<<20))
	return r
}

// ensureRunning restores the guest if a previous test left it in Standby.
func ensureRunning(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switch guest.State() {
	case qemu.StateRunning:
	case qemu.StateStandby:
		if _, err := guest.Restore(ctx); err != nil {
			t.Fatalf("restore: %v", err)
		}
	default:
		t.Fatalf("the guest is %s; an earlier test broke it", guest.State())
	}
	if err := qemu.WaitHTTP(ctx, harness.GuestHTTP()); err != nil {
		t.Fatal(err)
	}
}

// dial opens a TCP connection to the guest's HTTP port.
func dial(t *testing.T, timeout time.Duration) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", harness.GuestHTTP(), timeout)
	if err != nil {
		t.Fatalf("connect to the guest: %v", err)
	}
	return conn
}

// get sends a request on conn, checks the answer and closes it.
func get(t *testing.T, conn net.Conn) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := qemu.HTTPGet(conn); err != nil {
		t.Fatalf("HTTP on the open connection: %v", err)
	}
	conn.Close()
}

func policy(wake bool) autostandby.Policy {
	return autostandby.Policy{Enabled: true, IdleTimeout: idleTimeout.String(), WakeOnTraffic: wake}
}

// Test 1: an open connection keeps the guest running; after it closes the guest goes
// into Standby within the idle timeout plus slack, and answers again after a restore.
func TestIdleConnectionKeepsRunningThenStandby(t *testing.T) {
	f := newFixture(t, policy(false))
	conn := dial(t, 5*time.Second)
	f.waitStatus(5*time.Second, func(s autostandby.StatusSnapshot) bool { return s.ActiveInboundCount >= 1 })
	f.assertRunningFor(8 * time.Second)
	get(t, conn) // the connection is still alive after idling
	closed := time.Now()
	f.assertStandbyAfterClose(closed)

	f.shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.store.RestoreInstance(ctx, instanceID); err != nil {
		t.Fatal(err)
	}
	r := f.waitRecord(qemustore.OpRestore, 5*time.Second)
	if err := qemu.WaitHTTP(ctx, harness.GuestHTTP()); err != nil {
		t.Fatalf("after restore: %v", err)
	}
	t.Logf("restore took %v; the guest answers HTTP again", r.Duration.Round(time.Millisecond))
}

// nft runs an nft command in the test's namespace.
func nft(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Test 2: a connection whose SYN-ACKs are dropped stays in SYN_SENT and keeps the guest
// running past the idle timeout; once they pass, it completes, closes, and the guest
// goes into Standby.
func TestHalfOpenConnectionKeepsRunning(t *testing.T) {
	f := newFixture(t, policy(false))
	// Before conntrack (priority -300 < -200), so conntrack never sees the SYN-ACK.
	nft(t, "add", "table", "inet", "as_vm_halfopen")
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", "as_vm_halfopen").Run() })
	nft(t, "add", "chain", "inet", "as_vm_halfopen", "pre", "{ type filter hook prerouting priority -300; policy accept; }")
	nft(t, "add", "rule", "inet", "as_vm_halfopen", "pre", "ip", "saddr", harness.GuestIP,
		"tcp", "flags", "&", "(syn|ack)", "==", "syn|ack", "drop")

	type dialed struct {
		conn net.Conn
		err  error
		at   time.Time
	}
	result := make(chan dialed, 1)
	go func() {
		c, err := net.DialTimeout("tcp", harness.GuestHTTP(), 60*time.Second)
		result <- dialed{c, err, time.Now()}
	}()
	s := f.waitStatus(5*time.Second, func(s autostandby.StatusSnapshot) bool { return s.ActiveInboundCount >= 1 })
	if len(s.KeptAwakeBy) != 1 || s.KeptAwakeBy[0].TCPState != "SYN_SENT" {
		t.Fatalf("want the guest kept awake by one SYN_SENT flow, got%s", flows(s))
	}
	t.Logf("kept awake by %s", strings.TrimPrefix(flows(s), "; "))
	f.assertRunningFor(idleTimeout + 3*time.Second)
	select {
	case d := <-result:
		t.Fatalf("the connection completed while SYN-ACKs were dropped: %v", d.err)
	default:
	}

	released := time.Now()
	nft(t, "delete", "table", "inet", "as_vm_halfopen")
	var d dialed
	select {
	case d = <-result:
	case <-time.After(20 * time.Second):
		t.Fatal("the connection did not complete after the SYN-ACKs were let through")
	}
	if d.err != nil {
		t.Fatalf("connect after the rule was removed: %v", d.err)
	}
	t.Logf("connection completed %v after the rule was removed", d.at.Sub(released).Round(time.Millisecond))
	get(t, d.conn)
	f.assertStandbyAfterClose(time.Now())
}

// wakes is how many wakes TestWakeOnTraffic makes, alternating IPv4 and IPv6
// (AS_E2E_WAKES, default 10).
func wakes(t *testing.T) int {
	if v := os.Getenv("AS_E2E_WAKES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("AS_E2E_WAKES=%q: want a positive number", v)
		}
		return n
	}
	return 10
}

// synRetransmissions is the kernel's count of segments the connection resent
// (tcpi_total_retrans): on a fresh connection that has sent one request, its SYNs.
func synRetransmissions(t *testing.T, conn net.Conn) uint32 {
	t.Helper()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info syscall.TCPInfo
	var errno syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(info))
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	}); err != nil || errno != 0 {
		t.Fatalf("TCP_INFO: %v %v", err, errno)
	}
	return info.Total_retrans
}

// neighMonitor records when the host learns a link-layer address (`ip monitor neigh`
// in the test's namespace): for a held SYN, the moment it leaves the host's queue.
type neighMonitor struct {
	mu     sync.Mutex
	learnt []neighLearnt
}

type neighLearnt struct {
	at   time.Time
	addr string
}

func startNeighMonitor(t *testing.T) *neighMonitor {
	t.Helper()
	m := &neighMonitor{}
	cmd := exec.Command("ip", "monitor", "neigh")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("ip monitor neigh: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "Deleted") || !strings.Contains(line, " lladdr ") {
				continue
			}
			m.mu.Lock()
			m.learnt = append(m.learnt, neighLearnt{time.Now(), strings.Fields(line)[0]})
			m.mu.Unlock()
		}
	}()
	return m
}

// learntAfter is when addr's link-layer address was first learnt after since.
func (m *neighMonitor) learntAfter(addr string, since time.Time) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.learnt {
		if l.addr == addr && l.at.After(since) {
			return l.at, true
		}
	}
	return time.Time{}, false
}

// Test 3: with the guest in Standby and wake_on_traffic on, a client's connection wakes
// it: the library emits Wake, the store restores the guest, and the connection is
// served. With the packet hold (on in these tests), the client's first SYN waits on the
// host while the guest is restored instead of being lost, in every wake, over IPv4 and
// IPv6 in turn: the client never resends it, and the connection is established within
// a second of the restore's end (a lost SYN is resent one second after it was sent).
//
// The target of first SYN to connected within the restore time plus 100 ms is printed
// for each wake and asserted only with AS_E2E_STRICT_WAKE=1: what follows the restore
// is the guest's own work under TCG (announcing its address, answering the SYN), which
// took 19-89 ms here and up to 235 ms on a loaded machine.
func TestWakeOnTraffic(t *testing.T) {
	const target, bound = 100 * time.Millisecond, time.Second
	hold := os.Getenv("AS_E2E_NO_HOLD") != "1"
	strict := os.Getenv("AS_E2E_STRICT_WAKE") == "1"
	within := 0
	f := newFixture(t, policy(true))
	neigh := startNeighMonitor(t)
	n := wakes(t)
	var worst, worstConn time.Duration
	var resent uint32
	for i := 1; i <= n; i++ {
		// No connection: the guest goes into Standby one idle timeout after registration,
		// or after the previous wake's connection closed.
		f.waitRecord(qemustore.OpStandby, idleTimeout+standbySlack+30*time.Second)
		f.waitStatus(5*time.Second, func(s autostandby.StatusSnapshot) bool { return s.Reason == autostandby.ReasonInstanceNotRunning })

		family, ip := "IPv4", harness.GuestIP
		if i%2 == 0 {
			family, ip = "IPv6", harness.GuestIP6
		}
		addr := net.JoinHostPort(ip, "80")
		firstSYN := time.Now()
		conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
		connected := time.Now()
		if err != nil {
			t.Fatalf("wake %d (%s): connect to the guest in Standby: %v", i, family, err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			t.Fatalf("wake %d (%s): request: %v", i, family, err)
		}
		var first [1]byte
		if _, err := io.ReadFull(conn, first[:]); err != nil {
			t.Fatalf("wake %d (%s): no answer after the wake: %v", i, family, err)
		}
		firstByte := time.Now()
		rest, err := io.ReadAll(conn)
		if err != nil || !strings.HasPrefix(string(first[:])+string(rest), "HTTP/1.") {
			t.Fatalf("wake %d (%s): answer %q, %v", i, family, string(first[:])+string(rest), err)
		}
		retrans := synRetransmissions(t, conn)
		conn.Close()
		wake := f.waitRecord(qemustore.OpRestoreStarted, time.Second)
		restored := f.waitRecord(qemustore.OpRestore, time.Second)
		toByte := firstByte.Sub(firstSYN)
		resolved := "-"
		if at, ok := neigh.learntAfter(ip, firstSYN); ok {
			resolved = fmt.Sprintf("%v (restore end %+v)", at.Sub(firstSYN).Round(time.Millisecond), at.Sub(restored.At).Round(time.Millisecond))
		}
		fmt.Printf("e2e: wake %2d (%s): first SYN -> Wake %v, restore %v (ends %v), address resolved %s, connected %v, first byte %v, SYN retransmissions %d\n",
			i, family, wake.At.Sub(firstSYN).Round(10*time.Microsecond), restored.Duration.Round(time.Millisecond),
			restored.At.Sub(firstSYN).Round(time.Millisecond), resolved,
			connected.Sub(firstSYN).Round(time.Millisecond), toByte.Round(time.Millisecond), retrans)
		toConn := connected.Sub(firstSYN)
		if over := toConn - restored.Duration; over > worstConn {
			worstConn = over
		}
		if over := toByte - restored.Duration; over > worst {
			worst = over
		}
		resent += retrans
		if !hold {
			continue
		}
		if toConn <= restored.Duration+target {
			within++
		} else if strict {
			t.Errorf("wake %d (%s): first SYN -> connected %v, more than the restore (%v) + %v",
				i, family, toConn.Round(time.Millisecond), restored.Duration.Round(time.Millisecond), target)
		}
		if toConn > restored.Duration+bound {
			t.Errorf("wake %d (%s): first SYN -> connected %v, more than the restore (%v) + %v: the SYN was not held",
				i, family, toConn.Round(time.Millisecond), restored.Duration.Round(time.Millisecond), bound)
		}
		if retrans != 0 {
			t.Errorf("wake %d (%s): the client resent its SYN %d times", i, family, retrans)
		}
	}
	fmt.Printf("e2e: %d wakes (hold %v): connected at most %v and first byte at most %v after the restore time; %d of %d connected within restore + %v; %d SYN retransmissions\n",
		n, hold, worstConn.Round(time.Millisecond), worst.Round(time.Millisecond), within, n, target, resent)
}

// Test 4: a controller restarted while a connection is open seeds the flow from the
// conntrack dump, keeps the guest running, and stands it by after the connection closes.
func TestRestartWithOpenConnection(t *testing.T) {
	f := newFixture(t, policy(false))
	conn := dial(t, 5*time.Second)
	f.waitStatus(5*time.Second, func(s autostandby.StatusSnapshot) bool { return s.ActiveInboundCount >= 1 })

	f.shutdown()
	f.start()
	s := f.waitStatus(5*time.Second, func(s autostandby.StatusSnapshot) bool { return s.ActiveInboundCount >= 1 })
	if s.Status != autostandby.StatusActive {
		t.Fatalf("after the restart: %s/%s, want active", s.Status, s.Reason)
	}
	f.assertRunningFor(idleTimeout + 3*time.Second)
	get(t, conn)
	f.assertStandbyAfterClose(time.Now())
}

// Test 5: UDP and IPv6 count when the policy says so. An exchange with the guest's UDP
// echo service over IPv6 keeps it running past the idle timeout. Once the flow's
// conntrack entry has expired, the library notices within a few seconds (conntrack
// itself reports the end only when its garbage collector gets there, which took up to a
// minute here), and the guest goes into Standby.
func TestUDPOverIPv6KeepsRunning(t *testing.T) {
	// Short UDP timeouts in this namespace: the entry expires soon after the last datagram.
	const udpTimeout = 2 * time.Second
	sysctl(t, "net/netfilter/nf_conntrack_udp_timeout", "2")
	sysctl(t, "net/netfilter/nf_conntrack_udp_timeout_stream", "2")
	p := policy(false)
	p.Protocols = []string{"tcp", "udp"}
	f := newFixture(t, p)

	conn, err := net.Dial("udp", harness.GuestUDPEcho6())
	if err != nil {
		t.Fatalf("UDP socket to the guest: %v", err)
	}
	defer conn.Close()
	exchange := func(i int) {
		t.Helper()
		msg := fmt.Sprintf("ping %d", i)
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatalf("UDP send: %v", err)
		}
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("UDP echo from the guest: %q, %v", buf[:n], err)
		}
	}
	exchange(0)
	s := f.waitStatus(5*time.Second, func(s autostandby.StatusSnapshot) bool { return s.ActiveInboundCount >= 1 })
	guest6 := netip.MustParseAddr(harness.GuestIP6)
	if len(s.KeptAwakeBy) != 1 || s.KeptAwakeBy[0].Protocol != "udp" || s.KeptAwakeBy[0].Destination.Addr() != guest6 {
		t.Fatalf("want the guest kept awake by one UDP flow to %s, got%s", guest6, flows(s))
	}
	t.Logf("kept awake by %s", strings.TrimPrefix(flows(s), "; "))
	for i := 1; time.Since(s.KeptAwakeBy[0].FirstSeen) < idleTimeout+3*time.Second; i++ {
		f.assertRunningFor(500 * time.Millisecond)
		exchange(i)
	}
	last := time.Now()
	conn.Close()

	// The library checks the flow once its reported timeout has passed (plus a second for
	// rounding and a grid step of at most a quarter of the timeout, so that checks can
	// share a dump): about 3.3 s at worst here. The check's dump no longer lists the
	// expired entry.
	gone := time.Now()
	f.waitStatus(udpTimeout+3*time.Second, func(s autostandby.StatusSnapshot) bool {
		gone = time.Now()
		return s.ActiveInboundCount == 0
	})
	t.Logf("the flow's end was noticed %v after its last datagram", gone.Sub(last).Round(time.Millisecond))
	f.assertStandbyAfterClose(gone)
}

// sysctl sets /proc/sys/KEY in the test's namespace and restores it after the test.
func sysctl(t *testing.T, key, value string) {
	t.Helper()
	path := "/proc/sys/" + key
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Fatalf("set %s: %v", path, err)
	}
	t.Cleanup(func() { os.WriteFile(path, old, 0o644) })
}

// flows lists the flows keeping an instance awake, for failure messages.
func flows(s autostandby.StatusSnapshot) string {
	var b strings.Builder
	for _, fl := range s.KeptAwakeBy {
		fmt.Fprintf(&b, "; %s %s -> %s %s", fl.Protocol, fl.Client, fl.Destination, fl.TCPState)
	}
	return b.String()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
