package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Harness is the environment tests/e2e/vm.sh sets up: a network namespace (the caller
// runs inside it) with a bridge, a TAP device for the guest and a conntrack rule.
type Harness struct {
	Namespace string // network namespace name
	RunDir    string // scratch directory, removed by the harness
	GuestDir  string // vmlinuz and initramfs.cpio.gz
	Tap       string // the guest's TAP device
	HostIP    string // the bridge's address
	GuestIP   string // the guest's address
	Prefix    string // prefix length of the bridge network
	HostIP6   string // the bridge's IPv6 address
	GuestIP6  string // the guest's IPv6 address
	Prefix6   string // prefix length of the bridge's IPv6 network
}

// HarnessFromEnv reads the AS_E2E_* variables of tests/e2e/vm.sh. It fails with a clear
// message when the caller was not started by the harness.
func HarnessFromEnv() (Harness, error) {
	h := Harness{
		Namespace: os.Getenv("AS_E2E_NS"),
		RunDir:    os.Getenv("AS_E2E_RUN_DIR"),
		GuestDir:  os.Getenv("AS_E2E_GUEST_DIR"),
		Tap:       os.Getenv("AS_E2E_TAP"),
		HostIP:    os.Getenv("AS_E2E_HOST_IP"),
		GuestIP:   os.Getenv("AS_E2E_GUEST_IP"),
		Prefix:    os.Getenv("AS_E2E_PREFIX"),
		HostIP6:   os.Getenv("AS_E2E_HOST_IP6"),
		GuestIP6:  os.Getenv("AS_E2E_GUEST_IP6"),
		Prefix6:   os.Getenv("AS_E2E_PREFIX6"),
	}
	for name, v := range map[string]string{
		"AS_E2E_NS": h.Namespace, "AS_E2E_RUN_DIR": h.RunDir, "AS_E2E_GUEST_DIR": h.GuestDir,
		"AS_E2E_TAP": h.Tap, "AS_E2E_HOST_IP": h.HostIP, "AS_E2E_GUEST_IP": h.GuestIP, "AS_E2E_PREFIX": h.Prefix,
		"AS_E2E_HOST_IP6": h.HostIP6, "AS_E2E_GUEST_IP6": h.GuestIP6, "AS_E2E_PREFIX6": h.Prefix6,
	} {
		if v == "" {
			return h, fmt.Errorf("%s is not set: run this through 'tests/e2e/vm.sh run ...' (make e2e), as root", name)
		}
	}
	return h, nil
}

// Config is the QEMU configuration of the harness's guest, with files named after name.
func (h Harness) Config(name string) Config {
	return Config{
		Name:   name,
		Dir:    h.RunDir,
		Kernel: filepath.Join(h.GuestDir, "vmlinuz"),
		Initrd: filepath.Join(h.GuestDir, "initramfs.cpio.gz"),
		Append: fmt.Sprintf("console=ttyS0 quiet panic=-1 init_on_free=1 as_ip=%s/%s as_ip6=%s/%s as_gw=%s",
			h.GuestIP, h.Prefix, h.GuestIP6, h.Prefix6, h.HostIP),
		Tap: h.Tap,
		MAC: "52:54:00:12:34:56",
	}
}

// GuestHTTP is the guest's HTTP address.
func (h Harness) GuestHTTP() string { return net.JoinHostPort(h.GuestIP, "80") }

// GuestUDPEcho6 is the guest's UDP echo service on its IPv6 address.
func (h Harness) GuestUDPEcho6() string { return net.JoinHostPort(h.GuestIP6, "7") }

// HTTPGet sends one HTTP/1.0 GET over conn and returns the status line. It reads the
// answer to the end, so the guest closes first and the caller's Close ends the
// connection cleanly (TIME_WAIT) instead of with a reset.
func HTTPGet(conn net.Conn) (string, error) {
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return "", err
	}
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "HTTP/1.") || !strings.Contains(line, " 200 ") {
		return line, fmt.Errorf("unexpected HTTP status %q", line)
	}
	return line, nil
}

// WaitHTTP retries an HTTP GET to addr until the guest answers or ctx ends. Each attempt
// waits up to 5 s for its connection, so TCP's own SYN retransmission carries it over
// the last moments of a boot: an attempt given up in SYN_SENT would leave a conntrack
// entry that counts as inbound activity for two minutes.
func WaitHTTP(ctx context.Context, addr string) error {
	var last error
	for {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = HTTPGet(conn)
			conn.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("no HTTP answer from %s: %w (last error: %v)", addr, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
