package autostandby

import (
	"slices"
	"testing"
)

func TestWakeSourceCIDRsAreNormalizedClonedAndValidated(t *testing.T) {
	p := &Policy{Enabled: true, IdleTimeout: "1m", WakeOnTraffic: true,
		WakeSourceCIDRs: []string{" 203.0.113.9/24", "", "10.1.2.3/8", "10.0.0.0/8"}}
	norm, err := NormalizePolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.0/8", "203.0.113.0/24"}; !slices.Equal(norm.WakeSourceCIDRs, want) {
		t.Fatalf("wake_source_cidrs = %v, want %v", norm.WakeSourceCIDRs, want)
	}
	clone := p.Clone()
	clone.WakeSourceCIDRs[0] = "changed"
	if p.WakeSourceCIDRs[0] == "changed" {
		t.Fatal("Clone shares WakeSourceCIDRs")
	}
	_, err = NormalizePolicy(&Policy{Enabled: true, IdleTimeout: "1m", WakeSourceCIDRs: []string{"10.0.0.0"}})
	var pe *PolicyError
	if !errorsAs(err, &pe) || pe.Field != "wake_source_cidrs" {
		t.Fatalf("error = %v, want a wake_source_cidrs PolicyError", err)
	}
	if got := err.Error(); got != `auto_standby.wake_source_cidrs contains invalid CIDR "10.0.0.0": netip.ParsePrefix("10.0.0.0"): no '/'` {
		t.Fatalf("error text = %q", got)
	}
}
