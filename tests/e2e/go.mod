module github.com/libautostandby/libautostandby/tests/e2e

go 1.25.4

require github.com/libautostandby/libautostandby/go v0.0.0

require (
	go.opentelemetry.io/otel v1.38.0 // indirect
	go.opentelemetry.io/otel/metric v1.38.0 // indirect
	go.opentelemetry.io/otel/trace v1.38.0 // indirect
)

replace github.com/libautostandby/libautostandby/go => ../../go
