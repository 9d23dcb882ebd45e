//go:build !(cgo && linux && (amd64 || autostandby_shared || autostandby_system))

package binding

import "time"

// Supported reports whether the library is linked into this build.
const Supported = false

// Controller is a library controller; in this build none can be created.
type Controller struct{}

// New always fails with ErrUnsupported in this build.
func New(Config) (*Controller, error) { return nil, ErrUnsupported }

// Version is empty in this build.
func Version() string { return "" }

// ABIVersion is 0 in this build.
func ABIVersion() uint32 { return 0 }

// StatusName is empty in this build.
func StatusName(uint32) string { return "" }

// ReasonName is empty in this build.
func ReasonName(uint32) string { return "" }

// Close does nothing.
func (*Controller) Close() {}

// Register fails.
func (*Controller) Register(uint64, *Instance) error { return ErrUnsupported }

// Update fails.
func (*Controller) Update(uint64, *Instance) error { return ErrUnsupported }

// Unregister fails.
func (*Controller) Unregister(uint64) error { return ErrUnsupported }

// PollDecisions fails.
func (*Controller) PollDecisions([]Decision, time.Duration) (int, error) {
	return 0, ErrUnsupported
}

// BeginStandby fails.
func (*Controller) BeginStandby(uint64) (bool, uint32, error) { return false, 0, ErrUnsupported }

// DeclineStandby fails.
func (*Controller) DeclineStandby(uint64) error { return ErrUnsupported }

// ReportStandby fails.
func (*Controller) ReportStandby(uint64, StandbyOutcome) error { return ErrUnsupported }

// ReportWake fails.
func (*Controller) ReportWake(uint64, WakeOutcome) error { return ErrUnsupported }

// Hold fails.
func (*Controller) Hold(uint64) (Status, error) { return Status{}, ErrUnsupported }

// Status fails.
func (*Controller) Status(uint64) (Status, error) { return Status{}, ErrUnsupported }

// Explain fails.
func (*Controller) Explain(uint64) ([]FlowInfo, error) { return nil, ErrUnsupported }

// Recommend fails.
func (*Controller) Recommend(uint64, RecommendQuery) (Recommendation, error) {
	return Recommendation{}, ErrUnsupported
}

// Stats fails.
func (*Controller) Stats() (Stats, error) { return Stats{}, ErrUnsupported }

// DrainLogs fails.
func (*Controller) DrainLogs([]LogRecord) (int, error) { return 0, ErrUnsupported }

// Ingest fails.
func (*Controller) Ingest([]FlowEvent) error { return ErrUnsupported }

// AdvanceClock fails.
func (*Controller) AdvanceClock(time.Duration) error { return ErrUnsupported }

// Resync fails.
func (*Controller) Resync([]FlowEvent) error { return ErrUnsupported }

// Confirm fails.
func (*Controller) Confirm(uint64, bool, []FlowEvent) error { return ErrUnsupported }

// SetObserverError fails.
func (*Controller) SetObserverError(string, bool) error { return ErrUnsupported }
