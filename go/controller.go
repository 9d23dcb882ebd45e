package autostandby

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// Controller puts idle instances into Standby, with hypeman's controller's shape: the
// library decides (from conntrack), the Controller carries its decisions out against
// an InstanceStore and keeps the library told about instance lifecycle changes.
//
// A nil *Controller is valid: Describe and HoldStandby then report "unsupported".
type Controller struct {
	store        InstanceStore
	eng          engine
	opts         ControllerOptions
	log          *slog.Logger
	tracer       trace.Tracer
	metrics      *metrics
	trackingMode string
	slots        chan struct{}
	persist      *persister
	// now is the controller's clock (ControllerOptions.Now; hypeman's field name).
	now func() time.Time
	// manual is the library's manual-mode input; nil in kernel mode.
	manual manualEngine
	// feed drives the library from a caller's ConnectionSource; nil otherwise.
	feed *sourceFeed
	// unavailable says why the library could not be created (nil when it was).
	unavailable error
	// standbyWG counts the standby and restore workers (hypeman's field name).
	standbyWG sync.WaitGroup

	// regMu orders registrations; mu guards the maps below and is never held across
	// a library call.
	regMu   sync.Mutex
	mu      sync.Mutex
	byID    map[string]*tracked
	byKey   map[uint64]*tracked
	nextKey uint64
	// standbys holds the keys whose standby decision is being carried out.
	standbys map[uint64]bool
	// wakes holds the IDs being restored.
	wakes map[string]bool

	inFlight  atomic.Int64
	queued    atomic.Int64
	running   atomic.Bool
	closeOnce sync.Once
}

// tracked is one instance the library knows under a key.
type tracked struct {
	id          string
	key         uint64
	registered  bool
	idleTimeout string
	// version is the newest Instance.Version applied (0: none known).
	version uint64
}

// NewController creates the controller for source, as hypeman's constructor does:
// NewConntrackSource() (the library watches the host's conntrack table), a
// NewManualSource, or any other ConnectionSource, which then drives the library in
// manual mode. It never fails: where the library cannot be created, the error is
// logged, Run keeps running without deciding anything, and Describe reports
// "unsupported" (library not built in) or "error"/"observer_error". New returns that
// error instead. Call Run to start it and Close to free the library once Run has
// returned.
func NewController(store InstanceStore, source ConnectionSource, opts ControllerOptions) *Controller {
	c, err := New(store, source, opts)
	if err != nil && c != nil {
		c.log.Error("auto-standby library unavailable", "error", err)
	}
	return c
}

// New is NewController returning the library's creation error as well. The controller
// is returned even then (degraded as NewController describes), except for a nil store.
func New(store InstanceStore, source ConnectionSource, opts ControllerOptions) (*Controller, error) {
	if store == nil {
		return nil, errors.New("autostandby: nil InstanceStore")
	}
	opts = opts.withDefaults()
	cfg := binding.Config{MaxConcurrentStandbys: uint32(opts.MaxConcurrentStandbys),
		MaxConcurrentRestores: uint32(opts.MaxConcurrentRestores)}
	if opts.StandbyRetryBackoff {
		cfg.StandbyRetry = binding.StandbyRetryBackoff
	}
	mode := TrackingModeConntrack
	var feed *sourceFeed
	switch src := source.(type) {
	case nil:
		return nil, errors.New("autostandby: nil ConnectionSource")
	case *ConntrackSource:
		cfg.NetnsPath = src.opts.NetnsPath
		cfg.ReceiveBufferBytes = src.opts.ReceiveBufferBytes
		cfg.ResyncInterval = src.opts.ResyncInterval
		cfg.SetEventsSysctl = src.opts.EnableConntrackEvents
		cfg.HoldPacketsInStandby = src.opts.HoldPacketsInStandby
		cfg.HoldResolveWindow = src.opts.HoldResolveWindow
	case *ManualSource:
		cfg.Mode, cfg.ManualStart = binding.ModeManual, src.start
		mode = TrackingModeManual
	default:
		// The library's clock starts just behind Now, so instances registered at once
		// are seeded before any deadline of theirs can fire (see startupResync).
		start := opts.Now().Truncate(time.Millisecond).Add(-time.Millisecond)
		cfg.Mode, cfg.ManualStart, cfg.ConfirmBeforeStandby = binding.ModeManual, start, true
		feed = &sourceFeed{source: source, libNow: start}
	}
	eng, err := binding.New(cfg)
	c := newController(store, engineOrNone(eng, err), mode, opts)
	if err != nil {
		c.unavailable = err
		if errors.Is(err, binding.ErrUnsupported) {
			c.unavailable = ErrUnsupported
		}
		return c, c.unavailable
	}
	if cfg.Mode == binding.ModeManual {
		c.manual = eng
	}
	c.feed = feed
	return c, nil
}

func engineOrNone(eng *binding.Controller, err error) engine {
	if err != nil {
		return unavailableEngine{err: err}
	}
	return eng
}

func newController(store InstanceStore, eng engine, mode string, opts ControllerOptions) *Controller {
	opts = opts.withDefaults()
	c := &Controller{
		store:        store,
		eng:          eng,
		opts:         opts,
		now:          opts.Now,
		log:          opts.Log.With("tracking_mode", mode),
		tracer:       opts.Tracer,
		trackingMode: mode,
		slots:        make(chan struct{}, opts.MaxConcurrentStandbys),
		byID:         map[string]*tracked{},
		byKey:        map[uint64]*tracked{},
		standbys:     map[uint64]bool{},
		wakes:        map[string]bool{},
	}
	if c.tracer == nil {
		c.tracer = noop.NewTracerProvider().Tracer("hypeman/autostandby")
	}
	c.persist = newPersister(store, c.log, func(ctx context.Context) { c.metrics.controllerError(ctx, opPersistRT) })
	m, err := newMetrics(opts.Meter, c.gaugeSnapshot)
	if err != nil {
		c.log.Warn("auto-standby metrics disabled", "error", err)
	}
	c.metrics = m
	return c
}

// Close frees the library controller and joins its threads. Calls made afterwards
// (including a Run still going) fail with a shutdown error; a Controller left unclosed
// is freed by a cleanup when it becomes unreachable.
func (c *Controller) Close() {
	if c == nil {
		return
	}
	c.closeOnce.Do(c.eng.Close)
}

// Run subscribes to lifecycle events, registers every instance with the library, and
// carries out the library's decisions until ctx is cancelled or the event channel is
// closed. Queued standbys are abandoned on exit; executing ones see a cancelled context
// and are waited for. Without the library (see NewController) it only waits for ctx.
func (c *Controller) Run(ctx context.Context) error {
	if c == nil {
		return ErrUnsupported
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("auto-standby controller is already running")
	}
	defer c.running.Store(false)

	c.log.Info("auto-standby controller started",
		"snapshot_sync_interval", c.opts.SnapshotSyncInterval,
		"max_concurrent_standbys", c.opts.MaxConcurrentStandbys,
		"dry_run", c.opts.DryRun)
	if c.unavailable != nil {
		c.log.Error("auto-standby library unavailable; no instance will be put into standby",
			"error", c.unavailable)
		<-ctx.Done()
		return nil
	}

	// Subscribe before listing, so no lifecycle event falls between the two.
	events, unsubscribe, err := c.store.SubscribeInstanceEvents()
	if err != nil {
		return fmt.Errorf("subscribe instance events: %w", err)
	}

	// Workers are waited for last, once nothing is left that could start one.
	defer c.standbyWG.Wait()
	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer unsubscribe()

	wg.Go(func() { c.persist.run(runCtx) })
	wg.Go(func() { c.pollLoop(runCtx) })
	if c.feed != nil {
		// The stream is opened before the first listing, so no event falls between.
		stream := c.openStream(runCtx)
		wg.Go(func() { c.observe(runCtx, stream) })
	}

	var retry <-chan time.Time
	if err := c.startupResync(runCtx); err != nil {
		retry = time.After(c.opts.RetryDelay)
	}
	syncTicker := time.NewTicker(c.opts.SnapshotSyncInterval)
	defer syncTicker.Stop()
	logs := time.NewTicker(c.opts.LogDrainInterval)
	defer logs.Stop()
	defer c.drainLogs()

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if err := c.handleInstanceEvent(runCtx, ev); err != nil {
				c.metrics.controllerError(runCtx, opInstanceEvent)
				c.log.Warn("auto-standby instance event handling failed",
					"action", string(ev.Action), "instance_id", ev.InstanceID, "error", err)
			}
		case <-retry:
			retry = nil
			if err := c.startupResync(runCtx); err != nil {
				retry = time.After(c.opts.RetryDelay)
			}
		case <-syncTicker.C:
			if err := c.periodicSnapshotSync(runCtx); err != nil {
				c.metrics.controllerError(runCtx, opSnapshotSync)
				c.log.Warn("auto-standby periodic snapshot sync failed", "error", err)
			} else {
				c.log.Debug("auto-standby periodic snapshot sync completed")
			}
		case <-logs.C:
			c.drainLogs()
		}
	}
}

// startupResync lists the instances and registers them; with a caller's
// ConnectionSource it then lists the flows (a failure there marks the observer failed,
// as hypeman does). A failure is logged and counted once; Run retries it after
// RetryDelay.
func (c *Controller) startupResync(ctx context.Context) error {
	ctx, span := c.tracer.Start(ctx, "AutoStandbyStartupResync")
	defer span.End()
	start := time.Now()
	err := c.syncInstances(ctx)
	if err == nil && c.feed != nil {
		// Registered and seeded at the library's time, and only then is its clock moved
		// to Now: a deadline already due is answered by its own confirmation listing
		// (handleStandbyTimer without Run), not by this seeding one.
		if err = c.resyncAtLibraryTime(ctx); err != nil {
			c.setObserverError(err)
		} else if c.feed.streamUp.Load() {
			c.setObserverError(nil)
		}
		c.syncClock(c.now())
	}
	c.settleIfStepping(ctx)
	c.metrics.resyncDone(ctx, time.Since(start).Seconds(), err == nil)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		c.metrics.controllerError(ctx, opStartupResync)
		c.log.Error("auto-standby startup resync failed", "error", err, "retry_in", c.opts.RetryDelay)
		return err
	}
	c.mu.Lock()
	n := len(c.byID)
	c.mu.Unlock()
	c.log.Info("auto-standby startup resync seeded state", "instances", n)
	return nil
}

// periodicSnapshotSync re-reads the instance list (and, with a caller's
// ConnectionSource, the flows) and reconciles the library with it.
func (c *Controller) periodicSnapshotSync(ctx context.Context) error {
	err := c.syncInstances(ctx)
	if err == nil && c.feed != nil {
		err = c.resyncFromSource(ctx)
	}
	c.settleIfStepping(ctx)
	return err
}

// syncInstances registers or updates every listed instance and forgets those no
// longer listed. One bad instance does not stop the others.
func (c *Controller) syncInstances(ctx context.Context) error {
	list, err := c.store.ListInstances(ctx)
	if err != nil {
		return fmt.Errorf("list instances: %w", err)
	}
	seen := make(map[string]bool, len(list))
	for i := range list {
		inst := &list[i]
		seen[inst.ID] = true
		if err := c.upsert(inst); err != nil {
			c.log.Warn("auto-standby periodic snapshot sync failed for instance",
				"instance_id", inst.ID, "error", err)
		}
	}
	c.mu.Lock()
	var gone []string
	for id := range c.byID {
		if !seen[id] {
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	for _, id := range gone {
		c.forget(id)
	}
	return nil
}

// handleInstanceEvent applies one lifecycle event. With a caller's ConnectionSource the
// flows are listed again afterwards, so a new address's flows are known at once.
func (c *Controller) handleInstanceEvent(ctx context.Context, ev InstanceEvent) error {
	defer c.settleIfStepping(ctx)
	if ev.Action == InstanceEventDelete {
		c.forget(ev.InstanceID)
		return nil
	}
	if ev.Instance == nil {
		return nil
	}
	if err := c.upsert(ev.Instance); err != nil {
		return err
	}
	if c.feed != nil {
		return c.resyncFromSource(ctx)
	}
	return nil
}

// instanceSpec converts an instance for the library. An error leaves everything as it
// was (a refresh that fails does not cancel a queued standby).
func instanceSpec(inst *Instance) (*binding.Instance, string, error) {
	policy, err := compilePolicy(inst.AutoStandby)
	if err != nil {
		return nil, "", err
	}
	spec := &binding.Instance{
		Lifecycle:      lifecycleOf(inst.State),
		NetworkEnabled: inst.NetworkEnabled,
		HasVGPU:        inst.HasVGPU,
	}
	var timeout string
	if policy != nil {
		spec.Policy = &binding.Policy{
			Enabled:           policy.enabled,
			IdleTimeout:       policy.idleTimeout,
			IgnoreSourceCIDRs: policy.ignoreSources,
			WakeSourceCIDRs:   policy.wakeSources,
			TCP:               policy.tcp,
			UDP:               policy.udp,
			WakeOnTraffic:     policy.wakeOnTraffic,
			MinUptime:         policy.minUptime,
		}
		for _, port := range policy.ignorePorts {
			spec.Policy.IgnoreDestinationPorts = append(spec.Policy.IgnoreDestinationPorts, uint32(port))
		}
		if policy.idleTimeout > 0 {
			timeout = policy.idleTimeout.String()
		}
	}
	for _, text := range append([]string{inst.IP}, inst.ExtraIPs...) {
		if text == "" {
			continue
		}
		addr, err := netip.ParseAddr(text)
		if err != nil {
			return nil, "", fmt.Errorf("parse instance IP %q: %w", text, err)
		}
		if err := usableAddr(addr); err != nil {
			return nil, "", fmt.Errorf("instance IP %q: %w", text, err)
		}
		// Only an instance that runs, or may be woken, owns its addresses; a stopped
		// one may share them with a newer instance.
		if spec.Lifecycle == binding.LifecycleRunning || spec.Lifecycle == binding.LifecycleStandby {
			spec.Addresses = append(spec.Addresses, addr.Unmap())
		}
	}
	if rt := inst.Runtime; rt != nil {
		if rt.IdleSince != nil {
			spec.Runtime.IdleSince = *rt.IdleSince
		}
		if rt.LastInboundActivityAt != nil {
			spec.Runtime.LastInboundActivityAt = *rt.LastInboundActivityAt
		}
	}
	return spec, timeout, nil
}

// errUnusableAddr: the library refuses the same addresses (INVALID_ARGUMENT).
var errUnusableAddr = errors.New("cannot be an instance address (unspecified, loopback, multicast and broadcast addresses are refused)")

// usableAddr says whether addr can be a guest's address: the library's own rule, checked
// here too so that Describe, HoldStandby and the sync give the same answer.
func usableAddr(addr netip.Addr) error {
	a := addr.Unmap()
	if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return errUnusableAddr
	}
	return nil
}

func lifecycleOf(state string) binding.Lifecycle {
	switch state {
	case StateRunning:
		return binding.LifecycleRunning
	case StateStandby:
		return binding.LifecycleStandby
	case StateStopped:
		return binding.LifecycleStopped
	}
	return binding.LifecycleOther
}

// upsert tells the library about inst, registering it on first sight. Library calls
// are made outside c.mu, so Describe never waits behind one; regMu keeps registrations
// of the same instance in order.
func (c *Controller) upsert(inst *Instance) error {
	spec, timeout, err := instanceSpec(inst)
	if err != nil {
		return err
	}
	c.regMu.Lock()
	defer c.regMu.Unlock()
	c.mu.Lock()
	t := c.byID[inst.ID]
	if t != nil && inst.Version != 0 && inst.Version < t.version {
		// A snapshot older than one already applied (a "start" delivered after its
		// "stop"): applying it would roll the library back to a state that is over.
		applied := t.version
		c.mu.Unlock()
		c.log.Debug("auto-standby ignored a stale instance snapshot",
			"instance_id", inst.ID, "version", inst.Version, "applied_version", applied)
		return nil
	}
	if t == nil {
		c.nextKey++
		t = &tracked{id: inst.ID, key: c.nextKey}
		c.byID[inst.ID] = t
		c.byKey[t.key] = t
	}
	// Set before the library call: the library may emit decisions for this spec (and
	// their log lines read the timeout) before the call returns.
	key, registered, prevTimeout := t.key, t.registered, t.idleTimeout
	t.idleTimeout = timeout
	c.mu.Unlock()

	if registered {
		err = c.eng.Update(key, spec)
		if binding.CodeOf(err) == binding.ErrNotFound {
			err = c.eng.Register(key, spec)
		}
	} else {
		err = c.eng.Register(key, spec)
		if binding.CodeOf(err) == binding.ErrAlreadyExists {
			err = c.eng.Update(key, spec)
		}
	}
	c.mu.Lock()
	if err != nil {
		t.idleTimeout = prevTimeout
	} else {
		t.registered = true
		t.version = max(t.version, inst.Version)
	}
	c.mu.Unlock()
	return err
}

// forget unregisters an instance and drops its pending writes.
func (c *Controller) forget(id string) { c.forgetKey(id, 0) }

// forgetKey forgets id only while it is still registered under key (any key when key
// is 0): an instance deleted and re-created under the same ID while a call for the old
// one ran has a new key, and the old call's outcome must not forget it.
func (c *Controller) forgetKey(id string, key uint64) {
	c.regMu.Lock()
	defer c.regMu.Unlock()
	c.mu.Lock()
	t := c.byID[id]
	if t != nil && (key == 0 || t.key == key) {
		delete(c.byID, id)
		delete(c.byKey, t.key)
	} else {
		t = nil
	}
	c.mu.Unlock()
	if t == nil {
		return
	}
	c.persist.drop(id)
	if t.registered {
		if err := c.eng.Unregister(t.key); err != nil && binding.CodeOf(err) != binding.ErrNotFound {
			c.log.Warn("auto-standby could not forget instance", "instance_id", id, "error", err)
		}
	}
}

func (c *Controller) lookupKey(key uint64) (*tracked, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.byKey[key]
	if !ok {
		return nil, false
	}
	copy := *t
	return &copy, true
}

func (c *Controller) lookupID(id string) (*tracked, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.byID[id]
	if !ok || !t.registered {
		return nil, false
	}
	copy := *t
	return &copy, true
}

// pollLoop waits for the library's decisions and dispatches them.
func (c *Controller) pollLoop(ctx context.Context) {
	buf := make([]binding.Decision, 64)
	for ctx.Err() == nil {
		n, err := c.eng.PollDecisions(buf, defaultPollTimeout)
		if err != nil {
			switch binding.CodeOf(err) {
			case binding.ErrShutdown:
				return
			case binding.ErrPoisoned, binding.ErrPanic:
				// The library handle is unusable from now on: say so once, loudly.
				c.metrics.controllerError(ctx, opPoll)
				c.log.Error("auto-standby library failed; no further standby decisions", "error", err)
				return
			}
			c.metrics.controllerError(ctx, opPoll)
			c.log.Error("auto-standby could not poll decisions", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(c.opts.RetryDelay):
			}
			continue
		}
		c.dispatchAll(ctx, buf[:n])
	}
}

// settleIfStepping dispatches the library's ready decisions in the calling goroutine
// when Run is not running, so the unexported step functions (what hypeman's own tests
// drive) see their effects, runtime writes included, when they return.
func (c *Controller) settleIfStepping(ctx context.Context) {
	// Nor once ctx has ended: a standby dispatched with it would only be handed back,
	// and decided again, for ever.
	if c.running.Load() || ctx.Err() != nil {
		return
	}
	buf := make([]binding.Decision, 64)
	for {
		n, err := c.eng.PollDecisions(buf, 0)
		if err != nil || n == 0 {
			break
		}
		c.dispatchAll(ctx, buf[:n])
	}
	c.persist.writeAll(ctx)
}

// dispatchAll carries out a batch of decisions. Confirmations are answered together,
// from one listing of the caller's ConnectionSource.
func (c *Controller) dispatchAll(ctx context.Context, ds []binding.Decision) {
	var confirms []uint64
	for _, d := range ds {
		if d.Kind == binding.DecisionConfirm {
			confirms = append(confirms, d.Key)
			continue
		}
		c.dispatch(ctx, d)
	}
	if len(confirms) > 0 {
		c.confirm(ctx, confirms)
	}
}

func (c *Controller) dispatch(ctx context.Context, d binding.Decision) {
	t, ok := c.lookupKey(d.Key)
	if !ok {
		// The instance was forgotten after the decision was made: hand the decision
		// back, or its concurrency slot stays taken (an error only says the library
		// forgot the instance too, which freed the slot).
		if d.Kind == binding.DecisionStandby {
			_ = c.eng.DeclineStandby(d.Key)
		}
		return
	}
	switch d.Kind {
	case binding.DecisionPersistRuntime:
		var rt *Runtime
		if d.RuntimePresent {
			rt = runtimeFromBinding(d.Runtime)
		}
		// hypeman's log lines for these transitions, derived from what is persisted.
		switch {
		case rt != nil && rt.IdleSince != nil:
			c.log.Info("auto-standby idle countdown started", "instance_id", t.id,
				"idle_since", *rt.IdleSince, "idle_timeout", t.idleTimeout)
		case rt != nil && rt.LastInboundActivityAt != nil:
			c.log.Debug("auto-standby inbound activity observed", "instance_id", t.id,
				"last_inbound_activity_at", *rt.LastInboundActivityAt)
		}
		if c.opts.DryRun {
			c.log.Debug("auto-standby dry run: would persist runtime", "instance_id", t.id)
			return
		}
		c.persist.enqueue(t.id, rt)
	case binding.DecisionStandby:
		c.mu.Lock()
		if c.standbys[d.Key] {
			c.mu.Unlock()
			// A worker for this instance is finishing an earlier decision: hand this
			// one back so its slot is freed; the library decides again if still due.
			c.decline(t)
			return
		}
		c.standbys[d.Key] = true
		c.mu.Unlock()
		c.log.Info("auto-standby standby timer fired", "instance_id", t.id, "idle_timeout", t.idleTimeout)
		c.queued.Add(1)
		c.standbyWG.Go(func() { c.standbyWorker(ctx, t) })
	case binding.DecisionWake:
		c.wake(ctx, t, d)
	}
}

// standbyWorker waits for a slot, then carries out one standby decision.
func (c *Controller) standbyWorker(ctx context.Context, t *tracked) {
	// Last, once this decision is off the books: a freed slot may start the next
	// queued standby (abandoned if ctx has ended).
	defer c.settleIfStepping(ctx)
	defer func() {
		c.mu.Lock()
		delete(c.standbys, t.key)
		c.mu.Unlock()
	}()
	select {
	case c.slots <- struct{}{}:
		c.queued.Add(-1)
	case <-ctx.Done():
		c.queued.Add(-1)
		// Run is ending: hand the decision back so the next Run gets it again.
		c.decline(t)
		return
	}
	defer func() { <-c.slots }()
	if ctx.Err() != nil {
		c.decline(t)
		return
	}
	c.executeStandby(ctx, t)
}

// decline hands a taken standby decision back to the library without beginning it:
// every decision dropped unanswered would otherwise keep one of the library's
// MaxConcurrentStandbys slots for good.
func (c *Controller) decline(t *tracked) {
	if err := c.eng.DeclineStandby(t.key); err != nil {
		c.log.Debug("auto-standby could not hand back a standby decision", "instance_id", t.id, "error", err)
	}
}

func (c *Controller) executeStandby(ctx context.Context, t *tracked) {
	ctx, span := c.tracer.Start(ctx, "AutoStandbyStandbyAttempt",
		trace.WithAttributes(attribute.String("instance_id", t.id)))
	defer span.End()

	if !c.stillRunning(ctx, t) {
		return
	}
	proceed, reason, err := c.eng.BeginStandby(t.key)
	if err != nil {
		c.metrics.controllerError(ctx, opStandby)
		c.log.Warn("auto-standby could not begin standby", "instance_id", t.id, "error", err)
		return
	}
	if !proceed {
		c.metrics.attempt(ctx, attemptCancelled)
		c.log.Info("auto-standby standby cancelled before it started",
			"instance_id", t.id, "reason", string(reasonFromCode(reason)))
		return
	}
	c.inFlight.Add(1)
	defer c.inFlight.Add(-1)

	if c.opts.DryRun {
		c.metrics.attempt(ctx, attemptDryRun)
		c.log.Info("auto-standby dry run: would put instance into standby",
			"instance_id", t.id, "idle_timeout", t.idleTimeout)
		// The instance stays up: report it like a failure so the library retries later.
		c.report(t, binding.OutcomeFailed)
		return
	}

	err = c.store.StandbyInstance(ctx, t.id)
	switch {
	case err == nil:
		c.metrics.attempt(ctx, attemptSuccess)
		c.log.Info("instance entered standby due to inbound inactivity",
			"instance_id", t.id, "idle_timeout", t.idleTimeout)
		c.report(t, binding.OutcomeSuccess)
	case errors.Is(err, ErrInstanceNotFound):
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		c.metrics.attempt(ctx, attemptError)
		c.metrics.controllerError(ctx, opStandby)
		c.log.Info("auto-standby target instance no longer exists, dropping state", "instance_id", t.id)
		c.report(t, binding.OutcomeNotFound)
		c.forgetKey(t.id, t.key)
	default:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		c.metrics.attempt(ctx, attemptError)
		c.metrics.controllerError(ctx, opStandby)
		c.log.Warn("auto-standby standby attempt failed", "instance_id", t.id, "error", err)
		c.report(t, binding.OutcomeFailed)
	}
}

// stillRunning re-reads the instance right before its standby. One that is not Running
// (a stale event made the library think it was) is declined: the fresh state goes to
// the library, which cancels the standby it decided (no report is due for a standby
// not begun). A failed read does not block the standby: the store's own checks apply.
func (c *Controller) stillRunning(ctx context.Context, t *tracked) bool {
	var fresh *Instance
	var err error
	if g, ok := c.store.(InstanceGetter); ok {
		fresh, err = g.GetInstance(ctx, t.id)
	} else {
		var list []Instance
		if list, err = c.store.ListInstances(ctx); err == nil {
			err = ErrInstanceNotFound
			for i := range list {
				if list[i].ID == t.id {
					fresh, err = &list[i], nil
					break
				}
			}
		}
	}
	switch {
	case errors.Is(err, ErrInstanceNotFound):
		c.log.Info("auto-standby target instance no longer exists, dropping state", "instance_id", t.id)
		c.forgetKey(t.id, t.key)
		return false
	case err != nil:
		c.log.Warn("auto-standby could not re-read instance before standby", "instance_id", t.id, "error", err)
		return true
	case fresh.State == StateRunning:
		return true
	}
	c.metrics.attempt(ctx, attemptCancelled)
	c.log.Info("auto-standby standby declined: instance is no longer running",
		"instance_id", t.id, "state", fresh.State)
	if err := c.upsert(fresh); err != nil {
		c.log.Warn("auto-standby could not refresh instance", "instance_id", t.id, "error", err)
	}
	return false
}

func (c *Controller) report(t *tracked, outcome binding.StandbyOutcome) {
	if err := c.eng.ReportStandby(t.key, outcome); err != nil {
		c.log.Warn("auto-standby could not report standby outcome", "instance_id", t.id, "error", err)
	}
}

func (c *Controller) reportWake(t *tracked, outcome binding.WakeOutcome) {
	if err := c.eng.ReportWake(t.key, outcome); err != nil && binding.CodeOf(err) != binding.ErrNotFound {
		c.log.Warn("auto-standby could not report restore outcome", "instance_id", t.id, "error", err)
	}
}

// wake restores an instance on inbound traffic, when the store can.
func (c *Controller) wake(ctx context.Context, t *tracked, d binding.Decision) {
	log := c.log.With("instance_id", t.id, "client", d.Src.String(), "destination", d.Dst.String(),
		"protocol", protocolName(d.Protocol))
	restorer, ok := c.store.(InstanceRestorer)
	if !ok {
		log.Info("auto-standby inbound traffic for instance in standby; store cannot restore")
		// Every Wake holds one of the library's restore slots until reported.
		c.reportWake(t, binding.WakeDeclined)
		return
	}
	if c.opts.DryRun {
		c.metrics.wake(ctx, attemptDryRun)
		log.Info("auto-standby dry run: would restore instance on inbound traffic")
		c.reportWake(t, binding.WakeDeclined)
		return
	}
	c.mu.Lock()
	if c.wakes[t.id] {
		c.mu.Unlock()
		return
	}
	c.wakes[t.id] = true
	c.mu.Unlock()
	c.standbyWG.Go(func() {
		log.Info("auto-standby restoring instance on inbound traffic")
		err := restorer.RestoreInstance(ctx, t.id)
		// Off the books before the report: once reported failed, the library may
		// emit the next Wake for this instance at once, and it must not be dropped
		// as a duplicate (it holds a restore slot).
		c.mu.Lock()
		delete(c.wakes, t.id)
		c.mu.Unlock()
		if err != nil {
			c.metrics.wake(ctx, attemptError)
			c.metrics.controllerError(ctx, opRestore)
			log.Warn("auto-standby restore on inbound traffic failed", "error", err)
			// Told, the library shows restore_failed and lets the next connection
			// after a backoff ask again; untold, the VM would stay in Standby for good.
			c.reportWake(t, binding.WakeFailed)
			return
		}
		c.metrics.wake(ctx, attemptSuccess)
		c.reportWake(t, binding.WakeRestored)
	})
}

// drainLogs copies the library's buffered log records into the controller's logger.
func (c *Controller) drainLogs() {
	buf := make([]binding.LogRecord, 64)
	for {
		n, err := c.eng.DrainLogs(buf)
		if err != nil || n == 0 {
			return
		}
		for _, r := range buf[:n] {
			level := slog.LevelDebug
			switch r.Level {
			case binding.LevelError:
				level = slog.LevelError
			case binding.LevelWarn:
				level = slog.LevelWarn
			case binding.LevelInfo:
				level = slog.LevelInfo
			}
			c.log.Log(context.Background(), level, r.Message, "source", "libautostandby",
				"target", r.Target, "library_time", r.Time)
		}
		if n < len(buf) {
			return
		}
	}
}

// gaugeSnapshot reads what the observable instruments report.
func (c *Controller) gaugeSnapshot() gaugeSnapshot {
	s := gaugeSnapshot{phases: map[string]int64{}}
	c.mu.Lock()
	keys := make([]uint64, 0, len(c.byKey))
	for key, t := range c.byKey {
		if t.registered {
			keys = append(keys, key)
		}
	}
	c.mu.Unlock()
	for _, key := range keys {
		st, err := c.eng.Status(key)
		if err != nil {
			continue
		}
		s.phases[phaseOf(statusFromCode(st.Status), int(st.ActiveInbound))]++
		s.activeConnections += int64(st.ActiveInbound)
	}
	s.inFlight = c.inFlight.Load()
	s.queued = c.queued.Load()
	if stats, err := c.eng.Stats(); err == nil {
		s.flowEvents = int64(stats.FlowEvents)
		s.eventsLost = int64(stats.EventsLost)
		s.wakesSuppressed = stats.WakesSuppressed
		s.restoresQueued = int64(stats.RestoresQueued)
		s.restoresInFlight = int64(stats.RestoresInFlight)
		if q := int64(stats.StandbyQueued); q > s.queued {
			s.queued = q
		}
	}
	return s
}

func runtimeFromBinding(r binding.Runtime) *Runtime {
	out := &Runtime{}
	if !r.IdleSince.IsZero() {
		t := r.IdleSince.UTC()
		out.IdleSince = &t
	}
	if !r.LastInboundActivityAt.IsZero() {
		t := r.LastInboundActivityAt.UTC()
		out.LastInboundActivityAt = &t
	}
	return out
}
