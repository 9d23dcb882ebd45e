//go:build e2e

package qemu

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestStandbyRestoreRealVM boots the real guest, snapshots it to a file and restores it,
// and checks it serves HTTP before and after. Run through make e2e.
func TestStandbyRestoreRealVM(t *testing.T) {
	h, err := HarnessFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm := NewVM(h.Config("cycle"))
	t.Cleanup(vm.Kill)

	bootStart := time.Now()
	if err := vm.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.WaitBooted(ctx); err != nil {
		t.Fatal(err)
	}
	if err := WaitHTTP(ctx, h.GuestHTTP()); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to first HTTP answer: %v", time.Since(bootStart).Round(time.Millisecond))

	for i := 1; i <= 2; i++ {
		sb, err := vm.Standby(ctx)
		if err != nil {
			t.Fatalf("standby %d: %v", i, err)
		}
		if vm.State() != StateStandby {
			t.Fatalf("state after standby = %s", vm.State())
		}
		st, err := os.Stat(vm.Config().SnapshotPath())
		if err != nil || st.Size() == 0 {
			t.Fatalf("snapshot file after standby %d: %v (size %d)", i, err, sb.SnapshotSize)
		}
		t.Logf("standby %d: %v, snapshot %.1f MiB", i, sb.Duration.Round(time.Millisecond), float64(sb.SnapshotSize)/(1<<20))

		rs, err := vm.Restore(ctx)
		if err != nil {
			t.Fatalf("restore %d: %v", i, err)
		}
		answerStart := time.Now()
		if err := WaitHTTP(ctx, h.GuestHTTP()); err != nil {
			t.Fatalf("after restore %d: %v", i, err)
		}
		t.Logf("restore %d: %v, then first HTTP answer after %v", i, rs.Duration.Round(time.Millisecond), time.Since(answerStart).Round(time.Millisecond))
	}
}
