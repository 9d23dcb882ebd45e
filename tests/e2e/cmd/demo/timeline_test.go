package main

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/libautostandby/libautostandby/tests/e2e/qemustore"
)

// element is any SVG element, with the attributes and text the test looks at.
type element struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Text    string     `xml:",chardata"`
	Kids    []element  `xml:",any"`
}

func (e element) attr(name string) string {
	for _, a := range e.Attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func TestTimelineDrawsStatesFlowsCountdownAndMarkers(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tl := newTimeline(t0)
	// A connection for 2 s, a 3 s countdown, standby, and a wake at 8 s.
	for ms := 0; ms <= 10_000; ms += 100 {
		flows := 0
		if ms < 2_000 || ms >= 8_500 {
			flows = 1
		}
		var countdown *time.Duration
		if ms >= 2_000 && ms < 5_000 {
			c := time.Duration(5_000-ms) * time.Millisecond
			countdown = &c
		}
		tl.observe(at(ms), flows, countdown)
	}
	tl.mark(at(2_000), "client closes")
	tl.record(qemustore.Record{Kind: qemustore.OpStandbyStarted, At: at(5_000)})
	tl.record(qemustore.Record{Kind: qemustore.OpStandby, At: at(5_400), Duration: 400 * time.Millisecond})
	tl.mark(at(8_000), "first SYN")
	tl.record(qemustore.Record{Kind: qemustore.OpRestoreStarted, At: at(8_001)})
	tl.record(qemustore.Record{Kind: qemustore.OpRestore, At: at(8_300), Duration: 299 * time.Millisecond})
	tl.mark(at(8_400), "first byte")

	var out bytes.Buffer
	if err := tl.writeSVG(&out, "a <test> run"); err != nil {
		t.Fatal(err)
	}
	var svg element
	if err := xml.Unmarshal(out.Bytes(), &svg); err != nil {
		t.Fatalf("not XML: %v\n%s", err, out.String())
	}
	var lanes []string
	var markers, countdowns int
	var flowPoints int
	var texts []string
	for _, e := range svg.Kids {
		switch e.attr("class") {
		case "lane":
			lanes = append(lanes, e.attr("data-state"))
		case "marker":
			markers++
		case "countdown":
			countdowns++
		case "flows":
			flowPoints = len(strings.Fields(e.attr("points")))
		}
		if e.XMLName.Local == "text" {
			texts = append(texts, e.Text)
		}
	}
	if got, want := strings.Join(lanes, ","), "Running,snapshotting,Standby,restoring,Running"; got != want {
		t.Errorf("lanes %s, want %s", got, want)
	}
	// Three client moments and three store operations (Standby, Wake, restored).
	if markers != 6 {
		t.Errorf("%d markers, want 6", markers)
	}
	if countdowns != 1 {
		t.Errorf("%d countdown lines, want 1 (it ran once)", countdowns)
	}
	// A step line: two points per sample but the first.
	if flowPoints != 2*101-1 {
		t.Errorf("%d points in the flows line, want %d", flowPoints, 2*101-1)
	}
	joined := strings.Join(texts, "|")
	for _, want := range []string{"a <test> run", "first SYN at 8.00 s", "restored (299ms) at 8.30 s", "Standby (400ms) at 5.40 s"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no text %q in %s", want, joined)
		}
	}
}

func TestTimelineWithNothingRecordedIsAnError(t *testing.T) {
	if err := newTimeline(time.Now()).writeSVG(&bytes.Buffer{}, "empty"); err == nil {
		t.Fatal("an empty timeline was drawn")
	}
}
