// Package compat is a hypeman-shaped consumer of the Go module, built the way hypeman
// builds it: a module of its own that requires ours, a store adapter over an instance
// manager with hypeman's method set (its lifecycle subscription takes no context), and
// the controller made by the very call hypeman's provider makes. Its test runs that
// provider against real conntrack in network namespaces it creates.
package compat
