package autostandby

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

func newTestPersister(t *testing.T, store *fakeStore, initial time.Duration) (*persister, *atomic.Int64) {
	t.Helper()
	var failures atomic.Int64
	p := newPersister(store, slog.New(slog.DiscardHandler), func(context.Context) { failures.Add(1) })
	p.retryInitial, p.retryMax = initial, 4*initial
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p, &failures
}

func TestPersistRetriesAFailedWriteUntilItLands(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.setFailN = 3
	p, failures := newTestPersister(t, store, 10*time.Millisecond)
	want := &Runtime{IdleSince: at(t1100)}
	p.enqueue("a", want)
	eventually(t, "the runtime lands", func() bool {
		rt := store.instance("a").Runtime
		return rt != nil && sameTime(rt.IdleSince, t1100)
	})
	if n := len(store.runtimesFor("a")); n != 4 {
		t.Fatalf("writes = %d, want 3 failures and 1 success", n)
	}
	if n := failures.Load(); n != 3 {
		t.Fatalf("failures counted = %d, want 3", n)
	}
}

func TestPersistRetryIsReplacedByANewerValue(t *testing.T) {
	store := newFakeStore(running("a", "10.0.0.2"))
	store.setErr = errors.New("disk full")
	p, failures := newTestPersister(t, store, 50*time.Millisecond)
	old := &Runtime{IdleSince: at(t1055)}
	p.enqueue("a", old)
	eventually(t, "the first write fails", func() bool { return failures.Load() >= 1 })

	store.mu.Lock()
	store.setErr = nil
	store.mu.Unlock()
	newer := &Runtime{IdleSince: at(t1100)}
	p.enqueue("a", newer)
	eventually(t, "the newer value lands", func() bool {
		rt := store.instance("a").Runtime
		return rt != nil && sameTime(rt.IdleSince, t1100)
	})
	// Long enough for the old value's retry to have fired, had it not been replaced.
	time.Sleep(200 * time.Millisecond)
	writes := store.runtimesFor("a")
	last := writes[len(writes)-1]
	if !sameTime(last.IdleSince, t1100) {
		t.Fatalf("the superseded value was written after the newer one: %+v", writes)
	}
	seenNewer := false
	for _, w := range writes {
		seenNewer = seenNewer || sameTime(w.IdleSince, t1100)
		if seenNewer && sameTime(w.IdleSince, t1055) {
			t.Fatalf("the superseded value was retried after the newer one: %d writes", len(writes))
		}
	}
}
