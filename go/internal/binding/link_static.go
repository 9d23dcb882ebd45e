//go:build cgo && linux && !autostandby_shared

package binding

// The default: libautostandby.a linked into the binary, nothing to find at run time.
// Build it first with `cargo build --release --lib` at the repository root.

/*
#cgo LDFLAGS: ${SRCDIR}/../../../target/release/libautostandby.a -ldl -lpthread -lm -lgcc_s -lc
*/
import "C"
