// Command demo boots a real guest, lets the Go controller (kernel mode, real conntrack)
// put it into Standby when its connection closes and wake it when a client connects
// again, narrating once a second. Run it through `make demo`, which sets up the network
// namespace it runs in (tests/e2e/vm.sh).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	autostandby "github.com/libautostandby/libautostandby/go"
	"github.com/libautostandby/libautostandby/tests/e2e/qemu"
	"github.com/libautostandby/libautostandby/tests/e2e/qemustore"
)

const (
	instanceID  = "demo-vm"
	idleTimeout = 5 * time.Second
	holdOpen    = 6 * time.Second
)

func main() {
	timelinePath := flag.String("timeline", "", "write the run's timeline to this SVG file (and a PNG beside it when rsvg-convert is installed)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *timelinePath); err != nil {
		fmt.Fprintln(os.Stderr, "demo: error:", err)
		os.Exit(1)
	}
}

// demo holds what the narrator reads.
type demo struct {
	start   time.Time
	store   *qemustore.Store
	ctrl    *autostandby.Controller
	records chan qemustore.Record
	guest   *qemu.VM
	h       qemu.Harness
	tl      *timeline
}

func (d *demo) say(format string, args ...any) {
	fmt.Printf("[%5.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// narrate samples the controller's view ten times a second for the timeline and prints
// one status line a second, until ctx ends.
func (d *demo) narrate(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			inst, _ := d.store.Instance(instanceID)
			s := d.ctrl.Describe(inst)
			d.tl.observe(now, s.ActiveInboundCount, s.CountdownRemaining)
			if n%10 != 0 {
				continue
			}
			countdown := "-"
			if s.CountdownRemaining != nil {
				countdown = s.CountdownRemaining.Round(100 * time.Millisecond).String()
			}
			by := ""
			if len(s.KeptAwakeBy) > 0 {
				fl := s.KeptAwakeBy[0]
				by = fmt.Sprintf(" (%s %s -> %s %s)", fl.Protocol, fl.Client, fl.Destination, fl.TCPState)
			}
			d.say("  state=%-8s status=%-17s reason=%-27s flows=%d%s countdown=%s",
				inst.State, s.Status, s.Reason, s.ActiveInboundCount, by, countdown)
		}
	}
}

// wait waits for a store record of kind, or ctx.
func (d *demo) wait(ctx context.Context, kind qemustore.OpKind, within time.Duration) (qemustore.Record, error) {
	timeout := time.After(within)
	for {
		select {
		case r := <-d.records:
			d.tl.record(r)
			if r.Kind != kind {
				continue
			}
			return r, r.Err
		case <-timeout:
			return qemustore.Record{}, fmt.Errorf("no %s within %v", kind, within)
		case <-ctx.Done():
			return qemustore.Record{}, ctx.Err()
		}
	}
}

func run(ctx context.Context, timelinePath string) error {
	h, err := qemu.HarnessFromEnv()
	if err != nil {
		return err
	}
	d := &demo{start: time.Now(), h: h, records: make(chan qemustore.Record, 64)}
	fmt.Println("libautostandby demo: a real QEMU guest, the host's conntrack table, the Go controller")
	fmt.Printf("  guest %s on a TAP in namespace %s; idle timeout %v; wake on traffic on\n\n", h.GuestIP, h.Namespace, idleTimeout)

	d.guest = qemu.NewVM(h.Config("demo"))
	defer d.guest.Kill()
	d.say("booting the guest (Debian cloud kernel + busybox initramfs, QEMU TCG, no KVM)")
	bootStart := time.Now()
	bootCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := d.guest.Boot(bootCtx); err != nil {
		return err
	}
	if err := d.guest.WaitBooted(bootCtx); err != nil {
		return err
	}
	if err := qemu.WaitHTTP(bootCtx, h.GuestHTTP()); err != nil {
		return err
	}
	bootTime := time.Since(bootStart)
	d.say("guest is up and serving HTTP after %v", bootTime.Round(time.Millisecond))

	d.store = qemustore.New(d.records)
	policy := autostandby.Policy{Enabled: true, IdleTimeout: idleTimeout.String(), WakeOnTraffic: true}
	d.store.Add(autostandby.Instance{ID: instanceID, Name: "demo", NetworkEnabled: true, IP: h.GuestIP, AutoStandby: &policy}, d.guest)
	// The controller's own logs go to a file; the narration is the demo's output.
	logFile, err := os.Create(h.RunDir + "/controller.log")
	if err != nil {
		return err
	}
	defer logFile.Close()
	d.ctrl, err = autostandby.New(d.store,
		// The hold keeps the client's first SYN on the host while the guest is restored.
		autostandby.NewConntrackSource(autostandby.SourceOptions{EnableConntrackEvents: true, HoldPacketsInStandby: true}),
		autostandby.ControllerOptions{Log: slog.New(slog.NewTextHandler(logFile, nil))})
	if err != nil {
		return fmt.Errorf("start the controller: %w", err)
	}
	defer d.ctrl.Close()
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- d.ctrl.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()

	d.say("controller started in kernel mode, watching conntrack in %s", h.Namespace)
	// The timeline's clock starts with the controller.
	d.tl = newTimeline(time.Now())
	// The client opens its connection at once, before the first countdown ends.
	d.say("client connects to %s and keeps the connection open for %v", h.GuestHTTP(), holdOpen)
	conn, err := net.DialTimeout("tcp", h.GuestHTTP(), 5*time.Second)
	if err != nil {
		return err
	}
	d.tl.mark(time.Now(), "client connects")
	narrCtx, stopNarr := context.WithCancel(ctx)
	defer stopNarr()
	go d.narrate(narrCtx)

	select {
	case <-time.After(holdOpen):
	case <-ctx.Done():
		return ctx.Err()
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	status, err := qemu.HTTPGet(conn)
	if err != nil {
		return err
	}
	conn.Close()
	closedAt := time.Now()
	d.tl.mark(closedAt, "client closes")
	d.say("client sends a request (%s) and closes the connection: the countdown starts", status)

	sb, err := d.wait(ctx, qemustore.OpStandby, idleTimeout+30*time.Second)
	if err != nil {
		return err
	}
	standbyAfter := sb.At.Sub(closedAt)
	d.say("STANDBY: snapshot %.1f MiB written and QEMU stopped in %v (%v after the close)",
		float64(sb.SnapshotSize)/(1<<20), sb.Duration.Round(time.Millisecond), standbyAfter.Round(time.Millisecond))

	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	d.say("client connects again; the guest is in Standby")
	firstSYN := time.Now()
	conn, err = net.DialTimeout("tcp", h.GuestHTTP(), 15*time.Second)
	if err != nil {
		return fmt.Errorf("connect to the sleeping guest: %w", err)
	}
	connected := time.Now()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := qemu.HTTPGet(conn); err != nil {
		return err
	}
	firstByte := time.Now()
	conn.Close()
	d.tl.mark(firstSYN, "first SYN")
	d.tl.mark(firstByte, "first byte")
	wake, err := d.wait(ctx, qemustore.OpRestoreStarted, time.Second)
	if err != nil {
		return err
	}
	rs, err := d.wait(ctx, qemustore.OpRestore, time.Second)
	if err != nil {
		return err
	}
	d.say("WAKE %v after the first SYN; restored in %v; connected after %v; first byte after %v",
		wake.At.Sub(firstSYN).Round(10*time.Microsecond), rs.Duration.Round(time.Millisecond),
		connected.Sub(firstSYN).Round(time.Millisecond), firstByte.Sub(firstSYN).Round(time.Millisecond))
	select {
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	stopNarr()

	fmt.Println()
	fmt.Println("summary (QEMU TCG, no KVM; times from this run)")
	row := func(name string, v string) { fmt.Printf("  %-42s %12s\n", name, v) }
	fmt.Println("  " + strings.Repeat("-", 55))
	row("guest boot to first HTTP answer", bootTime.Round(time.Millisecond).String())
	row("idle timeout", idleTimeout.String())
	row("connection close to Standby", standbyAfter.Round(time.Millisecond).String())
	row("standby (stop + snapshot + quit)", sb.Duration.Round(time.Millisecond).String())
	row("snapshot size", fmt.Sprintf("%.1f MiB", float64(sb.SnapshotSize)/(1<<20)))
	row("first SYN to Wake", wake.At.Sub(firstSYN).Round(10*time.Microsecond).String())
	row("restore (start QEMU + load snapshot + cont)", rs.Duration.Round(time.Millisecond).String())
	row("first SYN to connection established", connected.Sub(firstSYN).Round(time.Millisecond).String())
	row("first SYN to first byte", firstByte.Sub(firstSYN).Round(time.Millisecond).String())
	fmt.Println("  " + strings.Repeat("-", 55))
	if timelinePath != "" {
		written, err := d.tl.save(timelinePath, "libautostandby demo: a QEMU guest sleeps when idle and wakes on a SYN")
		if err != nil {
			return fmt.Errorf("write the timeline: %w", err)
		}
		fmt.Println("timeline:", strings.Join(written, ", "))
	}
	return nil
}
