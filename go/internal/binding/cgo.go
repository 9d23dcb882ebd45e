//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

package binding

/*
#cgo CFLAGS: -I${SRCDIR}
#include <stdlib.h>
#include "autostandby.h"

#if AUTOSTANDBY_ABI_VERSION != 1
#error "autostandby.h has an ABI version this binding was not written for (want 1)"
#endif
*/
import "C"

import (
	"net/netip"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// abiVersion is the ABI this file was written against; checked again at run time
// against the linked library.
const abiVersion = 1

// Supported reports whether the library is linked into this build.
const Supported = true

type (
	cStatus = C.struct_autostandby_status
	cStats  = C.struct_autostandby_stats
)

// Controller owns one library controller handle. Every method is safe for concurrent
// use; Close waits for calls in progress.
type Controller struct {
	h       *handle
	cleanup runtime.Cleanup
}

// handle is separate from Controller so the leak-backstop cleanup can reach it
// without keeping the Controller alive.
type handle struct {
	mu sync.RWMutex
	p  *C.autostandby_controller
}

func (h *handle) free() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.p != nil {
		C.autostandby_controller_free(h.p)
		h.p = nil
	}
}

// Version is the linked library's version.
func Version() string { return C.GoString(C.autostandby_version()) }

// ABIVersion is the linked library's C ABI version.
func ABIVersion() uint32 { return uint32(C.autostandby_abi_version()) }

// StatusName is the wire name of a library status value, "" when unknown.
func StatusName(v uint32) string { return goStringOrEmpty(C.autostandby_status_name(C.uint32_t(v))) }

// ReasonName is the wire name of a library reason value, "" when unknown.
func ReasonName(v uint32) string { return goStringOrEmpty(C.autostandby_reason_name(C.uint32_t(v))) }

func goStringOrEmpty(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// New creates a library controller.
func New(cfg Config) (*Controller, error) {
	if got := ABIVersion(); got != abiVersion {
		return nil, &Error{Op: "abi_version", Code: ErrInvalidArgument,
			Message: "linked libautostandby has C ABI version " + uitoa(uint64(got)) + ", this binding needs " + uitoa(abiVersion)}
	}
	cc := C.autostandby_config{
		struct_size:             C.uint32_t(unsafe.Sizeof(C.autostandby_config{})),
		mode:                    C.uint32_t(cfg.Mode),
		rcvbuf_bytes:            C.size_t(max(cfg.ReceiveBufferBytes, 0)),
		max_concurrent_standbys: C.uint32_t(cfg.MaxConcurrentStandbys),
		resync_interval_ms:      C.uint64_t(durationToMillis(cfg.ResyncInterval)),
	}
	if cfg.SetEventsSysctl {
		cc.events_sysctl = 1
	}
	cc.standby_retry = C.uint32_t(cfg.StandbyRetry)
	cc.confirm_before_standby = C.bool(cfg.ConfirmBeforeStandby)
	cc.confirm_lead_ms = C.uint64_t(durationToMillis(cfg.ConfirmLead))
	cc.max_concurrent_restores = C.uint32_t(cfg.MaxConcurrentRestores)
	cc.hold_packets_in_standby = C.bool(cfg.HoldPacketsInStandby)
	cc.hold_resolve_window_ms = C.uint64_t(durationToMillis(cfg.HoldResolveWindow))
	if _, ms := timeToMillis(cfg.ManualStart); ms > 0 {
		cc.manual_start_ms = C.uint64_t(ms)
	}
	if cfg.NetnsPath != "" {
		path := C.CString(cfg.NetnsPath)
		defer C.free(unsafe.Pointer(path))
		cc.netns_path = path
	}
	var p *C.autostandby_controller
	var cerr C.autostandby_error
	if code := C.autostandby_controller_new(&cc, &p, &cerr); code != 0 {
		return nil, toError("controller_new", code, &cerr)
	}
	c := &Controller{h: &handle{p: p}}
	c.cleanup = runtime.AddCleanup(c, func(h *handle) { h.free() }, c.h)
	return c, nil
}

// Close frees the library controller (joining its threads). Later calls fail with
// ErrShutdown.
func (c *Controller) Close() {
	c.cleanup.Stop()
	c.h.free()
}

// call runs f with the live handle under the read lock.
func (c *Controller) call(op string, f func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t) error {
	c.h.mu.RLock()
	defer c.h.mu.RUnlock()
	if c.h.p == nil {
		return &Error{Op: op, Code: ErrShutdown, Message: "controller is closed"}
	}
	var cerr C.autostandby_error
	if code := f(c.h.p, &cerr); code != 0 {
		return toError(op, code, &cerr)
	}
	return nil
}

func toError(op string, code C.uint32_t, cerr *C.autostandby_error) error {
	msg := C.GoString(&cerr.message[0])
	if msg == "" {
		msg = goStringOrEmpty(C.autostandby_status_str(code))
	}
	return &Error{Op: op, Code: Code(code), Message: msg}
}

// Register adds an instance under key.
func (c *Controller) Register(key uint64, inst *Instance) error {
	var pin runtime.Pinner
	defer pin.Unpin()
	ci := instanceToC(inst, &pin)
	return c.call("register", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_register(p, C.uint64_t(key), ci, e)
	})
}

// Update replaces what the library knows about the instance under key.
func (c *Controller) Update(key uint64, inst *Instance) error {
	var pin runtime.Pinner
	defer pin.Unpin()
	ci := instanceToC(inst, &pin)
	return c.call("update", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_update(p, C.uint64_t(key), ci, e)
	})
}

// Unregister forgets the instance under key.
func (c *Controller) Unregister(key uint64) error {
	return c.call("unregister", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_unregister(p, C.uint64_t(key), e)
	})
}

// PollDecisions waits up to timeout for decisions and fills out; it returns how many.
func (c *Controller) PollDecisions(out []Decision, timeout time.Duration) (int, error) {
	if len(out) == 0 {
		return 0, nil
	}
	buf := make([]C.autostandby_decision, len(out))
	var n C.size_t
	ms := min(durationToMillis(timeout), uint64(^uint32(0)))
	err := c.call("poll_decisions", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_poll_decisions(p, &buf[0], C.size_t(len(buf)), &n, C.uint32_t(ms), e)
	})
	if err != nil {
		return 0, err
	}
	count := min(int(n), len(out))
	for i := range count {
		d := &buf[i]
		out[i] = Decision{
			Kind:           DecisionKind(d.kind),
			Key:            uint64(d.key),
			RuntimePresent: bool(d.runtime_present),
			Runtime:        runtimeFromC(&d.runtime),
			Protocol:       uint8(d.protocol),
			Src:            netip.AddrPortFrom(ipFromC(&d.src), uint16(d.src_port)),
			Dst:            netip.AddrPortFrom(ipFromC(&d.dst), uint16(d.dst_port)),
		}
	}
	return count, nil
}

// BeginStandby asks whether the standby decided for key should go ahead now.
func (c *Controller) BeginStandby(key uint64) (bool, uint32, error) {
	var proceed C.bool
	var reason C.uint32_t
	err := c.call("begin_standby", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_begin_standby(p, C.uint64_t(key), &proceed, &reason, e)
	})
	return bool(proceed), uint32(reason), err
}

// DeclineStandby hands back a taken standby decision without beginning it, freeing the
// concurrency slot it holds; the library decides again while the instance is due.
func (c *Controller) DeclineStandby(key uint64) error {
	return c.call("decline_standby", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_decline_standby(p, C.uint64_t(key), e)
	})
}

// ReportStandby reports how a begun standby ended.
func (c *Controller) ReportStandby(key uint64, outcome StandbyOutcome) error {
	return c.call("report_standby", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_report_standby(p, C.uint64_t(key), C.uint32_t(outcome), e)
	})
}

// ReportWake reports how the restore for a Wake ended. After a failure the instance's
// status is error/restore_failed, and new traffic after a backoff emits Wake again.
func (c *Controller) ReportWake(key uint64, outcome WakeOutcome) error {
	return c.call("report_wake", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_report_wake(p, C.uint64_t(key), C.uint32_t(outcome), e)
	})
}

// Hold places a hold on key and returns its status.
func (c *Controller) Hold(key uint64) (Status, error) {
	var st cStatus
	st.struct_size = C.uint32_t(unsafe.Sizeof(st))
	err := c.call("hold", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_hold(p, C.uint64_t(key), &st, e)
	})
	return statusFromC(&st), err
}

// Status returns the status of key.
func (c *Controller) Status(key uint64) (Status, error) {
	var st cStatus
	st.struct_size = C.uint32_t(unsafe.Sizeof(st))
	err := c.call("status", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_status(p, C.uint64_t(key), &st, e)
	})
	return statusFromC(&st), err
}

// Explain returns the flows keeping key awake.
func (c *Controller) Explain(key uint64) ([]FlowInfo, error) {
	capacity := 16
	for {
		buf := make([]C.autostandby_flow_info, capacity)
		var n C.size_t
		err := c.call("explain", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
			return C.autostandby_explain(p, C.uint64_t(key), &buf[0], C.size_t(len(buf)), &n, e)
		})
		if err != nil {
			return nil, err
		}
		if int(n) > capacity {
			// More flows than room: the total is in n; ask again with enough room.
			capacity = int(n)
			continue
		}
		out := make([]FlowInfo, int(n))
		for i := range out {
			f := &buf[i]
			out[i] = FlowInfo{
				Protocol:    uint8(f.protocol),
				OrigSrc:     netip.AddrPortFrom(ipFromC(&f.orig_src), uint16(f.orig_src_port)),
				OrigDst:     netip.AddrPortFrom(ipFromC(&f.orig_dst), uint16(f.orig_dst_port)),
				ReplySrc:    netip.AddrPortFrom(ipFromC(&f.reply_src), uint16(f.reply_src_port)),
				ReplyDst:    netip.AddrPortFrom(ipFromC(&f.reply_dst), uint16(f.reply_dst_port)),
				HasTCPState: bool(f.has_tcp_state),
				TCPState:    uint8(f.tcp_state),
				FirstSeen:   millisToTime(true, uint64(f.first_seen_ms)),
				Age:         time.Duration(f.age_ms) * time.Millisecond,
			}
		}
		return out, nil
	}
}

// Recommend reports what candidate idle timeouts would have done over key's observed
// idle gaps, and the timeout the rule recommends.
func (c *Controller) Recommend(key uint64, q RecommendQuery) (Recommendation, error) {
	cands := make([]C.uint64_t, len(q.Candidates))
	for i, d := range q.Candidates {
		ms := d.Milliseconds()
		if ms <= 0 {
			// Zero and negative durations are refused by the library as a 0 candidate.
			ms = 0
		}
		cands[i] = C.uint64_t(ms)
	}
	// The candidates are copied to C memory: a Go pointer may not sit inside the query
	// struct passed to C.
	var cq C.struct_autostandby_recommend_query
	cq.struct_size = C.uint32_t(unsafe.Sizeof(cq))
	cq.minutes_per_wake = C.uint32_t(q.MinutesPerWake)
	if len(cands) > 0 {
		size := C.size_t(len(cands)) * C.size_t(unsafe.Sizeof(cands[0]))
		p := (*C.uint64_t)(C.malloc(size))
		defer C.free(unsafe.Pointer(p))
		copy(unsafe.Slice(p, len(cands)), cands)
		cq.candidates_ms = p
		cq.candidates_len = C.size_t(len(cands))
	}
	var out C.struct_autostandby_recommendation
	out.struct_size = C.uint32_t(unsafe.Sizeof(out))
	buf := make([]C.struct_autostandby_timeout_outcome, C.AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES)
	var n C.size_t
	err := c.call("recommend", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_recommend(p, C.uint64_t(key), &cq, &out, &buf[0], C.size_t(len(buf)), &n, e)
	})
	if err != nil {
		return Recommendation{}, err
	}
	r := Recommendation{
		ObservedSince:  millisToTime(bool(out.has_observed_since), uint64(out.observed_since_ms)),
		Observed:       time.Duration(out.observed_ms) * time.Millisecond,
		Gaps:           uint64(out.gaps),
		HasOpenGap:     bool(out.has_open_gap),
		OpenGap:        time.Duration(out.open_gap_ms) * time.Millisecond,
		MinutesPerWake: uint32(out.minutes_per_wake),
		HasRecommended: bool(out.has_recommended),
		Recommended:    time.Duration(out.recommended_timeout_ms) * time.Millisecond,
		Outcomes:       make([]TimeoutOutcome, min(int(n), len(buf))),
	}
	for i := range r.Outcomes {
		o := &buf[i]
		r.Outcomes[i] = TimeoutOutcome{
			Timeout:         time.Duration(o.timeout_ms) * time.Millisecond,
			Standbys:        uint64(o.standbys),
			Wakes:           uint64(o.wakes),
			InStandby:       time.Duration(o.standby_ms) * time.Millisecond,
			StandbyFraction: float64(o.standby_fraction),
			Exact:           bool(o.exact),
		}
	}
	return r, nil
}

// Stats returns the library's counters.
func (c *Controller) Stats() (Stats, error) {
	var s cStats
	s.struct_size = C.uint32_t(unsafe.Sizeof(s))
	err := c.call("stats", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_stats(p, &s, e)
	})
	return Stats{
		Instances:          uint64(s.instances),
		TrackedFlows:       uint64(s.tracked_flows),
		FlowEvents:         uint64(s.flow_events),
		StandbyDecisions:   uint64(s.standby_decisions),
		WakeDecisions:      uint64(s.wake_decisions),
		StandbyInFlight:    uint64(s.standby_in_flight),
		StandbyQueued:      uint64(s.standby_queued),
		Resyncs:            uint64(s.resyncs),
		EventsLost:         uint64(s.events_lost),
		ObserverErrors:     uint64(s.observer_errors),
		UnmatchedEvents:    uint64(s.flow_events_unmatched),
		DecisionsPending:   uint64(s.decisions_pending),
		LogsDropped:        uint64(s.log_records_dropped),
		ObserverFailed:     bool(s.observer_failed),
		DecisionsMerged:    uint64(s.decisions_merged),
		ConntrackEventsOff: bool(s.conntrack_events_off),
		SuspectEnds:        uint64(s.suspect_ends),
		WakeFailures:       uint64(s.wake_failures),
		WakesSuppressed: map[string]uint64{
			"not_counted_protocol": uint64(s.wakes_suppressed_not_counted_protocol),
			"not_counted_port":     uint64(s.wakes_suppressed_not_counted_port),
			"ignored_source":       uint64(s.wakes_suppressed_ignored_source),
			"source_not_allowed":   uint64(s.wakes_suppressed_source_not_allowed),
			"restore_backoff":      uint64(s.wakes_suppressed_restore_backoff),
		},
		RestoresInFlight: uint64(s.restores_in_flight),
		RestoresQueued:   uint64(s.restores_queued),
	}, err
}

// DrainLogs moves buffered log records into out and returns how many.
func (c *Controller) DrainLogs(out []LogRecord) (int, error) {
	if len(out) == 0 {
		return 0, nil
	}
	buf := make([]C.autostandby_log_record, len(out))
	var n C.size_t
	err := c.call("drain_logs", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_drain_logs(p, &buf[0], C.size_t(len(buf)), &n, e)
	})
	if err != nil {
		return 0, err
	}
	count := min(int(n), len(out))
	for i := range count {
		r := &buf[i]
		out[i] = LogRecord{
			Level:   uint32(r.level),
			Time:    millisToTime(true, uint64(r.time_ms)),
			Target:  C.GoString(&r.target[0]),
			Message: C.GoString(&r.message[0]),
		}
	}
	return count, nil
}

// Ingest applies manual-mode flow events.
func (c *Controller) Ingest(events []FlowEvent) error {
	buf := flowEventsToC(events)
	return c.call("ingest", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_ingest(p, firstOrNil(buf), C.size_t(len(buf)), e)
	})
}

// AdvanceClock moves the manual clock forward.
func (c *Controller) AdvanceClock(delta time.Duration) error {
	return c.call("advance_clock", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_advance_clock(p, C.uint64_t(durationToMillis(delta)), e)
	})
}

// Resync hands the library a full manual-mode dump.
func (c *Controller) Resync(table []FlowEvent) error {
	buf := flowEventsToC(table)
	return c.call("resync", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_resync(p, firstOrNil(buf), C.size_t(len(buf)), e)
	})
}

// Confirm answers a DecisionConfirm for key: failed reports that the confirmation dump
// failed (flows must then be empty); otherwise flows are the instance's conntrack
// flows now, as a dump filtered to its addresses returns them (Kind is ignored; empty
// means idle, and the standby proceeds). A stale answer fails with ErrNotFound or
// ErrNoConfirmPending and changes nothing.
func (c *Controller) Confirm(key uint64, failed bool, flows []FlowEvent) error {
	outcome := C.uint32_t(C.AUTOSTANDBY_CONFIRM_OK)
	if failed {
		outcome = C.AUTOSTANDBY_CONFIRM_FAILED
	}
	buf := flowEventsToC(flows)
	return c.call("confirm", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_confirm(p, C.uint64_t(key), outcome, firstOrNil(buf), C.size_t(len(buf)), e)
	})
}

// SetObserverError marks the manual observer failed (failed=true) or healthy.
func (c *Controller) SetObserverError(message string, failed bool) error {
	var cmsg *C.char
	if failed {
		cmsg = C.CString(message)
		defer C.free(unsafe.Pointer(cmsg))
	}
	return c.call("set_observer_error", func(p *C.autostandby_controller, e *C.autostandby_error) C.uint32_t {
		return C.autostandby_set_observer_error(p, cmsg, e)
	})
}

func firstOrNil[T any](s []T) *T {
	if len(s) == 0 {
		return nil
	}
	return &s[0]
}

// instanceToC builds the C view of inst in Go memory; the arrays it points to are
// pinned for the duration of the call.
func instanceToC(inst *Instance, pin *runtime.Pinner) *C.autostandby_instance {
	ci := &C.autostandby_instance{
		struct_size:     C.uint32_t(unsafe.Sizeof(C.autostandby_instance{})),
		lifecycle:       C.uint32_t(inst.Lifecycle),
		network_enabled: C.bool(inst.NetworkEnabled),
		has_vgpu:        C.bool(inst.HasVGPU),
		runtime:         runtimeToC(inst.Runtime),
	}
	if len(inst.Addresses) > 0 {
		addrs := make([]C.autostandby_ip, len(inst.Addresses))
		for i, a := range inst.Addresses {
			addrs[i] = ipToC(a)
		}
		pin.Pin(&addrs[0])
		ci.addresses = &addrs[0]
		ci.addresses_len = C.size_t(len(addrs))
	}
	if p := inst.Policy; p != nil {
		cp := &C.autostandby_policy{
			struct_size:     C.uint32_t(unsafe.Sizeof(C.autostandby_policy{})),
			enabled:         C.bool(p.Enabled),
			idle_timeout_ms: C.uint64_t(durationToMillis(p.IdleTimeout)),
			tcp:             C.bool(p.TCP),
			udp:             C.bool(p.UDP),
			wake_on_traffic: C.bool(p.WakeOnTraffic),
			min_uptime_ms:   C.uint64_t(durationToMillis(p.MinUptime)),
		}
		if len(p.IgnoreSourceCIDRs) > 0 {
			cidrs := make([]C.autostandby_cidr, len(p.IgnoreSourceCIDRs))
			for i, prefix := range p.IgnoreSourceCIDRs {
				cidrs[i] = C.autostandby_cidr{ip: ipToC(prefix.Addr()), prefix_len: C.uint8_t(prefix.Bits())}
			}
			pin.Pin(&cidrs[0])
			cp.ignore_source_cidrs = &cidrs[0]
			cp.ignore_source_cidrs_len = C.size_t(len(cidrs))
		}
		if len(p.WakeSourceCIDRs) > 0 {
			cidrs := make([]C.autostandby_cidr, len(p.WakeSourceCIDRs))
			for i, prefix := range p.WakeSourceCIDRs {
				cidrs[i] = C.autostandby_cidr{ip: ipToC(prefix.Addr()), prefix_len: C.uint8_t(prefix.Bits())}
			}
			pin.Pin(&cidrs[0])
			cp.wake_source_cidrs = &cidrs[0]
			cp.wake_source_cidrs_len = C.size_t(len(cidrs))
		}
		if len(p.IgnoreDestinationPorts) > 0 {
			ports := make([]C.uint32_t, len(p.IgnoreDestinationPorts))
			for i, port := range p.IgnoreDestinationPorts {
				ports[i] = C.uint32_t(port)
			}
			pin.Pin(&ports[0])
			cp.ignore_destination_ports = &ports[0]
			cp.ignore_destination_ports_len = C.size_t(len(ports))
		}
		pin.Pin(cp)
		ci.policy = cp
	}
	return ci
}

func flowEventsToC(events []FlowEvent) []C.autostandby_flow_event {
	buf := make([]C.autostandby_flow_event, len(events))
	for i, ev := range events {
		buf[i] = C.autostandby_flow_event{
			kind:           C.uint32_t(ev.Kind),
			protocol:       C.uint8_t(ev.Protocol),
			orig_src:       ipToC(ev.OrigSrc.Addr()),
			orig_dst:       ipToC(ev.OrigDst.Addr()),
			orig_src_port:  C.uint16_t(ev.OrigSrc.Port()),
			orig_dst_port:  C.uint16_t(ev.OrigDst.Port()),
			reply_src:      ipToC(ev.ReplySrc.Addr()),
			reply_dst:      ipToC(ev.ReplyDst.Addr()),
			reply_src_port: C.uint16_t(ev.ReplySrc.Port()),
			reply_dst_port: C.uint16_t(ev.ReplyDst.Port()),
			zone:           C.uint16_t(ev.Zone),
			id:             C.uint32_t(ev.ID),
			has_tcp_state:  C.bool(ev.HasTCPState),
			tcp_state:      C.uint8_t(ev.TCPState),
		}
	}
	return buf
}

func ipToC(a netip.Addr) C.autostandby_ip {
	var ip C.autostandby_ip
	a = a.Unmap()
	switch {
	case a.Is4():
		ip.family = 4
		b := a.As4()
		for i := range b {
			ip.addr[i] = C.uint8_t(b[i])
		}
	case a.Is6():
		ip.family = 6
		b := a.As16()
		for i := range b {
			ip.addr[i] = C.uint8_t(b[i])
		}
	}
	return ip
}

func ipFromC(ip *C.autostandby_ip) netip.Addr {
	var b [16]byte
	for i := range b {
		b[i] = byte(ip.addr[i])
	}
	switch ip.family {
	case 4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case 6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

func runtimeToC(r Runtime) C.autostandby_runtime {
	var cr C.autostandby_runtime
	has, ms := timeToMillis(r.IdleSince)
	cr.has_idle_since, cr.idle_since_ms = C.bool(has), C.uint64_t(ms)
	has, ms = timeToMillis(r.LastInboundActivityAt)
	cr.has_last_inbound_activity_at, cr.last_inbound_activity_at_ms = C.bool(has), C.uint64_t(ms)
	return cr
}

func runtimeFromC(cr *C.autostandby_runtime) Runtime {
	return Runtime{
		IdleSince:             millisToTime(bool(cr.has_idle_since), uint64(cr.idle_since_ms)),
		LastInboundActivityAt: millisToTime(bool(cr.has_last_inbound_activity_at), uint64(cr.last_inbound_activity_at_ms)),
	}
}

func statusFromC(st *cStatus) Status {
	return Status{
		Status:                uint32(st.status),
		Reason:                uint32(st.reason),
		Configured:            bool(st.configured),
		Enabled:               bool(st.enabled),
		Eligible:              bool(st.eligible),
		ActiveInbound:         uint32(st.active_inbound),
		IdleTimeout:           time.Duration(st.idle_timeout_ms) * time.Millisecond,
		IdleSince:             millisToTime(bool(st.has_idle_since), uint64(st.idle_since_ms)),
		LastInboundActivityAt: millisToTime(bool(st.has_last_inbound_activity_at), uint64(st.last_inbound_activity_at_ms)),
		NextStandbyAt:         millisToTime(bool(st.has_next_standby_at), uint64(st.next_standby_at_ms)),
		HoldUntil:             millisToTime(bool(st.has_hold_until), uint64(st.hold_until_ms)),
		HasCountdown:          bool(st.has_countdown_remaining),
		CountdownRemaining:    time.Duration(st.countdown_remaining_ms) * time.Millisecond,
	}
}

func uitoa(n uint64) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}
