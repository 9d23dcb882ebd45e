//! The C ABI: the only `extern "C"` code in the crate.

use std::ffi::c_char;

/// Version of the C ABI. Bumped on any incompatible change to `include/autostandby.h`.
pub const AUTOSTANDBY_ABI_VERSION: u32 = 1;

/// The library version as a NUL-terminated string, e.g. `"0.1.0"`.
///
/// The pointer is static: never free it. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn autostandby_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The C ABI version the library implements; compare with `AUTOSTANDBY_ABI_VERSION`.
///
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn autostandby_abi_version() -> u32 {
    AUTOSTANDBY_ABI_VERSION
}
