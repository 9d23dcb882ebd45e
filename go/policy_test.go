package autostandby

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestNormalizePolicyCanonicalizesValues(t *testing.T) {
	got, err := NormalizePolicy(&Policy{
		Enabled:                true,
		IdleTimeout:            " 300s ",
		IgnoreSourceCIDRs:      []string{"10.0.0.0/8", " 10.0.0.0/8 ", "192.168.1.1/24", ""},
		IgnoreDestinationPorts: []uint16{9000, 22, 9000},
	})
	if err != nil {
		t.Fatalf("NormalizePolicy: %v", err)
	}
	want := &Policy{
		Enabled:                true,
		IdleTimeout:            "5m0s",
		IgnoreSourceCIDRs:      []string{"10.0.0.0/8", "192.168.1.0/24"},
		IgnoreDestinationPorts: []uint16{22, 9000},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestNormalizePolicyRejectsInvalidValues(t *testing.T) {
	cases := []struct {
		name   string
		policy Policy
		want   string
	}{
		{"zero timeout", Policy{Enabled: true, IdleTimeout: "0s"}, "auto_standby.idle_timeout must be positive"},
		{"negative timeout", Policy{Enabled: true, IdleTimeout: "-1m"}, "auto_standby.idle_timeout must be positive"},
		{"missing timeout", Policy{Enabled: true, IdleTimeout: "  "}, "auto_standby.idle_timeout is required when enabled"},
		{"bad timeout", Policy{Enabled: true, IdleTimeout: "soon"}, `auto_standby.idle_timeout must be a valid duration: time: invalid duration "soon"`},
		{"huge timeout", Policy{Enabled: true, IdleTimeout: "721h"}, "auto_standby.idle_timeout must be at most 720h0m0s"},
		{"port zero", Policy{Enabled: true, IdleTimeout: "1m", IgnoreDestinationPorts: []uint16{80, 0}}, "auto_standby.ignore_destination_ports must not contain 0"},
		{"bare ip", Policy{Enabled: true, IdleTimeout: "1m", IgnoreSourceCIDRs: []string{"10.0.0.1"}}, `auto_standby.ignore_source_cidrs contains invalid CIDR "10.0.0.1": netip.ParsePrefix("10.0.0.1"): no '/'`},
		{"unknown protocol", Policy{Enabled: true, IdleTimeout: "1m", Protocols: []string{"sctp"}}, `auto_standby.protocols contains unknown protocol "sctp"`},
		{"negative uptime", Policy{Enabled: true, IdleTimeout: "1m", MinUptime: "-1s"}, "auto_standby.min_uptime must not be negative"},
		{"disabled keeps validation", Policy{Enabled: false, IdleTimeout: "0s"}, "auto_standby.idle_timeout must be positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizePolicy(&tc.policy)
			if err == nil {
				t.Fatalf("accepted %+v as %+v", tc.policy, got)
			}
			if err.Error() != tc.want {
				t.Fatalf("error %q, want %q", err, tc.want)
			}
			var pe *PolicyError
			if !errorsAs(err, &pe) || !strings.HasPrefix(tc.want, "auto_standby."+pe.Field+" ") {
				t.Fatalf("error %#v does not name its field", err)
			}
		})
	}
}

func TestNormalizePolicyNilAndDisabled(t *testing.T) {
	if got, err := NormalizePolicy(nil); got != nil || err != nil {
		t.Fatalf("nil policy gave %+v, %v", got, err)
	}
	// A disabled policy keeps its (normalized) settings so re-enabling loses nothing.
	got, err := NormalizePolicy(&Policy{Enabled: false, IdleTimeout: "90s", IgnoreDestinationPorts: []uint16{22}})
	if err != nil {
		t.Fatal(err)
	}
	want := &Policy{IdleTimeout: "1m30s", IgnoreDestinationPorts: []uint16{22}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	// And needs no timeout.
	if _, err := NormalizePolicy(&Policy{Enabled: false}); err != nil {
		t.Fatalf("disabled policy without timeout rejected: %v", err)
	}
}

func TestNormalizePolicyExtensions(t *testing.T) {
	got, err := NormalizePolicy(&Policy{
		Enabled:           true,
		IdleTimeout:       "1ns",
		IgnoreSourceCIDRs: []string{"fd00::1/8", "::ffff:10.1.2.3/104", "192.168.0.0/16", "10.0.0.0/8"},
		Protocols:         []string{"UDP", " tcp", "udp"},
		WakeOnTraffic:     true,
		MinUptime:         "120s",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &Policy{
		Enabled:     true,
		IdleTimeout: "1ns",
		// Numeric order, IPv4 first; the mapped prefix becomes the IPv4 prefix it names.
		IgnoreSourceCIDRs: []string{"10.0.0.0/8", "192.168.0.0/16", "fd00::/8"},
		Protocols:         []string{"tcp", "udp"},
		WakeOnTraffic:     true,
		MinUptime:         "2m0s",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	c, err := compilePolicy(got)
	if err != nil {
		t.Fatal(err)
	}
	if !c.tcp || !c.udp || c.idleTimeout != 1 || c.minUptime.Seconds() != 120 || len(c.ignoreSources) != 3 {
		t.Fatalf("compiled %+v", c)
	}
	if c, _ := compilePolicy(&Policy{Enabled: true, IdleTimeout: "1m"}); !c.tcp || c.udp {
		t.Fatalf("default protocols: %+v", c)
	}
}

func TestValidateDestinationPorts(t *testing.T) {
	if err := ValidateDestinationPorts([]int{1, 65535}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int{0, -1, 65536} {
		err := ValidateDestinationPorts([]int{bad})
		if err == nil || err.Error() != "auto_standby.ignore_destination_ports must be between 1 and 65535" {
			t.Fatalf("port %d: %v", bad, err)
		}
	}
}

func TestPolicyJSONShapeMatchesHypeman(t *testing.T) {
	out, err := json.Marshal(Policy{Enabled: false})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"enabled":false}` {
		t.Fatalf("disabled policy JSON %s", out)
	}
	in := `{"enabled":true,"idle_timeout":"5m0s","ignore_source_cidrs":["10.0.0.0/8"],"ignore_destination_ports":[22]}`
	var p Policy
	if err := json.Unmarshal([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	out, _ = json.Marshal(p)
	if string(out) != in {
		t.Fatalf("round trip %s, want %s", out, in)
	}
}

func TestRuntimeJSON(t *testing.T) {
	var rt Runtime
	in := `{"idle_since":"2026-04-05T10:55:00Z","last_inbound_activity_at":"2026-04-05T10:50:00Z"}`
	if err := json.Unmarshal([]byte(in), &rt); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(rt.Clone())
	if string(out) != in {
		t.Fatalf("round trip %s", out)
	}
	out, _ = json.Marshal(Runtime{})
	if string(out) != `{}` {
		t.Fatalf("empty runtime %s", out)
	}
}

func TestTCPStateActiveIsADenylist(t *testing.T) {
	for s := 0; s < 256; s++ {
		state := TCPState(s)
		finished := state == TCPStateNone || state == TCPStateTimeWait || state == TCPStateClose
		if state.Active() == finished {
			t.Fatalf("state %d (%s): active=%v", s, state, state.Active())
		}
	}
	if TCPStateSynSent2 != 9 || TCPStateIgnore != 11 || TCPStateRetrans != 12 {
		t.Fatal("TCP state constants must use the kernel uapi values")
	}
}

// The kernel's uapi numbering (enum tcp_conntrack); hypeman's Ignore and Retrans are one
// lower, which its own constants test asserts.
func TestTCPStateConstantsAreTheKernelsUapiValues(t *testing.T) {
	got := []TCPState{TCPStateNone, TCPStateSynSent, TCPStateSynRecv, TCPStateEstablished,
		TCPStateFinWait, TCPStateCloseWait, TCPStateLastAck, TCPStateTimeWait, TCPStateClose,
		TCPStateSynSent2, TCPStateIgnore, TCPStateRetrans}
	want := []TCPState{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("constant %d (%s) is %d, want %d", i, got[i], got[i], want[i])
		}
	}
	if TCPStateListen != TCPStateSynSent2 {
		t.Errorf("TCPStateListen is %d, want 9", TCPStateListen)
	}
}
