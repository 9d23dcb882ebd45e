// Package autostandby binds libautostandby, the Rust idle-detection and standby engine,
// for Go hosts such as hypeman.
package autostandby
