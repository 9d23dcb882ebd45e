//! The root check of the tests that create network namespaces and read conntrack.
//!
//! In CI (`CI` set to anything but empty, `0` or `false`) a missing root fails the test
//! like any assertion, so a CI run can never pass without them. Elsewhere, someone
//! running `cargo test` as a user is told once which test binary needs root and what to
//! run instead, and that binary stops with success, rather than every test panicking.

use std::io::Write;

/// Returns when the process may create network namespaces (effective uid 0). Otherwise
/// panics in CI, and outside CI prints "needs root" and exits the test binary with
/// status 0; `what` says what needs root ("network namespaces, conntrack").
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    let binary = std::env::args()
        .next()
        .and_then(|arg0| {
            let name = std::path::Path::new(&arg0)
                .file_name()?
                .to_str()?
                .to_owned();
            // Test binaries are named NAME-HASH.
            Some(match name.rsplit_once('-') {
                Some((stem, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    stem.to_owned()
                }
                _ => name,
            })
        })
        .unwrap_or_else(|| "this test".to_owned());
    if in_ci() {
        panic!("{binary} needs root ({what}): CI runs every test as root");
    }
    // Straight to the file descriptor: the test harness captures eprintln! of passing
    // tests, and exiting now would drop the message.
    let _ = writeln!(
        std::io::stderr(),
        "needs root: {binary} ({what}); the binary stops here, its other tests not run. \
         Run `sudo make test` for every test, or `make check` for those that need no root."
    );
    std::process::exit(0);
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}
