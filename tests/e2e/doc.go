// Package e2e holds the end-to-end tests: a real QEMU guest on a TAP device in a network
// namespace, real conntrack, and the Go controller in kernel mode putting the guest into
// Standby and waking it. They are built with the "e2e" tag and run inside the namespace
// tests/e2e/vm.sh creates: use `make e2e` (as root).
package e2e
