package autostandby

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Backoff of a failed runtime write: a store that is briefly unavailable must not lose
// the countdown (a restart would then resume a stale one), nor be hammered.
const (
	persistRetryInitial = time.Second
	persistRetryMax     = 30 * time.Second
)

// persister writes runtimes off the decision path: latest value wins per instance, and
// writes for one instance happen in order because a single goroutine does them. A
// failed write is retried with a doubling backoff until it lands or a newer value for
// the instance replaces it.
type persister struct {
	store   InstanceStore
	log     *slog.Logger
	onError func(context.Context)
	// retryInitial and retryMax bound the backoff (tests shorten them).
	retryInitial, retryMax time.Duration

	mu      sync.Mutex
	pending map[string]*Runtime
	order   []string
	// retries holds the latest failed value per instance until it is due again;
	// fails counts consecutive failures per instance, for the backoff.
	retries map[string]persistRetry
	fails   map[string]int
	wake    chan struct{}
}

type persistRetry struct {
	rt *Runtime
	at time.Time
}

func newPersister(store InstanceStore, log *slog.Logger, onError func(context.Context)) *persister {
	return &persister{store: store, log: log, onError: onError,
		retryInitial: persistRetryInitial, retryMax: persistRetryMax,
		pending: map[string]*Runtime{}, retries: map[string]persistRetry{}, fails: map[string]int{},
		wake: make(chan struct{}, 1)}
}

// enqueue replaces any write still pending or waiting for a retry for id.
func (p *persister) enqueue(id string, rt *Runtime) {
	p.mu.Lock()
	if _, queued := p.pending[id]; !queued {
		p.order = append(p.order, id)
	}
	p.pending[id] = rt
	delete(p.retries, id)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// drop forgets a pending write (the instance was deleted).
func (p *persister) drop(id string) {
	p.mu.Lock()
	delete(p.pending, id)
	delete(p.retries, id)
	delete(p.fails, id)
	p.mu.Unlock()
}

// failed schedules a retry of rt for id, unless a newer value is already pending.
func (p *persister) failed(id string, rt *Runtime) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fails[id]++
	if _, newer := p.pending[id]; newer {
		return 0
	}
	delay := p.retryInitial
	for i := 1; i < p.fails[id] && delay < p.retryMax; i++ {
		delay *= 2
	}
	delay = min(delay, p.retryMax)
	p.retries[id] = persistRetry{rt: rt, at: time.Now().Add(delay)}
	return delay
}

func (p *persister) succeeded(id string) {
	p.mu.Lock()
	delete(p.fails, id)
	p.mu.Unlock()
}

// promoteDue queues the retries due by now (all of them with all set) and returns how
// long until the next one (0 when none is left).
func (p *persister) promoteDue(now time.Time, all bool) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var next time.Duration
	for id, r := range p.retries {
		if wait := r.at.Sub(now); wait > 0 && !all {
			if next == 0 || wait < next {
				next = wait
			}
			continue
		}
		delete(p.retries, id)
		if _, queued := p.pending[id]; !queued {
			p.order = append(p.order, id)
			p.pending[id] = r.rt
		}
	}
	return next
}

func (p *persister) next() (string, *Runtime, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.order) > 0 {
		id := p.order[0]
		p.order = p.order[1:]
		if rt, ok := p.pending[id]; ok {
			delete(p.pending, id)
			return id, rt, true
		}
	}
	return "", nil, false
}

// run writes until ctx ends, then flushes what is pending (failed writes included, once
// more) for up to two seconds.
func (p *persister) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			p.promoteDue(time.Now(), true)
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			p.writeAll(flush)
			cancel()
			return
		case <-p.wake:
		case <-timer.C:
		}
		p.promoteDue(time.Now(), false)
		p.writeAll(ctx)
		timer.Stop()
		if next := p.promoteDue(time.Now(), false); next > 0 {
			timer.Reset(next)
		} else if p.hasPending() {
			timer.Reset(0)
		}
	}
}

func (p *persister) hasPending() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending) > 0
}

func (p *persister) writeAll(ctx context.Context) {
	for ctx.Err() == nil {
		id, rt, ok := p.next()
		if !ok {
			return
		}
		if err := p.store.SetRuntime(ctx, id, rt); err != nil {
			p.onError(ctx)
			retryIn := p.failed(id, rt)
			p.log.Warn("auto-standby failed to persist runtime", "instance_id", id, "error", err,
				"retry_in", retryIn)
			continue
		}
		p.succeeded(id)
	}
}
