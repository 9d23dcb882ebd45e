package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Config describes one guest. Restores reuse it, so the restored QEMU has exactly the
// devices the snapshot was taken from.
type Config struct {
	// Name prefixes the files in Dir: <name>.qmp, <name>.serial, <name>.snapshot.
	Name string
	// Dir holds the QMP socket, the serial log and the snapshot.
	Dir string
	// Kernel and Initrd are the guest's kernel image and initramfs.
	Kernel, Initrd string
	// Append is the kernel command line.
	Append string
	// Tap is an existing TAP device (in the caller's network namespace) for the NIC.
	Tap string
	// MAC is the NIC's address; fixed so the guest's neighbours stay valid across restores.
	MAC string
	// MemoryMB is the guest's RAM; 128 when zero.
	MemoryMB int
	// Binary is the QEMU executable; qemu-system-x86_64 when empty.
	Binary string
}

// QMPPath is the QMP socket of the guest.
func (c Config) QMPPath() string { return filepath.Join(c.Dir, c.Name+".qmp") }

// SerialPath is the file the guest's serial console is appended to.
func (c Config) SerialPath() string { return filepath.Join(c.Dir, c.Name+".serial") }

// SnapshotPath is where Standby writes the guest's state and Restore reads it.
func (c Config) SnapshotPath() string { return filepath.Join(c.Dir, c.Name+".snapshot") }

func (c Config) args() []string {
	mem := c.MemoryMB
	if mem == 0 {
		mem = 128
	}
	return []string{
		// TCG: KVM is not available on the machines this runs on.
		"-accel", "tcg", "-machine", "pc", "-cpu", "qemu64",
		"-m", strconv.Itoa(mem), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", c.Kernel, "-initrd", c.Initrd, "-append", c.Append,
		"-netdev", "tap,id=n0,ifname=" + c.Tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + c.MAC,
		// Appended, so the log of a restored guest follows the one it was snapshotted from.
		"-chardev", "file,id=serial0,append=on,path=" + c.SerialPath(),
		"-serial", "chardev:serial0",
		"-qmp", "unix:" + c.QMPPath() + ",server=on,wait=off",
	}
}

// State is where a VM is in its life.
type State string

// The states of a VM.
const (
	StateStopped State = "stopped" // never started, or QEMU exited without a snapshot
	StateRunning State = "running"
	StateStandby State = "standby" // QEMU exited after writing the snapshot
)

// VM is one guest and the QEMU process currently running it, if any. Safe for
// concurrent use; operations are serialised.
type VM struct {
	cfg Config

	mu    sync.Mutex
	state State
	proc  *process
}

type process struct {
	cmd  *exec.Cmd
	qmp  *QMP
	done chan struct{}
	err  error // valid once done is closed
}

// NewVM returns a stopped VM.
func NewVM(cfg Config) *VM {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	return &VM{cfg: cfg, state: StateStopped}
}

// Config returns the VM's configuration.
func (v *VM) Config() Config { return v.cfg }

// State returns the VM's current state.
func (v *VM) State() State {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reapLocked()
	return v.state
}

// reapLocked notices a QEMU that exited on its own.
func (v *VM) reapLocked() {
	if v.proc == nil {
		return
	}
	select {
	case <-v.proc.done:
		v.proc.qmp.Close()
		v.proc = nil
		if v.state == StateRunning {
			v.state = StateStopped
		}
	default:
	}
}

// start runs QEMU with extra arguments and files (fd 3 onwards) and connects to QMP.
func (v *VM) start(ctx context.Context, extraArgs []string, files []*os.File) (*process, error) {
	if err := os.MkdirAll(v.cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	os.Remove(v.cfg.QMPPath())
	cmd := exec.Command(v.cfg.Binary, append(v.cfg.args(), extraArgs...)...)
	cmd.ExtraFiles = files
	// QEMU dies with the process that started it, so an interrupted test leaves none behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := os.OpenFile(filepath.Join(v.cfg.Dir, v.cfg.Name+".stderr"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", v.cfg.Binary, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	// Give up on QMP as soon as QEMU exits (bad arguments, missing TAP, ...).
	dialCtx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-dialCtx.Done():
		}
	}()
	q, err := DialQMP(dialCtx, v.cfg.QMPPath())
	cancel()
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("%w; %s", err, v.stderrTail())
	}
	p.qmp = q
	return p, nil
}

func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.done
	if p.qmp != nil {
		p.qmp.Close()
	}
}

// stderrTail is the end of QEMU's stderr, for error messages.
func (v *VM) stderrTail() string {
	b, _ := os.ReadFile(filepath.Join(v.cfg.Dir, v.cfg.Name+".stderr"))
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return "qemu stderr: " + string(b)
}

// Boot starts the guest from its kernel. It returns once QEMU answers QMP; the guest's
// services come up a few seconds later.
func (v *VM) Boot(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reapLocked()
	if v.proc != nil {
		return errors.New("qemu: the VM is already running")
	}
	// A fresh serial log, so WaitBooted sees this boot's marker only.
	os.Remove(v.cfg.SerialPath())
	p, err := v.start(ctx, nil, nil)
	if err != nil {
		return err
	}
	v.proc, v.state = p, StateRunning
	return nil
}

// readyMarker is the line the guest's init prints once its HTTP responder listens.
const readyMarker = "guest: ready"

// WaitBooted waits until the guest's serial console shows that it finished booting
// (network configured, HTTP responder started), so that nothing has to probe the guest's
// network while it boots.
func (v *VM) WaitBooted(ctx context.Context) error {
	for {
		b, _ := os.ReadFile(v.cfg.SerialPath())
		if bytes.Contains(b, []byte(readyMarker)) {
			return nil
		}
		if v.State() != StateRunning {
			return fmt.Errorf("qemu: the guest stopped while booting; %s", v.stderrTail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: waiting for %q on the serial console: %w", readyMarker, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StandbyResult describes one standby.
type StandbyResult struct {
	Duration     time.Duration // from stop to QEMU's exit
	SnapshotSize int64         // bytes
}

// Standby pauses the guest, writes its whole state to the snapshot file and stops QEMU.
//
// QEMU 7.2 (Debian 12) has no "file:" migration URI, so the snapshot file is opened here
// and handed to QEMU over QMP (getfd, then migrate to "fd:"). That also avoids "exec:",
// whose helper process QEMU kills as soon as the stream ends, possibly before it has
// written its last buffer.
func (v *VM) Standby(ctx context.Context) (StandbyResult, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reapLocked()
	if v.proc == nil || v.state != StateRunning {
		return StandbyResult{}, fmt.Errorf("qemu: cannot stand by a VM that is %s", v.state)
	}
	start := time.Now()
	q := v.proc.qmp
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		return StandbyResult{}, err
	}
	// The default bandwidth cap (32 MiB/s) would make a stopped VM's snapshot slow.
	if err := q.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30}, nil); err != nil {
		return StandbyResult{}, v.resumeAfter(ctx, err)
	}
	f, err := os.OpenFile(v.cfg.SnapshotPath(), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return StandbyResult{}, v.resumeAfter(ctx, err)
	}
	err = q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "snapshot"}, f, nil)
	f.Close() // QEMU holds its own copy now
	if err != nil {
		return StandbyResult{}, v.resumeAfter(ctx, err)
	}
	if err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:snapshot"}, nil); err != nil {
		return StandbyResult{}, v.resumeAfter(ctx, err)
	}
	if err := waitMigration(ctx, q); err != nil {
		return StandbyResult{}, v.resumeAfter(ctx, err)
	}
	// From here the snapshot is complete: QEMU only has to go away.
	p := v.proc
	v.proc, v.state = nil, StateStandby
	if err := q.Execute(ctx, "quit", nil, nil); err != nil && !isClosed(err) {
		p.kill()
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.kill()
	}
	p.qmp.Close()
	st, err := os.Stat(v.cfg.SnapshotPath())
	if err != nil {
		return StandbyResult{}, err
	}
	return StandbyResult{Duration: time.Since(start), SnapshotSize: st.Size()}, nil
}

// resumeAfter restarts a guest whose standby failed before the snapshot was complete, so a
// failed standby leaves it serving, and returns cause.
func (v *VM) resumeAfter(ctx context.Context, cause error) error {
	if v.proc == nil {
		return cause
	}
	// Resume even when ctx is what ended the standby, but do not wait forever.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := v.proc.qmp.Execute(rctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("%w (and resuming the guest failed: %v)", cause, err)
	}
	return cause
}

func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, errEOF)
}

// waitMigration polls query-migrate until the migration completes or fails.
func waitMigration(ctx context.Context, q *QMP) error {
	for {
		info, err := q.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("qemu: migration %s: %s", info.Status, info.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: waiting for the snapshot: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// RestoreResult describes one restore.
type RestoreResult struct {
	Duration time.Duration // from starting QEMU to the guest running again
}

// Restore starts QEMU with the configuration the snapshot was taken with, loads the
// snapshot (passed as fd 3, "-incoming fd:3") and resumes the guest.
func (v *VM) Restore(ctx context.Context) (RestoreResult, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reapLocked()
	if v.proc != nil || v.state != StateStandby {
		return RestoreResult{}, fmt.Errorf("qemu: cannot restore a VM that is %s", v.state)
	}
	start := time.Now()
	f, err := os.Open(v.cfg.SnapshotPath())
	if err != nil {
		return RestoreResult{}, fmt.Errorf("qemu: restore: %w", err)
	}
	defer f.Close()
	p, err := v.start(ctx, []string{"-incoming", "fd:3"}, []*os.File{f})
	if err != nil {
		return RestoreResult{}, err
	}
	fail := func(err error) (RestoreResult, error) {
		p.kill()
		return RestoreResult{}, fmt.Errorf("qemu: restore: %w; %s", err, v.stderrTail())
	}
	for {
		st, err := p.qmp.QueryStatus(ctx)
		if err != nil {
			return fail(err)
		}
		if st.Running {
			break
		}
		// The source was paused before the snapshot, so the loaded guest ends up paused.
		if st.Status == "paused" {
			if err := p.qmp.Execute(ctx, "cont", nil, nil); err != nil {
				return fail(err)
			}
			break
		}
		if st.Status != "inmigrate" && st.Status != "prelaunch" {
			return fail(fmt.Errorf("unexpected run state %q while loading the snapshot", st.Status))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-p.done:
			return fail(errors.New("QEMU exited while loading the snapshot"))
		case <-time.After(10 * time.Millisecond):
		}
	}
	v.proc, v.state = p, StateRunning
	return RestoreResult{Duration: time.Since(start)}, nil
}

// Kill stops QEMU at once, without a snapshot. The VM is then stopped.
func (v *VM) Kill() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != nil {
		v.proc.kill()
		v.proc = nil
	}
	v.state = StateStopped
}
