package autostandby

import (
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// engine is the library controller as the Go controller uses it. *binding.Controller
// implements it; unit tests substitute their own.
type engine interface {
	Register(key uint64, inst *binding.Instance) error
	Update(key uint64, inst *binding.Instance) error
	Unregister(key uint64) error
	PollDecisions(out []binding.Decision, timeout time.Duration) (int, error)
	BeginStandby(key uint64) (proceed bool, reason uint32, err error)
	ReportStandby(key uint64, outcome binding.StandbyOutcome) error
	DeclineStandby(key uint64) error
	ReportWake(key uint64, outcome binding.WakeOutcome) error
	Hold(key uint64) (binding.Status, error)
	Status(key uint64) (binding.Status, error)
	Explain(key uint64) ([]binding.FlowInfo, error)
	Recommend(key uint64, q binding.RecommendQuery) (binding.Recommendation, error)
	Stats() (binding.Stats, error)
	DrainLogs(out []binding.LogRecord) (int, error)
	Close()
}

// manualEngine is the manual-mode part of the library controller.
type manualEngine interface {
	Ingest(events []binding.FlowEvent) error
	AdvanceClock(delta time.Duration) error
	Resync(table []binding.FlowEvent) error
	SetObserverError(message string, failed bool) error
	Confirm(key uint64, failed bool, flows []binding.FlowEvent) error
}

// statusFromCode and reasonFromCode turn the library's numbers into the wire strings.
// KnownStatuses and KnownReasons are in the library's numbering; a test checks them
// against the library's own name tables.
func statusFromCode(code uint32) Status {
	if int(code) < len(KnownStatuses) {
		return KnownStatuses[code]
	}
	return StatusError
}

func reasonFromCode(code uint32) Reason {
	if int(code) < len(KnownReasons) {
		return KnownReasons[code]
	}
	return ReasonObserverError
}

// StatusName is the library's wire name of status value v ("" when unknown or when
// the library is not built in).
func StatusName(v uint32) string { return binding.StatusName(v) }

// ReasonName is the library's wire name of reason value v ("" when unknown).
func ReasonName(v uint32) string { return binding.ReasonName(v) }
