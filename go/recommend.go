package autostandby

import (
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// RecommendOptions asks what candidate idle timeouts would have done for an instance.
// The zero value asks with the library's defaults.
type RecommendOptions struct {
	// Candidates are the idle timeouts to evaluate (whole milliseconds, at least 1 ms,
	// at most 64); none means 30s, 1m, 2m, 5m, 10m, 15m, 30m and 1h.
	Candidates []time.Duration
	// MinutesPerWake is the rule's N: the recommended timeout is the shortest candidate
	// with at most one wake per N minutes of observed time on average; 0 means 30.
	MinutesPerWake uint32
}

// TimeoutOutcome is what one candidate idle timeout would have done over the observed
// time, had it been the instance's (no hold, min uptime or restore time counted).
type TimeoutOutcome struct {
	// Timeout is the candidate.
	Timeout time.Duration `json:"timeout"`
	// Standbys counts the idle gaps at least Timeout long, the one open now included.
	Standbys uint64 `json:"standbys"`
	// Wakes counts those gaps that have ended (a connection arrived).
	Wakes uint64 `json:"wakes"`
	// InStandby is the time the instance would have spent in Standby.
	InStandby time.Duration `json:"in_standby"`
	// StandbyFraction is InStandby over the observed time.
	StandbyFraction float64 `json:"standby_fraction"`
	// Exact is false when part of the answer was estimated: some gaps fell in the
	// library's histogram bucket that Timeout splits.
	Exact bool `json:"exact"`
}

// IdleTimeoutRecommendation is the library's view of an instance's idle gaps: what each
// candidate timeout would have done, and the one its rule recommends.
type IdleTimeoutRecommendation struct {
	// ObservedSince is when observation began: when the instance's flows were first
	// known. Nil until then.
	ObservedSince *time.Time `json:"observed_since,omitempty"`
	// Observed is the time observed, to now.
	Observed time.Duration `json:"observed"`
	// Gaps counts the idle gaps (periods with no counted connection) that have ended.
	Gaps uint64 `json:"gaps"`
	// OpenGap is how long the instance has been idle now; nil while a connection is
	// live.
	OpenGap *time.Duration `json:"open_gap,omitempty"`
	// MinutesPerWake is the rule's N in use.
	MinutesPerWake uint32 `json:"minutes_per_wake"`
	// Outcomes has one entry per candidate, shortest first.
	Outcomes []TimeoutOutcome `json:"outcomes"`
	// Recommended is the shortest candidate with at most one wake per MinutesPerWake
	// minutes observed; nil when none is, or nothing has been observed yet.
	Recommended *time.Duration `json:"recommended,omitempty"`
}

// RecommendIdleTimeout reports, for the instance with this ID, what candidate idle
// timeouts would have done over its idle gaps since the controller first read its
// connections, and the timeout the rule recommends. The history is kept while the
// instance stays registered (policy changes included) and dropped when it goes.
// ErrInstanceNotFound when the controller does not track the instance.
func (c *Controller) RecommendIdleTimeout(instanceID string, opts RecommendOptions) (IdleTimeoutRecommendation, error) {
	if c == nil {
		return IdleTimeoutRecommendation{}, ErrUnsupported
	}
	t, ok := c.lookupID(instanceID)
	if !ok {
		if c.unavailable != nil {
			return IdleTimeoutRecommendation{}, c.unavailable
		}
		return IdleTimeoutRecommendation{}, ErrInstanceNotFound
	}
	r, err := c.eng.Recommend(t.key, binding.RecommendQuery{
		Candidates:     opts.Candidates,
		MinutesPerWake: opts.MinutesPerWake,
	})
	if err != nil {
		if binding.CodeOf(err) == binding.ErrNotFound {
			return IdleTimeoutRecommendation{}, ErrInstanceNotFound
		}
		return IdleTimeoutRecommendation{}, err
	}
	out := IdleTimeoutRecommendation{
		Observed:       r.Observed,
		Gaps:           r.Gaps,
		MinutesPerWake: r.MinutesPerWake,
		Outcomes:       make([]TimeoutOutcome, len(r.Outcomes)),
	}
	if !r.ObservedSince.IsZero() {
		since := r.ObservedSince
		out.ObservedSince = &since
	}
	if r.HasOpenGap {
		g := r.OpenGap
		out.OpenGap = &g
	}
	if r.HasRecommended {
		rec := r.Recommended
		out.Recommended = &rec
	}
	for i, o := range r.Outcomes {
		out.Outcomes[i] = TimeoutOutcome(o)
	}
	return out, nil
}
