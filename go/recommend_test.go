//go:build cgo && linux && (amd64 || autostandby_shared || autostandby_system)

package autostandby

import (
	"errors"
	"testing"
	"time"
)

// An instance idle for 10 minutes from registration, then busy for one, then idle for
// 4: the 10-minute gap is a standby and a wake for every candidate up to 10 minutes.
func TestRecommendIdleTimeoutOnARecordedPattern(t *testing.T) {
	s := newScenario(t, t1100, ControllerOptions{}, guest("a", "10.0.0.2", "24h")).run()
	s.advance(10 * time.Minute)
	s.ingest(flow(FlowNew, "10.0.0.2", 1, TCPStateEstablished))
	s.waitStatus("a", StatusActive)
	s.advance(time.Minute)
	s.ingest(flow(FlowDestroy, "10.0.0.2", 1, TCPStateClose))
	s.waitStatus("a", StatusIdleCountdown)
	s.advance(4 * time.Minute)

	r, err := s.c.RecommendIdleTimeout("a", RecommendOptions{})
	if err != nil {
		t.Fatalf("RecommendIdleTimeout: %v", err)
	}
	if r.Observed != 15*time.Minute || r.Gaps != 1 || r.OpenGap == nil || *r.OpenGap != 4*time.Minute ||
		r.MinutesPerWake != 30 || r.ObservedSince == nil || !r.ObservedSince.Equal(t1100) {
		t.Fatalf("summary %+v", r)
	}
	want := []TimeoutOutcome{
		// 10-minute gap less 30 s, open gap less 30 s.
		{30 * time.Second, 2, 1, 9*time.Minute + 30*time.Second + 3*time.Minute + 30*time.Second, 0, true},
		{time.Minute, 2, 1, 12 * time.Minute, 0, true},
		{2 * time.Minute, 2, 1, 10 * time.Minute, 0, true},
		{5 * time.Minute, 1, 1, 5 * time.Minute, 0, true},
		{10 * time.Minute, 1, 1, 0, 0, true},
		{15 * time.Minute, 0, 0, 0, 0, true},
		{30 * time.Minute, 0, 0, 0, 0, true},
		{time.Hour, 0, 0, 0, 0, true},
	}
	if len(r.Outcomes) != len(want) {
		t.Fatalf("outcomes %+v", r.Outcomes)
	}
	for i, o := range r.Outcomes {
		w := want[i]
		w.StandbyFraction = float64(w.InStandby) / float64(15*time.Minute)
		if o.Timeout != w.Timeout || o.Standbys != w.Standbys || o.Wakes != w.Wakes ||
			o.InStandby != w.InStandby || o.Exact != w.Exact ||
			o.StandbyFraction < w.StandbyFraction-1e-9 || o.StandbyFraction > w.StandbyFraction+1e-9 {
			t.Errorf("outcome %d: got %+v, want %+v", i, o, w)
		}
	}
	// 15 minutes observed allow no wake at one per 30 minutes: 15m is the shortest
	// without one.
	if r.Recommended == nil || *r.Recommended != 15*time.Minute {
		t.Fatalf("recommended %v", r.Recommended)
	}

	// One wake per 10 minutes allows one: 30 s. Caller candidates come back sorted.
	r, err = s.c.RecommendIdleTimeout("a", RecommendOptions{
		Candidates:     []time.Duration{5 * time.Minute, 30 * time.Second},
		MinutesPerWake: 10,
	})
	if err != nil || len(r.Outcomes) != 2 || r.Outcomes[0].Timeout != 30*time.Second ||
		r.Recommended == nil || *r.Recommended != 30*time.Second {
		t.Fatalf("%+v, %v", r, err)
	}

	// Bad input and unknown instances.
	if _, err := s.c.RecommendIdleTimeout("a", RecommendOptions{Candidates: []time.Duration{0}}); err == nil {
		t.Fatal("a zero candidate was accepted")
	}
	if _, err := s.c.RecommendIdleTimeout("nope", RecommendOptions{}); !errors.Is(err, ErrInstanceNotFound) {
		t.Fatalf("unknown instance: %v", err)
	}
}
