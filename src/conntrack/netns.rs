//! Running a short piece of code inside another network namespace without moving the
//! process: a helper thread joins the namespace (`setns` affects only the calling
//! thread), runs the code (typically creating a socket, which stays bound to that
//! namespace for its whole life) and ends.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::ConntrackError;

/// Runs `f` in the network namespace at `netns` (or in the caller's, for `None`) and
/// returns its result.
pub fn run_in<T, F>(netns: Option<&Path>, f: F) -> Result<T, ConntrackError>
where
    T: Send,
    F: FnOnce() -> Result<T, ConntrackError> + Send,
{
    let Some(path) = netns else {
        return f();
    };
    let ns = File::open(path).map_err(|e| ConntrackError::io("open network namespace", e))?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("as-netns".into())
            .spawn_scoped(scope, move || {
                // SAFETY: `ns` is an open namespace file; CLONE_NEWNET only switches this
                // thread's network namespace, and the thread ends right after `f`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(ConntrackError::last_os("setns(CLONE_NEWNET)"));
                }
                f()
            })
            .map_err(|e| ConntrackError::io("spawn namespace helper thread", e))?
            .join()
            .unwrap_or_else(|_| {
                Err(ConntrackError::Invalid(
                    "namespace helper thread panicked".into(),
                ))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_runs_in_place() {
        let id = std::thread::current().id();
        let ran_on = run_in(None, || Ok(std::thread::current().id())).unwrap();
        assert_eq!(ran_on, id);
    }

    #[test]
    fn a_missing_namespace_is_a_clear_error() {
        let err = run_in(Some(Path::new("/nonexistent/netns/x")), || Ok(())).unwrap_err();
        assert!(err.to_string().contains("open network namespace"), "{err}");
    }
}
