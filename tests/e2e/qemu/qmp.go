// Package qemu runs the end-to-end guest under QEMU and snapshots and restores it over
// QMP, the QEMU Machine Protocol (JSON over a unix socket).
package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event (STOP, RESUME, SHUTDOWN, MIGRATION, ...).
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// QMP is a client for one QMP socket. Commands run one at a time; events that arrive
// meanwhile are kept (up to a bound) and can be read with Events.
type QMP struct {
	mu     sync.Mutex
	conn   *net.UnixConn
	reader *bufio.Reader
	nextID uint64
	events []Event
}

// maxEvents bounds the kept events so a chatty VM cannot grow the client without limit.
const maxEvents = 256

// message is any line QEMU sends: a greeting, a reply or an event.
type message struct {
	Greeting json.RawMessage `json:"QMP"`
	Return   json.RawMessage `json:"return"`
	Error    *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	ID    *uint64         `json:"id"`
}

// DialQMP connects to the QMP socket at path, retrying until it accepts or ctx ends (QEMU
// creates the socket shortly after it starts), reads the greeting and leaves capability
// negotiation mode.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var conn net.Conn
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			conn = c
			break
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: dial %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	q := &QMP{conn: conn.(*net.UnixConn), reader: bufio.NewReaderSize(conn, 64<<10)}
	if err := q.handshake(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) handshake(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.setDeadline(ctx)
	m, err := q.read()
	if err != nil {
		return fmt.Errorf("qmp: greeting: %w", err)
	}
	if m.Greeting == nil {
		return errors.New("qmp: the server did not start with a QMP greeting")
	}
	_, err = q.execLocked(ctx, "qmp_capabilities", nil, nil)
	return err
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// Execute runs command with args (nil for none) and decodes its return value into out
// (nil to discard). A QEMU error is returned as *QMPError.
func (q *QMP) Execute(ctx context.Context, command string, args any, out any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, err := q.execLocked(ctx, command, args, out)
	return err
}

// ExecuteWithFile is Execute with an open file passed along (SCM_RIGHTS), as the
// "getfd" and "add-fd" commands expect.
func (q *QMP) ExecuteWithFile(ctx context.Context, command string, args any, f *os.File, out any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, err := q.execLocked(ctx, command, args, out, f)
	return err
}

// Events returns and forgets the events received so far.
func (q *QMP) Events() []Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	ev := q.events
	q.events = nil
	return ev
}

func (q *QMP) setDeadline(ctx context.Context) {
	if d, ok := ctx.Deadline(); ok {
		q.conn.SetDeadline(d)
	} else {
		q.conn.SetDeadline(time.Time{})
	}
}

func (q *QMP) execLocked(ctx context.Context, command string, args any, out any, files ...*os.File) (*message, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	q.setDeadline(ctx)
	// A context cancelled mid-command unblocks the read through the deadline.
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Now()) })
	defer stop()

	q.nextID++
	id := q.nextID
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{command, args, id}
	line, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: encode: %w", command, err)
	}
	line = append(line, '\n')
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		_, _, err = q.conn.WriteMsgUnix(line, syscall.UnixRights(fds...), nil)
	} else {
		_, err = q.conn.Write(line)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: write: %w", command, err)
	}
	for {
		m, err := q.read()
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, contextCause(ctx, err))
		}
		if m.Event != "" {
			if len(q.events) < maxEvents {
				q.events = append(q.events, Event{Name: m.Event, Data: m.Data})
			}
			continue
		}
		if m.ID == nil || *m.ID != id {
			// A reply to a command abandoned earlier (its context ended): skip it.
			continue
		}
		if m.Error != nil {
			return nil, &QMPError{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		if out != nil && m.Return != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return nil, fmt.Errorf("qmp %s: decode return: %w", command, err)
			}
		}
		return m, nil
	}
}

// read reads one JSON line from QEMU.
func (q *QMP) read() (*message, error) {
	line, err := q.reader.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("malformed QMP message %q: %w", truncate(line, 120), err)
	}
	return &m, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// Status is the reply of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus returns the VM's run state ("running", "paused", "inmigrate", ...).
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := q.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// MigrationInfo is the part of query-migrate's reply the standby path needs.
type MigrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

// QueryMigrate returns the state of the current or last migration.
func (q *QMP) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := q.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}

// errEOF is what a read returns once QEMU has closed the socket (after "quit").
var errEOF = io.EOF

// contextCause reports a read cut short by ctx (through the socket deadline) as ctx's
// error, so callers can test it with errors.Is.
func contextCause(ctx context.Context, err error) error {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return err
}
