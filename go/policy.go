package autostandby

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// MaxIdleTimeout is the longest idle timeout the library accepts (30 days).
const MaxIdleTimeout = 30 * 24 * time.Hour

// Protocol names accepted in Policy.Protocols.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// Policy is a per-instance auto-standby policy, stored in instance metadata. The first
// four fields and their JSON form are hypeman's; the rest are additions that are left
// out of the JSON when unset, so a hypeman policy round-trips unchanged.
type Policy struct {
	// Enabled is the master switch.
	Enabled bool `json:"enabled"`
	// IdleTimeout is a Go duration: how long there must be no qualifying inbound flow.
	IdleTimeout string `json:"idle_timeout,omitempty"`
	// IgnoreSourceCIDRs are client prefixes whose flows never keep the instance awake.
	IgnoreSourceCIDRs []string `json:"ignore_source_cidrs,omitempty"`
	// IgnoreDestinationPorts are guest ports whose flows never keep the instance awake.
	IgnoreDestinationPorts []uint16 `json:"ignore_destination_ports,omitempty"`
	// Protocols lists the transports that count as activity ("tcp", "udp"); empty
	// means TCP only, as in hypeman.
	Protocols []string `json:"protocols,omitempty"`
	// WakeOnTraffic asks for a Wake (RestoreInstance) on the first qualifying inbound
	// flow while the instance is in Standby.
	WakeOnTraffic bool `json:"wake_on_traffic,omitempty"`
	// WakeSourceCIDRs are the client prefixes allowed to wake the instance; empty
	// allows any client. A flow must also count under the rest of the policy (its
	// protocol, port and source) to wake it.
	WakeSourceCIDRs []string `json:"wake_source_cidrs,omitempty"`
	// MinUptime is a Go duration: no standby sooner than this after a start or restore.
	MinUptime string `json:"min_uptime,omitempty"`
}

// Clone deep-copies the policy, every field included; nil stays nil. hypeman's copy of
// a policy (lib/instances, on fork and update) should call it, so the fields beyond
// hypeman's four survive.
func (p *Policy) Clone() *Policy {
	if p == nil {
		return nil
	}
	out := *p
	out.IgnoreSourceCIDRs = slices.Clone(p.IgnoreSourceCIDRs)
	out.IgnoreDestinationPorts = slices.Clone(p.IgnoreDestinationPorts)
	out.Protocols = slices.Clone(p.Protocols)
	out.WakeSourceCIDRs = slices.Clone(p.WakeSourceCIDRs)
	return &out
}

// PolicyError is a rejected policy. Its text is hypeman's, "auto_standby.<field> <what>".
type PolicyError struct {
	// Field is the policy's JSON field name, e.g. "idle_timeout".
	Field string
	// Detail is the rest of the message.
	Detail string
}

func (e *PolicyError) Error() string { return "auto_standby." + e.Field + " " + e.Detail }

func policyErr(field, format string, args ...any) error {
	return &PolicyError{Field: field, Detail: fmt.Sprintf(format, args...)}
}

// NormalizePolicy validates p and returns its canonical form: durations in Go's
// canonical spelling ("300s" becomes "5m0s"), CIDRs trimmed, masked, de-duplicated and
// sorted by address (IPv4 first), ports de-duplicated and sorted. A nil policy gives
// nil, nil.
//
// Unlike hypeman, a disabled policy keeps its settings (validated the same way, except
// that idle_timeout may be empty), so re-enabling it does not lose them.
func NormalizePolicy(p *Policy) (*Policy, error) {
	if p == nil {
		return nil, nil
	}
	out := &Policy{Enabled: p.Enabled, WakeOnTraffic: p.WakeOnTraffic}

	timeout := strings.TrimSpace(p.IdleTimeout)
	switch {
	case timeout == "" && p.Enabled:
		return nil, policyErr("idle_timeout", "is required when enabled")
	case timeout != "":
		d, err := time.ParseDuration(timeout)
		if err != nil {
			return nil, policyErr("idle_timeout", "must be a valid duration: %v", err)
		}
		if d <= 0 {
			return nil, policyErr("idle_timeout", "must be positive")
		}
		if d > MaxIdleTimeout {
			return nil, policyErr("idle_timeout", "must be at most %s", MaxIdleTimeout)
		}
		out.IdleTimeout = d.String()
	}

	prefixes, err := normalizeCIDRs("ignore_source_cidrs", p.IgnoreSourceCIDRs)
	if err != nil {
		return nil, err
	}
	for _, prefix := range prefixes {
		out.IgnoreSourceCIDRs = append(out.IgnoreSourceCIDRs, prefix.String())
	}
	if prefixes, err = normalizeCIDRs("wake_source_cidrs", p.WakeSourceCIDRs); err != nil {
		return nil, err
	}
	for _, prefix := range prefixes {
		out.WakeSourceCIDRs = append(out.WakeSourceCIDRs, prefix.String())
	}

	for _, port := range p.IgnoreDestinationPorts {
		if port == 0 {
			return nil, policyErr("ignore_destination_ports", "must not contain 0")
		}
	}
	if len(p.IgnoreDestinationPorts) > 0 {
		ports := slices.Clone(p.IgnoreDestinationPorts)
		slices.Sort(ports)
		out.IgnoreDestinationPorts = slices.Compact(ports)
	}

	for _, name := range p.Protocols {
		name = strings.ToLower(strings.TrimSpace(name))
		if name != ProtocolTCP && name != ProtocolUDP {
			return nil, policyErr("protocols", "contains unknown protocol %q", name)
		}
		out.Protocols = append(out.Protocols, name)
	}
	slices.Sort(out.Protocols)
	out.Protocols = slices.Compact(out.Protocols)

	if minUptime := strings.TrimSpace(p.MinUptime); minUptime != "" {
		d, err := time.ParseDuration(minUptime)
		if err != nil {
			return nil, policyErr("min_uptime", "must be a valid duration: %v", err)
		}
		if d < 0 {
			return nil, policyErr("min_uptime", "must not be negative")
		}
		if d > 0 {
			out.MinUptime = d.String()
		}
	}
	return out, nil
}

// ValidateDestinationPorts checks API-level port values (wider than uint16) the way
// hypeman's API adapter does, before they are narrowed into a Policy.
func ValidateDestinationPorts(ports []int) error {
	for _, port := range ports {
		if port < 1 || port > 65535 {
			return policyErr("ignore_destination_ports", "must be between 1 and 65535")
		}
	}
	return nil
}

// normalizeCIDRs parses, masks, de-duplicates and sorts prefixes. Empty entries are
// skipped, as in hypeman. An IPv4-mapped IPv6 prefix becomes the IPv4 prefix it names,
// because flows are matched on unmapped addresses.
func normalizeCIDRs(field string, cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, raw := range cidrs {
		text := strings.TrimSpace(raw)
		if text == "" {
			continue
		}
		prefix, err := netip.ParsePrefix(text)
		if err != nil {
			return nil, policyErr(field, "contains invalid CIDR %q: %v", text, err)
		}
		if addr := prefix.Addr(); addr.Is4In6() && prefix.Bits() >= 96 {
			prefix = netip.PrefixFrom(addr.Unmap(), prefix.Bits()-96)
		}
		out = append(out, prefix.Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), nil
}

// compiledPolicy is a normalized policy in the units the library takes.
type compiledPolicy struct {
	enabled       bool
	idleTimeout   time.Duration
	ignoreSources []netip.Prefix
	wakeSources   []netip.Prefix
	ignorePorts   []uint16
	tcp, udp      bool
	wakeOnTraffic bool
	minUptime     time.Duration
}

// compilePolicy normalizes p and converts it; nil gives nil.
func compilePolicy(p *Policy) (*compiledPolicy, error) {
	norm, err := NormalizePolicy(p)
	if err != nil || norm == nil {
		return nil, err
	}
	c := &compiledPolicy{
		enabled:       norm.Enabled,
		ignorePorts:   norm.IgnoreDestinationPorts,
		wakeOnTraffic: norm.WakeOnTraffic,
	}
	if norm.IdleTimeout != "" {
		if c.idleTimeout, err = time.ParseDuration(norm.IdleTimeout); err != nil {
			return nil, fmt.Errorf("parse normalized auto-standby idle timeout: %w", err)
		}
	}
	if norm.MinUptime != "" {
		if c.minUptime, err = time.ParseDuration(norm.MinUptime); err != nil {
			return nil, fmt.Errorf("parse normalized auto-standby min uptime: %w", err)
		}
	}
	for _, text := range norm.IgnoreSourceCIDRs {
		prefix, err := netip.ParsePrefix(text)
		if err != nil {
			return nil, fmt.Errorf("parse normalized auto-standby source CIDR %q: %w", text, err)
		}
		c.ignoreSources = append(c.ignoreSources, prefix)
	}
	for _, text := range norm.WakeSourceCIDRs {
		prefix, err := netip.ParsePrefix(text)
		if err != nil {
			return nil, fmt.Errorf("parse normalized auto-standby wake source CIDR %q: %w", text, err)
		}
		c.wakeSources = append(c.wakeSources, prefix)
	}
	if len(norm.Protocols) == 0 {
		c.tcp = true
	}
	for _, name := range norm.Protocols {
		switch name {
		case ProtocolTCP:
			c.tcp = true
		case ProtocolUDP:
			c.udp = true
		}
	}
	return c, nil
}
