package autostandby

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// A client and two instants the tests share.
var (
	client = netip.MustParseAddrPort("203.0.113.7:40000")
	t1055  = time.Date(2026, 4, 5, 10, 55, 0, 0, time.UTC)
	t1100  = time.Date(2026, 4, 5, 11, 0, 0, 0, time.UTC)
)

func at(t time.Time) *time.Time { return &t }

func sameTime(a *time.Time, b time.Time) bool { return a != nil && a.Equal(b) }

// nopStore is an InstanceStore with nothing in it.
type nopStore struct{}

func (*nopStore) ListInstances(context.Context) ([]Instance, error) { return nil, nil }
func (*nopStore) StandbyInstance(context.Context, string) error     { return nil }
func (*nopStore) SetRuntime(context.Context, string, *Runtime) error {
	return nil
}
func (*nopStore) SubscribeInstanceEvents() (<-chan InstanceEvent, func(), error) {
	return make(chan InstanceEvent), func() {}, nil
}

func TestMain(m *testing.M) {
	// Keep test output readable: warnings and errors only.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}
