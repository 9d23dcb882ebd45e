package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeQMP is a scripted QMP server on a unix socket. handle answers each command; it may
// return raw lines to send (events, replies) in order.
type fakeQMP struct {
	path     string
	ln       *net.UnixListener
	greeting string
	handle   func(cmd request, fds []int) []string
	got      chan request
}

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        uint64          `json:"id"`
}

func newFakeQMP(t *testing.T, handle func(cmd request, fds []int) []string) *fakeQMP {
	return newFakeQMPWithGreeting(t, `{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}`, handle)
}

func newFakeQMPWithGreeting(t *testing.T, greeting string, handle func(cmd request, fds []int) []string) *fakeQMP {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeQMP{
		path:     path,
		ln:       ln,
		greeting: greeting,
		handle:   handle,
		got:      make(chan request, 64),
	}
	t.Cleanup(func() { ln.Close() })
	go f.serve()
	return f
}

func (f *fakeQMP) serve() {
	conn, err := f.ln.AcceptUnix()
	if err != nil {
		return
	}
	defer conn.Close()
	w := bufio.NewWriter(conn)
	w.WriteString(f.greeting + "\n")
	w.Flush()
	buf := make([]byte, 4096)
	oob := make([]byte, 256)
	var pending []byte
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var fds []int
		if oobn > 0 {
			msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				got, _ := syscall.ParseUnixRights(&m)
				fds = append(fds, got...)
			}
		}
		pending = append(pending, buf[:n]...)
		for {
			i := strings.IndexByte(string(pending), '\n')
			if i < 0 {
				break
			}
			line := pending[:i]
			pending = pending[i+1:]
			var req request
			if err := json.Unmarshal(line, &req); err != nil {
				return
			}
			f.got <- req
			var out []string
			if req.Execute == "qmp_capabilities" {
				out = []string{reply(req.ID, `{}`)}
			} else {
				out = f.handle(req, fds)
			}
			for _, fd := range fds {
				syscall.Close(fd)
			}
			fds = nil
			for _, l := range out {
				w.WriteString(l + "\n")
			}
			w.Flush()
		}
	}
}

func reply(id uint64, ret string) string {
	return `{"return": ` + ret + `, "id": ` + jsonNum(id) + `}`
}

func jsonNum(id uint64) string { b, _ := json.Marshal(id); return string(b) }

func dial(t *testing.T, f *fakeQMP) *QMP {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func TestQMPNegotiatesAndDecodesReturn(t *testing.T) {
	f := newFakeQMP(t, func(req request, _ []int) []string {
		return []string{reply(req.ID, `{"running": false, "status": "paused", "singlestep": false}`)}
	})
	q := dial(t, f)
	if first := <-f.got; first.Execute != "qmp_capabilities" {
		t.Fatalf("first command = %q, want qmp_capabilities", first.Execute)
	}
	st, err := q.QueryStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Running || st.Status != "paused" {
		t.Fatalf("status = %+v", st)
	}
}

func TestQMPReturnsQEMUErrors(t *testing.T) {
	f := newFakeQMP(t, func(req request, _ []int) []string {
		if req.Execute != "nope" {
			return []string{reply(req.ID, `{}`)}
		}
		return []string{`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": ` + jsonNum(req.ID) + `}`}
	})
	q := dial(t, f)
	err := q.Execute(context.Background(), "nope", nil, nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "nope" {
		t.Fatalf("err = %v, want a *QMPError of class CommandNotFound", err)
	}
	// The connection stays usable after an error.
	if err := q.Execute(context.Background(), "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestQMPKeepsEventsAndSkipsStaleReplies(t *testing.T) {
	f := newFakeQMP(t, func(req request, _ []int) []string {
		return []string{
			`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
			reply(req.ID+1000, `{"status": "stale"}`), // a reply to some other command
			reply(req.ID, `{"status": "completed", "total-time": 42}`),
		}
	})
	q := dial(t, f)
	info, err := q.QueryMigrate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Status != "completed" || info.TotalTime != 42 {
		t.Fatalf("info = %+v", info)
	}
	ev := q.Events()
	if len(ev) != 1 || ev[0].Name != "STOP" {
		t.Fatalf("events = %+v", ev)
	}
	if again := q.Events(); len(again) != 0 {
		t.Fatalf("events not forgotten: %+v", again)
	}
}

func TestQMPPassesFiles(t *testing.T) {
	gotFD := make(chan bool, 1)
	f := newFakeQMP(t, func(req request, fds []int) []string {
		gotFD <- req.Execute == "getfd" && len(fds) == 1 && strings.Contains(string(req.Arguments), `"fdname":"snapshot"`)
		return []string{reply(req.ID, `{}`)}
	})
	q := dial(t, f)
	file, err := os.CreateTemp(t.TempDir(), "snap")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if err := q.ExecuteWithFile(context.Background(), "getfd", map[string]any{"fdname": "snapshot"}, file, nil); err != nil {
		t.Fatal(err)
	}
	if !<-gotFD {
		t.Fatal("the server did not receive getfd with one file descriptor")
	}
}

func TestQMPMalformedReplyIsAnError(t *testing.T) {
	f := newFakeQMP(t, func(req request, _ []int) []string { return []string{`{"return": {} garbage`} })
	q := dial(t, f)
	err := q.Execute(context.Background(), "stop", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "malformed QMP message") {
		t.Fatalf("err = %v, want a malformed-message error", err)
	}
}

func TestQMPRejectsAServerWithoutGreeting(t *testing.T) {
	f := newFakeQMPWithGreeting(t, `{"hello": 1}`, func(req request, _ []int) []string { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := DialQMP(ctx, f.path); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("err = %v, want a greeting error", err)
	}
}

func TestQMPCommandHonoursContext(t *testing.T) {
	f := newFakeQMP(t, func(req request, _ []int) []string { return nil }) // never answers
	q := dial(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := q.Execute(ctx, "query-status", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("Execute ignored its context for %v", time.Since(start))
	}
}

func TestDialQMPWaitsForTheSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "late.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := DialQMP(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded while the socket does not exist", err)
	}
}
