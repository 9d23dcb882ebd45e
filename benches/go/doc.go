// Package bench compares classifying a large conntrack table through libautostandby
// with hypeman's approach (a full vishvananda/netlink dump materialised in Go, then
// every instance matched against every flow), in the same process.
package bench
