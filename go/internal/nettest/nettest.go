// Package nettest creates the network namespaces, links and nftables tables that the
// kernel tests and benchmarks of the Go module need, and removes them when the test
// ends. Everything it creates is named with the "as-go-" prefix.
package nettest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireRoot stops the test when it cannot create namespaces: in CI (CI set to anything
// but "", "0" or "false") it fails loudly, so a CI run cannot pass without these tests;
// elsewhere it skips with "needs root" and what to run instead.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		const msg = "needs root (network namespaces, conntrack): run `sudo make test-go`, or `make check` for the tests that need no root"
		if inCI() {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Fatalf("this test needs %q (scripts/install-deps.sh installs it): %v", tool, err)
		}
	}
}

func inCI() bool {
	switch os.Getenv("CI") {
	case "", "0", "false":
		return false
	}
	return true
}

// Name returns a namespace or link name unique to this process: "as-go-<tag>-<pid>",
// shortened to fit interface names when short is set.
func Name(tag string, short bool) string {
	name := fmt.Sprintf("as-go-%s-%d", tag, os.Getpid()%100000)
	if short && len(name) > 15 {
		name = name[:15]
	}
	return name
}

// Run runs a command and fails the test with its output when it fails.
func Run(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// InNS runs a command inside namespace ns.
func InNS(tb testing.TB, ns string, args ...string) string {
	tb.Helper()
	return Run(tb, append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// Namespace creates network namespace name (removing a stale one of the same name
// first) with loopback up, deletes it when the test ends, and returns its path.
func Namespace(tb testing.TB, name string) string {
	tb.Helper()
	_ = exec.Command("ip", "netns", "del", name).Run()
	Run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("remove namespace %s: %v\n%s", name, err, out)
		}
	})
	InNS(tb, name, "ip", "link", "set", "lo", "up")
	return "/run/netns/" + name
}

// TrackConnections makes namespace ns track connections (conntrack hooks register
// only once a rule needs them) and report events for every flow.
func TrackConnections(tb testing.TB, ns string) {
	tb.Helper()
	ruleset := `table inet as_go_track {
	chain output { type filter hook output priority 0; ct state new,established,related accept; }
	chain input { type filter hook input priority 0; ct state new,established,related accept; }
	chain forward { type filter hook forward priority 0; ct state new,established,related accept; }
}`
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
	InNS(tb, ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")
}

// Veth connects namespaces a and b with a veth pair, addressing each end with the
// given CIDR (e.g. "10.213.7.1/24").
func Veth(tb testing.TB, a, aAddr, b, bAddr string) {
	tb.Helper()
	ea, eb := Name("va", true), Name("vb", true)
	Run(tb, "ip", "link", "add", ea, "netns", a, "type", "veth", "peer", "name", eb, "netns", b)
	InNS(tb, a, "ip", "addr", "add", aAddr, "dev", ea)
	InNS(tb, b, "ip", "addr", "add", bAddr, "dev", eb)
	InNS(tb, a, "ip", "link", "set", ea, "up")
	InNS(tb, b, "ip", "link", "set", eb, "up")
}
