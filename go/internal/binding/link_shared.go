//go:build cgo && linux && autostandby_shared

package binding

// With -tags autostandby_shared: libautostandby.so from target/release (found at run
// time through the rpath, or LD_LIBRARY_PATH when installed elsewhere).

/*
#cgo LDFLAGS: -L${SRCDIR}/../../../target/release -lautostandby -Wl,-rpath,${SRCDIR}/../../../target/release
*/
import "C"
