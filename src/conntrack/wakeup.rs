//! An eventfd that interrupts [`EventSocket::wait_readable_or_woken`]: the thread that
//! reads events sleeps in poll(2), and work for it from other threads (a host call that
//! changed the engine, a dump's results, stop) should not wait for the poll to time out.
//!
//! [`EventSocket::wait_readable_or_woken`]: super::EventSocket::wait_readable_or_woken

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::ConntrackError;

/// A wake-up flag shared between threads (`Send + Sync`).
#[derive(Debug)]
pub(crate) struct Wakeup {
    fd: OwnedFd,
}

impl Wakeup {
    /// A new, unset flag (a non-blocking, close-on-exec eventfd).
    pub(crate) fn new() -> Result<Self, ConntrackError> {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(ConntrackError::io(
                "eventfd",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Sets the flag: a waiter returns now, or its next wait returns at once.
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. The only possible failure is EAGAIN
        // when the counter is saturated, which means the flag is set already.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits up to `timeout` (with sub-millisecond precision) for the flag to be set;
    /// returns whether it was, and clears it.
    pub fn wait(&self, timeout: Duration) -> Result<bool, ConntrackError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        loop {
            // SAFETY: one valid pollfd, a live timespec, no signal mask.
            let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if rc >= 0 {
                let set = pfd.revents != 0;
                if set {
                    self.clear();
                }
                return Ok(set);
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(ConntrackError::io("ppoll", err));
            }
        }
    }

    /// Clears the flag.
    pub(super) fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN means already clear.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_set(w: &Wakeup) -> bool {
        let mut pfd = libc::pollfd {
            fd: w.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn wake_sets_and_clear_resets() {
        let w = Wakeup::new().unwrap();
        assert!(!is_set(&w));
        w.wake();
        w.wake();
        assert!(is_set(&w));
        w.clear();
        assert!(!is_set(&w));
        w.clear();
        assert!(!is_set(&w));
    }

    #[test]
    fn wait_returns_at_once_when_set_and_times_out_when_not() {
        let w = Wakeup::new().unwrap();
        let t = std::time::Instant::now();
        assert!(!w.wait(Duration::from_micros(300)).unwrap());
        assert!(t.elapsed() >= Duration::from_micros(300));
        w.wake();
        let t = std::time::Instant::now();
        assert!(w.wait(Duration::from_secs(5)).unwrap());
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(!is_set(&w), "wait clears the flag");
    }
}
