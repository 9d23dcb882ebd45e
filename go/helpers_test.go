package autostandby

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

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
