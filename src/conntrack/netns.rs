//! Running a short piece of code inside another network namespace without moving the
//! process: a helper thread joins the namespace (`setns` affects only the calling
//! thread), runs the code (typically creating a socket, which stays bound to that
//! namespace for its whole life) and ends.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
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
    let ns = open(path)?;
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

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// `NSFS_MAGIC` from `<linux/magic.h>`: the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Opens the network namespace file at `path`, refusing anything else with
/// [`ConntrackError::NotNetns`].
///
/// Opened non-blocking: a plain `open(2)` of a FIFO waits for a writer, so a mistyped
/// path would hang the caller forever. Close-on-exec, so a host that forks does not leak
/// it. The file must then live on nsfs and be a network namespace (`NS_GET_NSTYPE`),
/// or `setns` would fail later with a less helpful error, or not at all for a namespace
/// of another type opened by mistake.
pub(crate) fn open(path: &Path) -> Result<File, ConntrackError> {
    let not = |why: String| ConntrackError::NotNetns {
        path: path.display().to_string(),
        why,
    };
    let ns = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| ConntrackError::io("open network namespace", e))?;
    let meta = ns
        .metadata()
        .map_err(|e| ConntrackError::io("fstat network namespace", e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a namespace file"
        };
        return Err(not(kind.into()));
    }
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `ns` is open and `fs` is writable.
    if unsafe { libc::fstatfs(ns.as_raw_fd(), &mut fs) } != 0 {
        return Err(ConntrackError::last_os("fstatfs network namespace"));
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    if i64::from(fs.f_type) != NSFS_MAGIC {
        return Err(not("a regular file, not a namespace file (nsfs)".into()));
    }
    // SAFETY: `ns` is open; NS_GET_NSTYPE takes no argument and only returns a value.
    let nstype = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE as _) };
    if nstype < 0 {
        return Err(ConntrackError::last_os("ioctl(NS_GET_NSTYPE)"));
    }
    if nstype != libc::CLONE_NEWNET {
        return Err(not(format!(
            "a namespace of another type (CLONE flag {nstype:#x})"
        )));
    }
    Ok(ns)
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

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("as-netns-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A blocking open would wait for a writer forever: run it where a hang is seen.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.clone();
        std::thread::spawn(move || {
            let _ = tx.send(run_in(Some(&path), || Ok(())).map_err(|e| e.to_string()));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        let _ = std::fs::remove_file(&dir);
        let err = got
            .expect("opening a FIFO as a namespace hung")
            .unwrap_err();
        assert!(err.contains("is not a network namespace: a FIFO"), "{err}");
    }

    #[test]
    fn a_regular_file_is_refused() {
        let path = std::env::temp_dir().join(format!("as-netns-file-{}", std::process::id()));
        std::fs::write(&path, b"not a namespace").unwrap();
        let err = run_in(Some(&path), || Ok(())).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(err, ConntrackError::NotNetns { .. }), "{err}");
        assert!(
            err.to_string().contains("not a namespace file (nsfs)"),
            "{err}"
        );
    }

    #[test]
    fn a_namespace_of_another_type_is_refused() {
        let err = run_in(Some(Path::new("/proc/self/ns/uts")), || Ok(())).unwrap_err();
        assert!(err.to_string().contains("another type"), "{err}");
    }

    #[test]
    fn the_current_network_namespace_is_entered() {
        // setns needs CAP_SYS_ADMIN, even into the namespace the thread is in. Without
        // root this is skipped with a word (`make check`), except in CI, where it fails.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
        if !root && !ci {
            // Straight to the descriptor: the harness captures eprintln! of passing tests.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"needs root: conntrack::netns::tests::the_current_network_namespace_is_entered \
                  (setns); skipped, run `sudo make test` for it\n",
            );
            return;
        }
        run_in(Some(Path::new("/proc/self/ns/net")), || Ok(())).unwrap();
    }
}
