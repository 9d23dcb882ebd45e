// Package binding is the thin layer over libautostandby's C ABI: Go values in, Go
// values out, no C memory kept past a call. Without cgo, off Linux, or on a platform
// with no library to link (no prebuilt archive in this directory and neither the
// autostandby_shared nor the autostandby_system tag), every constructor reports
// ErrUnsupported.
package binding

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// ErrUnsupported: the library is not linked into this build.
var ErrUnsupported = errors.New("conntrack-backed auto-standby is only supported on Linux")

// Code is a status code of the C ABI.
type Code uint32

// Status codes, as in include/autostandby.h.
const (
	OK                   Code = 0
	ErrNullPointer       Code = 1
	ErrInvalidArgument   Code = 2
	ErrStructSize        Code = 3
	ErrNotFound          Code = 4
	ErrAlreadyExists     Code = 5
	ErrInvalidPolicy     Code = 6
	ErrStandbyInProgress Code = 7
	ErrNoStandby         Code = 8
	ErrWrongMode         Code = 9
	ErrPermission        Code = 10
	ErrIO                Code = 11
	ErrPanic             Code = 12
	ErrPoisoned          Code = 13
	ErrAddressInUse      Code = 14
	ErrShutdown          Code = 15
	// ErrNoConfirmPending: a Confirm answer that is stale (already answered, or the
	// confirmation was cancelled by activity, a hold or an update). Nothing changed.
	ErrNoConfirmPending Code = 16
)

// Error is a failed call: the code and the library's message.
type Error struct {
	Op      string
	Code    Code
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("autostandby_%s: %s (code %d)", e.Op, e.Message, e.Code)
}

// Is matches another *Error by code, so errors.Is(err, &Error{Code: ErrNotFound}) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Code == e.Code
}

// CodeOf returns the code of err, or OK when err is not an *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return OK
}

// Mode selects where flow events come from.
type Mode uint32

// Modes.
const (
	// ModeKernel: the library observes the host's conntrack table itself.
	ModeKernel Mode = 0
	// ModeManual: flow events and time are supplied through the API.
	ModeManual Mode = 1
)

// StandbyRetry says what a failed standby does to the idle countdown.
type StandbyRetry uint32

// Standby retry policies.
const (
	// StandbyRetryCountdown (the default, hypeman's behaviour): the failure starts a new
	// idle period, persisted, so the retry comes one full idle timeout later.
	StandbyRetryCountdown StandbyRetry = 0
	// StandbyRetryBackoff: retry after 1 s, 2 s, 4 s ... capped at the idle timeout,
	// keeping the idle period.
	StandbyRetryBackoff StandbyRetry = 1
)

// Config configures a library controller. Zero values select the library's defaults.
type Config struct {
	Mode                  Mode
	NetnsPath             string
	ReceiveBufferBytes    int
	MaxConcurrentStandbys uint32
	ResyncInterval        time.Duration
	SetEventsSysctl       bool
	ManualStart           time.Time
	// StandbyRetry: what a failed standby does (default StandbyRetryCountdown).
	StandbyRetry StandbyRetry
	// ConfirmBeforeStandby (manual mode): before each standby the library emits a
	// DecisionConfirm, answered with Controller.Confirm. Kernel mode always confirms
	// with a conntrack dump and ignores it.
	ConfirmBeforeStandby bool
	// ConfirmLead: how long before each deadline the confirmation is asked for; zero
	// for the mode's default (kernel 2 s, manual: at the deadline).
	ConfirmLead time.Duration
	// MaxConcurrentRestores: Wake decisions outstanding at once (each until ReportWake
	// or an update out of Standby); more wait in the order of the flows that asked.
	// Zero for 8.
	MaxConcurrentRestores uint32
	// HoldPacketsInStandby removes the neighbour entries of instances in Standby so
	// the first packets of a wake wait in the kernel's neighbour queue instead of
	// being lost (see autostandby_config.hold_packets_in_standby).
	HoldPacketsInStandby bool
	// HoldResolveWindow: the restore time held packets must survive; zero leaves the
	// devices' settings alone (see autostandby_config.hold_resolve_window_ms).
	HoldResolveWindow time.Duration
}

// Lifecycle is an instance's lifecycle state as the library knows it.
type Lifecycle uint32

// Lifecycle states.
const (
	LifecycleOther   Lifecycle = 0
	LifecycleRunning Lifecycle = 1
	LifecycleStandby Lifecycle = 2
	LifecycleStopped Lifecycle = 3
)

// Policy is a validated policy in library units.
type Policy struct {
	Enabled                bool
	IdleTimeout            time.Duration
	IgnoreSourceCIDRs      []netip.Prefix
	IgnoreDestinationPorts []uint32
	TCP, UDP               bool
	WakeOnTraffic          bool
	MinUptime              time.Duration
	// WakeSourceCIDRs: the clients that may wake the instance; empty allows any.
	WakeSourceCIDRs []netip.Prefix
}

// Runtime is the persisted countdown; a zero time means absent.
type Runtime struct {
	IdleSince             time.Time
	LastInboundActivityAt time.Time
}

// Instance is what the library is told about one instance.
type Instance struct {
	Addresses      []netip.Addr
	Policy         *Policy
	Lifecycle      Lifecycle
	NetworkEnabled bool
	HasVGPU        bool
	Runtime        Runtime
}

// DecisionKind says what a decision asks of the host.
type DecisionKind uint32

// Decision kinds.
const (
	DecisionStandby        DecisionKind = 0
	DecisionWake           DecisionKind = 1
	DecisionPersistRuntime DecisionKind = 2
	// DecisionConfirm: confirm the instance is idle, with Controller.Confirm (manual
	// mode with Config.ConfirmBeforeStandby only).
	DecisionConfirm DecisionKind = 3
)

// Decision is one thing the host should do.
type Decision struct {
	Kind DecisionKind
	Key  uint64
	// RuntimePresent: for PersistRuntime, false means delete the stored runtime.
	RuntimePresent bool
	Runtime        Runtime
	// Protocol, Src and Dst describe the flow that caused a Wake.
	Protocol uint8
	Src, Dst netip.AddrPort
}

// StandbyOutcome is the host's report on a standby it began.
type StandbyOutcome uint32

// Outcomes.
const (
	OutcomeSuccess  StandbyOutcome = 0
	OutcomeFailed   StandbyOutcome = 1
	OutcomeNotFound StandbyOutcome = 2
)

// WakeOutcome is the host's report on the restore it attempted for a Wake.
type WakeOutcome uint32

// Wake outcomes.
const (
	WakeRestored WakeOutcome = 0
	WakeFailed   WakeOutcome = 1
	// WakeDeclined: the host will not restore (dry run, or it cannot): the restore
	// slot is freed, and no other Wake comes until the instance leaves Standby.
	WakeDeclined WakeOutcome = 2
)

// Status is the library's view of one instance. Zero times mean absent.
type Status struct {
	Status                uint32
	Reason                uint32
	Configured            bool
	Enabled               bool
	Eligible              bool
	ActiveInbound         uint32
	IdleTimeout           time.Duration
	IdleSince             time.Time
	LastInboundActivityAt time.Time
	NextStandbyAt         time.Time
	HoldUntil             time.Time
	HasCountdown          bool
	CountdownRemaining    time.Duration
}

// FlowInfo is one flow keeping an instance awake.
type FlowInfo struct {
	Protocol           uint8
	OrigSrc, OrigDst   netip.AddrPort
	ReplySrc, ReplyDst netip.AddrPort
	HasTCPState        bool
	TCPState           uint8
	FirstSeen          time.Time
	Age                time.Duration
}

// RecommendQuery asks what candidate idle timeouts would have done over an instance's
// observed idle gaps. The zero value asks with the library's defaults.
type RecommendQuery struct {
	// Candidates are the idle timeouts to evaluate, each at least 1 ms; none means
	// 30s, 1m, 2m, 5m, 10m, 15m, 30m and 1h.
	Candidates []time.Duration
	// MinutesPerWake is the rule's N: the recommendation is the shortest candidate
	// with at most one wake per N minutes of observed time; 0 means 30.
	MinutesPerWake uint32
}

// TimeoutOutcome is what one candidate timeout would have done over the observed time.
type TimeoutOutcome struct {
	Timeout         time.Duration
	Standbys        uint64
	Wakes           uint64
	InStandby       time.Duration
	StandbyFraction float64
	// Exact is false when part of the answer was estimated (gaps sharing the
	// timeout's histogram bucket).
	Exact bool
}

// Recommendation is the library's answer to a RecommendQuery.
type Recommendation struct {
	// ObservedSince is when observation began; zero while the instance's flows have
	// not been read yet.
	ObservedSince  time.Time
	Observed       time.Duration
	Gaps           uint64
	HasOpenGap     bool
	OpenGap        time.Duration
	MinutesPerWake uint32
	Outcomes       []TimeoutOutcome
	// HasRecommended says whether any candidate satisfies the rule.
	HasRecommended bool
	Recommended    time.Duration
}

// FlowEventKind is what a manual flow event reports.
type FlowEventKind uint32

// Flow event kinds.
const (
	FlowNew     FlowEventKind = 0
	FlowUpdate  FlowEventKind = 1
	FlowDestroy FlowEventKind = 2
)

// FlowEvent is a conntrack event supplied in manual mode.
type FlowEvent struct {
	Kind               FlowEventKind
	Protocol           uint8
	OrigSrc, OrigDst   netip.AddrPort
	ReplySrc, ReplyDst netip.AddrPort
	Zone               uint16
	ID                 uint32
	HasTCPState        bool
	TCPState           uint8
}

// Stats are the library's counters.
type Stats struct {
	Instances        uint64
	TrackedFlows     uint64
	FlowEvents       uint64
	StandbyDecisions uint64
	WakeDecisions    uint64
	StandbyInFlight  uint64
	StandbyQueued    uint64
	Resyncs          uint64
	EventsLost       uint64
	ObserverErrors   uint64
	UnmatchedEvents  uint64
	DecisionsPending uint64
	LogsDropped      uint64
	// ObserverFailed: the observer is failed now; no instance goes into Standby and
	// eligible ones report error/observer_error.
	ObserverFailed bool
	// DecisionsMerged counts decisions merged into one already waiting for the same
	// instance and kind (at most one of each waits to be polled).
	DecisionsMerged uint64
	// ConntrackEventsOff: net.netfilter.nf_conntrack_events was 0 in the observed
	// namespace at its last read; no instance goes into Standby (ObserverFailed is set
	// too) and eligible ones report error/conntrack_events_off.
	ConntrackEventsOff bool
	// SuspectEnds counts TCP entries conntrack destroyed while the connection looked
	// alive (conntrack -D/-F, an expired ESTABLISHED timeout); each holds its instance
	// resync_pending until a dump decides.
	SuspectEnds uint64
	// WakeFailures counts the restores reported failed with ReportWake.
	WakeFailures uint64
	// WakesSuppressed counts the new flows to instances in Standby with wake on
	// traffic that did not ask for a restore, by reason (see WakeSuppressedReasons).
	WakesSuppressed map[string]uint64
	// RestoresInFlight: Wake decisions not yet reported (nor ended by an update out of
	// Standby).
	RestoresInFlight uint64
	// RestoresQueued: Wakes waiting for one of the MaxConcurrentRestores slots.
	RestoresQueued uint64
}

// WakeSuppressedReasons are the keys of Stats.WakesSuppressed: why a new flow to an
// instance in Standby did not ask for its restore.
var WakeSuppressedReasons = []string{
	"not_counted_protocol", "not_counted_port", "ignored_source", "source_not_allowed", "restore_backoff",
}

// LogRecord is one line of the library's log buffer.
type LogRecord struct {
	Level   uint32
	Time    time.Time
	Target  string
	Message string
}

// Log levels of LogRecord.Level (tracing's order).
const (
	LevelError uint32 = 1
	LevelWarn  uint32 = 2
	LevelInfo  uint32 = 3
	LevelDebug uint32 = 4
	LevelTrace uint32 = 5
)

func millisToTime(has bool, ms uint64) time.Time {
	if !has {
		return time.Time{}
	}
	return time.UnixMilli(int64(ms)).UTC()
}

func timeToMillis(t time.Time) (bool, uint64) {
	if t.IsZero() {
		return false, 0
	}
	ms := t.UnixMilli()
	if ms < 0 {
		ms = 0
	}
	return true, uint64(ms)
}

// durationToMillis rounds up, so a positive sub-millisecond duration stays positive.
func durationToMillis(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}
