// The module path lies under …/go so that the benchmark may import the bindings'
// internal packages (Go checks internal imports by path); the directory is benches/go.
module github.com/libautostandby/libautostandby/go/bench

go 1.25.4

require (
	github.com/libautostandby/libautostandby/go v0.0.0
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
	golang.org/x/sys v0.38.0
)

replace github.com/libautostandby/libautostandby/go => ../../go
