package qemu

// LibraryBuild identifies the libautostandby.a a binary was linked with (a hash of the
// archive). The e2e scripts set it with -ldflags -X: Go caches linked binaries without
// looking at the content of an archive named in #cgo LDFLAGS, so without a changed flag
// it would keep serving a binary linked with an older library.
var LibraryBuild string
