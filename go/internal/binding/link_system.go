//go:build cgo && linux && autostandby_system && !autostandby_shared

package binding

// With -tags autostandby_system: a libautostandby installed on the system, found by
// the linker's search path (add directories with CGO_LDFLAGS=-L...). The linker takes
// libautostandby.so when there is one and libautostandby.a otherwise. The header is
// this directory's copy; the library's ABI version is checked again in New.

/*
#cgo LDFLAGS: -lautostandby -ldl -lpthread -lm -lc
*/
import "C"
