//go:build cgo && linux && amd64 && !autostandby_shared && !autostandby_system

package binding

// The default on linux/amd64: the static library shipped in this directory
// (libautostandby_linux_amd64.a, rebuilt with `make prebuilt` at the repository root),
// linked into the binary. A Go build needs no Rust toolchain, and the binary needs
// nothing at run time beyond the C library. The libraries after the archive are the
// ones the Rust standard library needs; the C compiler adds its unwinder (libgcc_s, or
// libgcc_eh in a -static link).

/*
#cgo LDFLAGS: ${SRCDIR}/libautostandby_linux_amd64.a -ldl -lpthread -lm -lc
*/
import "C"

// libraryBuild identifies the archive a binary was linked with (a prefix of its
// sha256). `make test-go` sets it with -ldflags -X: Go's build cache does not look at
// the content of an archive named in #cgo LDFLAGS, so without a changed flag a test
// binary linked with an older archive could be reused after `make prebuilt`.
var libraryBuild string
