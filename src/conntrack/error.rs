//! Errors of the conntrack layer.

use std::io;

/// What went wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The kernel refused: the caller lacks root or CAP_NET_ADMIN.
    #[error("{op}: permission denied (needs root or CAP_NET_ADMIN)")]
    PermissionDenied {
        /// What was being done.
        op: &'static str,
    },
    /// Any other system call failure.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel sent something that is not valid ctnetlink.
    #[error("malformed netlink message: {0}")]
    Malformed(&'static str),
    /// The path given as a network namespace is something else (a FIFO, a regular file,
    /// another kind of namespace).
    #[error("{path} is not a network namespace: {why}")]
    NotNetns {
        /// The path as given.
        path: String,
        /// What it is instead.
        why: String,
    },
    /// The request itself cannot be expressed (for example a BPF program too long).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ConntrackError {
    /// Classifies an I/O error, telling permission problems apart.
    pub fn io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::PermissionDenied { op },
            _ => Self::Io { op, source },
        }
    }

    /// The last OS error, classified.
    pub(crate) fn last_os(op: &'static str) -> Self {
        Self::io(op, io::Error::last_os_error())
    }

    /// True when the caller lacks the privilege for the operation.
    pub(crate) fn is_permission_denied(&self) -> bool {
        matches!(self, Self::PermissionDenied { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_and_eacces_say_what_is_needed() {
        for code in [libc::EPERM, libc::EACCES] {
            let e = ConntrackError::io("bind", io::Error::from_raw_os_error(code));
            assert!(e.is_permission_denied());
            assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        }
        let e = ConntrackError::io("recv", io::Error::from_raw_os_error(libc::EBADF));
        assert!(!e.is_permission_denied());
        assert!(matches!(e, ConntrackError::Io { op: "recv", .. }));
    }
}
