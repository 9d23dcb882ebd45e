module github.com/libautostandby/libautostandby/go/compat

go 1.25.4

require (
	github.com/libautostandby/libautostandby/go v0.0.0
	go.opentelemetry.io/otel v1.38.0
)

require (
	github.com/go-logr/logr v1.4.3 // indirect
	github.com/go-logr/stdr v1.2.2 // indirect
	go.opentelemetry.io/auto/sdk v1.2.1 // indirect
	go.opentelemetry.io/otel/metric v1.38.0 // indirect
	go.opentelemetry.io/otel/trace v1.38.0 // indirect
)

replace github.com/libautostandby/libautostandby/go => ../
