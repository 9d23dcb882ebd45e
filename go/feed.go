package autostandby

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// sourceFeed is the state of a controller that drives the library in manual mode from
// a caller's ConnectionSource: hypeman's observer loop (stream, reconnect, reconcile,
// confirmation listing) in front of the library's decisions.
type sourceFeed struct {
	source   ConnectionSource
	streamUp atomic.Bool

	// clockMu orders moves of the library's clock; libNow is where it stands.
	clockMu sync.Mutex
	libNow  time.Time

	mu          sync.Mutex
	observerErr error
	// due holds the keys whose confirmation the library asked for while Run was not
	// running; handleStandbyTimer answers them, as hypeman's timer delivery would.
	due map[uint64]bool
}

// openStream opens the caller's stream; a failure marks the observer failed.
func (c *Controller) openStream(ctx context.Context) ConnectionStream {
	stream, err := c.feed.source.OpenStream(ctx)
	if err != nil {
		op := opConnect
		if c.feed.streamUp.Load() {
			op = opReconnect
		}
		c.setObserverError(err)
		c.metrics.controllerError(ctx, op)
		c.log.Warn("auto-standby conntrack subscription failed", "error", err)
		return nil
	}
	c.feed.streamUp.Store(true)
	return stream
}

// observe applies the stream's events, reopens it after ReconnectDelay when it fails
// (then lists the table again, for the events lost meanwhile), lists the table every
// ReconcileDelay while flows are tracked, and moves the library's clock to Now.
func (c *Controller) observe(ctx context.Context, stream ConnectionStream) {
	clock := time.NewTicker(clockStep)
	defer clock.Stop()
	reconcile := time.NewTicker(c.opts.ReconcileDelay)
	defer reconcile.Stop()
	var reopen <-chan time.Time
	if stream == nil {
		reopen = time.After(c.opts.ReconnectDelay)
	}
	defer func() {
		if stream != nil {
			_ = stream.Close()
		}
	}()
	fail := func(err error, op string) {
		c.setObserverError(err)
		c.metrics.controllerError(ctx, op)
		c.log.Warn("auto-standby conntrack subscription failed", "error", err)
		_ = stream.Close()
		stream = nil
		reopen = time.After(c.opts.ReconnectDelay)
	}
	for {
		var events <-chan ConnectionEvent
		var errs <-chan error
		if stream != nil {
			events, errs = stream.Events(), stream.Errors()
		}
		select {
		case <-ctx.Done():
			return
		case <-clock.C:
			c.syncClock(c.now())
		case <-reconcile.C:
			if stats, err := c.eng.Stats(); err == nil && stats.TrackedFlows > 0 {
				c.handleActiveReconcile(ctx, "")
			}
		case ev, ok := <-events:
			if !ok {
				fail(errors.New("conntrack stream closed"), opStreamClosed)
				continue
			}
			c.handleConnectionEvent(ctx, ev)
		case err := <-errs:
			if err != nil {
				fail(err, opStream)
			}
		case <-reopen:
			if stream = c.openStream(ctx); stream == nil {
				reopen = time.After(c.opts.ReconnectDelay)
				continue
			}
			reopen = nil
			c.log.Info("auto-standby conntrack subscription restored")
			if err := c.resyncFromSource(ctx); err != nil {
				c.metrics.controllerError(ctx, opStartupResync)
				c.log.Warn("auto-standby resync after subscription restore failed", "error", err)
			}
			// Healthy once the stream is back, even if that listing failed: the
			// subscription itself is live (hypeman's order).
			c.setObserverError(nil)
		}
	}
}

// syncClock moves the library's manual clock forward to t (never back).
func (c *Controller) syncClock(t time.Time) {
	if c.feed == nil {
		return
	}
	c.feed.clockMu.Lock()
	defer c.feed.clockMu.Unlock()
	d := t.Sub(c.feed.libNow).Truncate(time.Millisecond)
	if d <= 0 {
		return
	}
	if err := c.manual.AdvanceClock(d); err == nil {
		c.feed.libNow = c.feed.libNow.Add(d)
	}
}

// resyncFromSource replaces the library's flow table with the caller's listing, taken
// now.
func (c *Controller) resyncFromSource(ctx context.Context) error {
	c.syncClock(c.now())
	return c.resyncAtLibraryTime(ctx)
}

// resyncAtLibraryTime is resyncFromSource without moving the library's clock first.
func (c *Controller) resyncAtLibraryTime(ctx context.Context) error {
	conns, err := c.feed.source.ListConnections(ctx)
	if err != nil {
		return err
	}
	return c.manual.Resync(flowEvents(conns))
}

// handleConnectionEvent applies one event of a caller's stream at its ObservedAt time
// (hypeman's step function; Run's observer loop calls it for every event).
func (c *Controller) handleConnectionEvent(ctx context.Context, ev ConnectionEvent) {
	if c.manual == nil {
		return
	}
	at := ev.ObservedAt
	if at.IsZero() {
		at = c.now()
	}
	c.syncClock(at)
	kind := binding.FlowNew
	if ev.Type == ConnectionEventDestroy {
		kind = binding.FlowDestroy
	}
	if err := c.manual.Ingest([]binding.FlowEvent{ev.Connection.flowEvent(kind)}); err != nil {
		c.log.Warn("auto-standby could not apply conntrack event", "event", string(ev.Type), "error", err)
	}
	c.settleIfStepping(ctx)
}

// handleActiveReconcile lists the caller's table again and replaces the library's view
// with it, repairing missed NEW and DESTROY events (hypeman's per-instance reconcile;
// here one listing serves every instance, so id only names who asked).
func (c *Controller) handleActiveReconcile(ctx context.Context, id string) {
	if c.feed == nil {
		return
	}
	if err := c.resyncFromSource(ctx); err != nil {
		c.metrics.controllerError(ctx, opReconcile)
		c.log.Warn("auto-standby active connection reconcile failed", "instance_id", id, "error", err)
	}
	c.settleIfStepping(ctx)
}

// setObserverError marks the observer failed (err) or healthy (nil): every eligible
// instance then reports error/observer_error and none is put into Standby.
func (c *Controller) setObserverError(err error) {
	if c.feed != nil {
		c.feed.mu.Lock()
		c.feed.observerErr = err
		c.feed.mu.Unlock()
	}
	if c.manual == nil {
		return
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if lerr := c.manual.SetObserverError(msg, err != nil); lerr != nil {
		c.log.Warn("auto-standby could not report observer health", "error", lerr)
	}
}

// confirm answers the library's requests to confirm idleness right before a standby.
// Without Run they wait for handleStandbyTimer, as hypeman's timer deliveries do.
func (c *Controller) confirm(ctx context.Context, keys []uint64) {
	if c.feed == nil {
		return
	}
	if !c.running.Load() {
		c.feed.mu.Lock()
		if c.feed.due == nil {
			c.feed.due = map[uint64]bool{}
		}
		for _, key := range keys {
			c.feed.due[key] = true
		}
		c.feed.mu.Unlock()
		return
	}
	c.answerConfirms(ctx, keys)
}

// answerConfirms lists the caller's table once and answers each confirmation with it:
// flows keep the instance awake, none lets the standby go ahead, a failed listing keeps
// it awake and restarts the countdown.
func (c *Controller) answerConfirms(ctx context.Context, keys []uint64) {
	conns, err := c.feed.source.ListConnections(ctx)
	if err != nil {
		c.metrics.controllerError(ctx, opStandbyConfirm)
		c.log.Warn("auto-standby could not confirm idle before standby", "error", err)
	}
	c.syncClock(c.now())
	flows := flowEvents(conns)
	for _, key := range keys {
		if cerr := c.manual.Confirm(key, err != nil, flows); cerr != nil {
			// Superseded (a hold, activity or a lifecycle change came first).
			c.log.Debug("auto-standby confirmation not applied", "error", cerr)
		}
	}
}

// handleStandbyTimer delivers id's standby deadline while Run is not running
// (hypeman's step function, for tests): it moves the library's clock to Now and
// answers the confirmation the library asked for, which starts the standby when the
// instance is still idle. Run answers confirmations as they come and never needs it.
func (c *Controller) handleStandbyTimer(ctx context.Context, id string) {
	if c.feed == nil {
		return
	}
	c.syncClock(c.now())
	c.settleIfStepping(ctx)
	t, ok := c.lookupID(id)
	if !ok {
		return
	}
	c.feed.mu.Lock()
	due := c.feed.due[t.key]
	delete(c.feed.due, t.key)
	c.feed.mu.Unlock()
	if due {
		c.answerConfirms(ctx, []uint64{t.key})
		c.settleIfStepping(ctx)
	}
}

// observerDown reports whether observation is failing, for instances the library has
// not registered yet.
func (c *Controller) observerDown() bool {
	switch {
	case c.unavailable != nil:
		return true
	case c.feed != nil:
		c.feed.mu.Lock()
		defer c.feed.mu.Unlock()
		return c.feed.observerErr != nil
	}
	stats, err := c.eng.Stats()
	return err != nil || stats.ObserverFailed
}

// unavailableEngine stands in for a library that could not be created: every call
// fails with why.
type unavailableEngine struct{ err error }

func (u unavailableEngine) Register(uint64, *binding.Instance) error { return u.err }
func (u unavailableEngine) Update(uint64, *binding.Instance) error   { return u.err }
func (u unavailableEngine) Unregister(uint64) error                  { return u.err }
func (u unavailableEngine) PollDecisions([]binding.Decision, time.Duration) (int, error) {
	return 0, u.err
}
func (u unavailableEngine) BeginStandby(uint64) (bool, uint32, error) { return false, 0, u.err }
func (u unavailableEngine) ReportStandby(uint64, binding.StandbyOutcome) error {
	return u.err
}
func (u unavailableEngine) DeclineStandby(uint64) error                  { return u.err }
func (u unavailableEngine) ReportWake(uint64, binding.WakeOutcome) error { return u.err }
func (u unavailableEngine) Hold(uint64) (binding.Status, error)          { return binding.Status{}, u.err }
func (u unavailableEngine) Status(uint64) (binding.Status, error)        { return binding.Status{}, u.err }
func (u unavailableEngine) Explain(uint64) ([]binding.FlowInfo, error)   { return nil, u.err }
func (u unavailableEngine) Recommend(uint64, binding.RecommendQuery) (binding.Recommendation, error) {
	return binding.Recommendation{}, u.err
}
func (u unavailableEngine) Stats() (binding.Stats, error)              { return binding.Stats{}, u.err }
func (u unavailableEngine) DrainLogs([]binding.LogRecord) (int, error) { return 0, u.err }
func (u unavailableEngine) Close()                                     {}
