package main

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/libautostandby/libautostandby/tests/e2e/qemustore"
)

// timeline records what the demo saw (the store's operations, the controller's view
// sampled every tenth of a second, and the client's moments) and draws it as an SVG.
type timeline struct {
	start time.Time

	mu      sync.Mutex
	samples []sample
	records []qemustore.Record
	marks   []mark
}

type sample struct {
	at        time.Duration
	flows     int
	countdown time.Duration // negative when no countdown runs
}

type mark struct {
	at    time.Duration
	label string
}

func newTimeline(start time.Time) *timeline { return &timeline{start: start} }

// observe adds one sample of the controller's view.
func (t *timeline) observe(at time.Time, flows int, countdown *time.Duration) {
	s := sample{at: at.Sub(t.start), flows: flows, countdown: -1}
	if countdown != nil {
		s.countdown = *countdown
	}
	t.mu.Lock()
	t.samples = append(t.samples, s)
	t.mu.Unlock()
}

// record adds an operation of the store.
func (t *timeline) record(r qemustore.Record) {
	t.mu.Lock()
	t.records = append(t.records, r)
	t.mu.Unlock()
}

// mark adds a moment seen by the client.
func (t *timeline) mark(at time.Time, label string) {
	t.mu.Lock()
	t.marks = append(t.marks, mark{at: at.Sub(t.start), label: label})
	t.mu.Unlock()
}

// lane is a span of the VM's state.
type lane struct {
	from, to time.Duration
	state    string
}

// The VM's states as drawn, with their colours.
var laneColours = []struct{ state, colour string }{
	{"Running", "#4caf50"},
	{"snapshotting", "#ffb74d"},
	{"Standby", "#90a4ae"},
	{"restoring", "#ffb74d"},
}

// lanes turns the store's operations into spans of state from the start to end.
func (t *timeline) lanes(end time.Duration) []lane {
	var out []lane
	state, since := "Running", time.Duration(0)
	next := func(at time.Duration, to string) {
		if at > since {
			out = append(out, lane{since, at, state})
		}
		state, since = to, at
	}
	for _, r := range t.records {
		at := r.At.Sub(t.start)
		switch r.Kind {
		case qemustore.OpStandbyStarted:
			next(at, "snapshotting")
		case qemustore.OpStandby:
			next(at, "Standby")
		case qemustore.OpRestoreStarted:
			next(at, "restoring")
		case qemustore.OpRestore:
			next(at, "Running")
		}
	}
	next(end, state)
	return out
}

// events are the markers drawn: the store's operations and the client's moments.
func (t *timeline) events() []mark {
	names := map[qemustore.OpKind]string{
		qemustore.OpStandby:        "Standby",
		qemustore.OpRestoreStarted: "Wake",
		qemustore.OpRestore:        "restored",
	}
	out := append([]mark(nil), t.marks...)
	for _, r := range t.records {
		if name, ok := names[r.Kind]; ok {
			label := name
			if r.Duration > 0 {
				label += fmt.Sprintf(" (%v)", r.Duration.Round(time.Millisecond))
			}
			out = append(out, mark{at: r.At.Sub(t.start), label: label})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at < out[j].at })
	return out
}

// Geometry of the picture, in SVG user units.
const (
	svgWidth   = 960
	plotLeft   = 110
	plotRight  = 930
	laneTop    = 60
	laneHeight = 36
	flowsTop   = 150
	flowsH     = 80
	countTop   = 280
	countH     = 80
	axisY      = 390
	labelsTop  = 420
	labelStep  = 16
)

// writeSVG draws the timeline: the VM's state as coloured spans, the counted flows, the
// idle countdown, and a dashed line per marker with its time.
func (t *timeline) writeSVG(w io.Writer, title string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	end := time.Duration(0)
	for _, s := range t.samples {
		end = max(end, s.at)
	}
	marks := t.events()
	for _, m := range marks {
		end = max(end, m.at)
	}
	if end <= 0 {
		return fmt.Errorf("timeline: nothing recorded")
	}
	x := func(d time.Duration) float64 {
		return plotLeft + float64(d)/float64(end)*(plotRight-plotLeft)
	}
	height := labelsTop + labelStep*len(marks) + 20

	b := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(b, format+"\n", args...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`,
		svgWidth, height, svgWidth, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>`)
	p(`<text x="%d" y="28" font-size="16" font-weight="bold">%s</text>`, plotLeft, html.EscapeString(title))

	// The VM's state, with a legend of its colours.
	p(`<text x="10" y="%d">VM state</text>`, laneTop+laneHeight/2+4)
	colour := map[string]string{}
	for i, c := range laneColours {
		colour[c.state] = c.colour
		lx := plotLeft + 120*i
		p(`<rect x="%d" y="38" width="10" height="10" fill="%s"/><text x="%d" y="47">%s</text>`, lx, c.colour, lx+14, c.state)
	}
	for _, l := range t.lanes(end) {
		p(`<rect class="lane" data-state="%s" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`,
			l.state, x(l.from), laneTop, math.Max(x(l.to)-x(l.from), 0.5), laneHeight, colour[l.state])
		if x(l.to)-x(l.from) > 60 {
			p(`<text x="%.1f" y="%d" fill="white" font-weight="bold">%s</text>`, x(l.from)+4, laneTop+laneHeight/2+4, l.state)
		}
	}

	// Counted flows, a step line.
	maxFlows := 1
	for _, s := range t.samples {
		maxFlows = max(maxFlows, s.flows)
	}
	p(`<text x="10" y="%d">counted flows</text>`, flowsTop+flowsH/2+4)
	p(`<text x="%d" y="%d" text-anchor="end">%d</text>`, plotLeft-6, flowsTop+4, maxFlows)
	p(`<text x="%d" y="%d" text-anchor="end">0</text>`, plotLeft-6, flowsTop+flowsH+4)
	fy := func(n int) float64 { return flowsTop + flowsH - float64(n)/float64(maxFlows)*flowsH }
	var pts []string
	for i, s := range t.samples {
		if i > 0 {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.at), fy(t.samples[i-1].flows)))
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.at), fy(s.flows)))
	}
	p(`<polyline class="flows" points="%s" fill="none" stroke="#1e88e5" stroke-width="2"/>`, strings.Join(pts, " "))

	// The idle countdown: one line per stretch in which it ran.
	maxCount := time.Second
	for _, s := range t.samples {
		maxCount = max(maxCount, s.countdown)
	}
	p(`<text x="10" y="%d">idle countdown</text>`, countTop+countH/2+4)
	p(`<text x="%d" y="%d" text-anchor="end">%v</text>`, plotLeft-6, countTop+4, maxCount.Round(time.Second))
	p(`<text x="%d" y="%d" text-anchor="end">0</text>`, plotLeft-6, countTop+countH+4)
	cy := func(d time.Duration) float64 { return countTop + countH - float64(d)/float64(maxCount)*countH }
	pts = pts[:0]
	flush := func() {
		if len(pts) > 0 {
			p(`<polyline class="countdown" points="%s" fill="none" stroke="#e53935" stroke-width="2"/>`, strings.Join(pts, " "))
		}
		pts = pts[:0]
	}
	for _, s := range t.samples {
		if s.countdown < 0 {
			flush()
			continue
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.at), cy(s.countdown)))
	}
	flush()

	// The time axis, a tick a second or every few.
	p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`, plotLeft, axisY, plotRight, axisY)
	step := time.Second
	for end/step > 15 {
		step *= 2
	}
	for d := time.Duration(0); d <= end; d += step {
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>`, x(d), axisY, x(d), axisY+5)
		p(`<text x="%.1f" y="%d" text-anchor="middle">%gs</text>`, x(d), axisY+18, d.Seconds())
	}

	// Markers: a dashed line through the panels, its label on a row of its own below.
	for i, m := range marks {
		y := labelsTop + labelStep*i
		p(`<line class="marker" x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#6a1b9a" stroke-dasharray="4,3"/>`,
			x(m.at), laneTop-6, x(m.at), y-4)
		anchor := "start"
		if x(m.at) > svgWidth/2 {
			anchor = "end"
		}
		p(`<text x="%.1f" y="%d" text-anchor="%s" fill="#6a1b9a">%s at %.2f s</text>`,
			x(m.at), y+8, anchor, html.EscapeString(m.label), m.at.Seconds())
	}
	p(`</svg>`)
	return b.Flush()
}

// save writes the SVG to path, and a PNG beside it when rsvg-convert is installed.
// It returns the files written.
func (t *timeline) save(path, title string) ([]string, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := t.writeSVG(f, title); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	written := []string{path}
	if conv, err := exec.LookPath("rsvg-convert"); err == nil {
		png := strings.TrimSuffix(path, ".svg") + ".png"
		if err := exec.Command(conv, "-o", png, path).Run(); err == nil {
			written = append(written, png)
		}
	}
	return written, nil
}
