package autostandby

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// persister writes runtimes off the decision path: latest value wins per instance, and
// writes for one instance happen in order because a single goroutine does them.
type persister struct {
	store   InstanceStore
	log     *slog.Logger
	onError func(context.Context)

	mu      sync.Mutex
	pending map[string]*Runtime
	order   []string
	wake    chan struct{}
}

func newPersister(store InstanceStore, log *slog.Logger, onError func(context.Context)) *persister {
	return &persister{store: store, log: log, onError: onError,
		pending: map[string]*Runtime{}, wake: make(chan struct{}, 1)}
}

// enqueue replaces any write still pending for id.
func (p *persister) enqueue(id string, rt *Runtime) {
	p.mu.Lock()
	if _, queued := p.pending[id]; !queued {
		p.order = append(p.order, id)
	}
	p.pending[id] = rt
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
	p.mu.Unlock()
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

// run writes until ctx ends, then flushes what is pending for up to two seconds.
func (p *persister) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			p.writeAll(flush)
			cancel()
			return
		case <-p.wake:
			p.writeAll(ctx)
		}
	}
}

func (p *persister) writeAll(ctx context.Context) {
	for ctx.Err() == nil {
		id, rt, ok := p.next()
		if !ok {
			return
		}
		if err := p.store.SetRuntime(ctx, id, rt); err != nil {
			p.onError(ctx)
			p.log.Warn("auto-standby failed to persist runtime", "instance_id", id, "error", err)
		}
	}
}
