//! What `netlink-sys` lacks, on a raw netlink socket: forced receive buffers, the drop
//! counter, classic BPF filters and batched receive.

use std::io;
use std::os::fd::RawFd;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::error::ConntrackError;

/// Opens a `NETLINK_NETFILTER` socket (close-on-exec) bound to an automatic port.
pub fn open_netfilter() -> Result<Socket, ConntrackError> {
    let mut sock = Socket::new(NETLINK_NETFILTER)
        .map_err(|e| ConntrackError::io("socket(NETLINK_NETFILTER)", e))?;
    sock.bind_auto()
        .map_err(|e| ConntrackError::io("bind netlink socket", e))?;
    Ok(sock)
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The receive buffer the kernel actually grants.
pub(crate) fn effective_rcvbuf(fd: RawFd) -> Result<usize, ConntrackError> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
        .map(|v| v.max(0) as usize)
        .map_err(|e| ConntrackError::io("getsockopt(SO_RCVBUF)", e))
}

/// How a receive buffer request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RcvbufOutcome {
    /// The effective size granted (what `SO_RCVBUF` reads back).
    pub effective: usize,
    /// `SO_RCVBUFFORCE` was refused (no CAP_NET_ADMIN) and `SO_RCVBUF`, capped by
    /// `net.core.rmem_max`, was used instead.
    pub fell_back: bool,
}

/// Asks for an effective receive buffer of `bytes`: `SO_RCVBUFFORCE` first (ignores
/// `rmem_max`, needs CAP_NET_ADMIN), else `SO_RCVBUF`. The kernel doubles the value it is
/// given, so half is requested.
pub(crate) fn set_rcvbuf(fd: RawFd, bytes: usize) -> Result<RcvbufOutcome, ConntrackError> {
    let request = (bytes / 2).clamp(1, i32::MAX as usize) as i32;
    let fell_back = match setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, request) {
        Ok(()) => false,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, request)
                .map_err(|e| ConntrackError::io("setsockopt(SO_RCVBUF)", e))?;
            true
        }
        Err(e) => return Err(ConntrackError::io("setsockopt(SO_RCVBUFFORCE)", e)),
    };
    let effective = effective_rcvbuf(fd)?;
    if fell_back || effective < bytes {
        tracing::warn!(
            wanted = bytes,
            effective,
            fell_back,
            "conntrack event socket got a smaller receive buffer than configured"
        );
    }
    Ok(RcvbufOutcome {
        effective,
        fell_back,
    })
}

/// `SO_MEMINFO[SK_MEMINFO_DROPS]`: messages the kernel dropped because the receive
/// buffer was full (exact, unlike ENOBUFS which is reported once per episode).
pub(crate) fn socket_drops(fd: RawFd) -> Result<u32, ConntrackError> {
    // SK_MEMINFO_VARS is 9 on every kernel that has SO_MEMINFO (4.6+).
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(ConntrackError::last_os("getsockopt(SO_MEMINFO)"));
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

/// Attaches (or atomically replaces) a classic BPF socket filter.
pub(crate) fn attach_filter(
    fd: RawFd,
    program: &[libc::sock_filter],
) -> Result<(), ConntrackError> {
    if program.is_empty() || program.len() > super::bpf::MAX_INSNS {
        return Err(ConntrackError::Invalid(format!(
            "BPF program of {} instructions (1..={} allowed)",
            program.len(),
            super::bpf::MAX_INSNS
        )));
    }
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ConntrackError::last_os("setsockopt(SO_ATTACH_FILTER)"))
    }
}

/// Removes the socket filter, if any.
pub(crate) fn detach_filter(fd: RawFd) -> Result<(), ConntrackError> {
    match setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0) {
        Ok(()) => Ok(()),
        // ENOENT: there was no filter.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(ConntrackError::io("setsockopt(SO_DETACH_FILTER)", e)),
    }
}

/// Size of one receive slot: events are under 1 KiB; 8 KiB covers labels, helpers and
/// security contexts.
pub(crate) const SLOT_BYTES: usize = 8192;

/// Fixed buffers for `recvmmsg`, allocated once.
pub(crate) struct MmsgBuffers {
    data: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside point only into `data`, which this struct owns; they
// are never shared outside a `&mut self` call.
unsafe impl Send for MmsgBuffers {}

impl std::fmt::Debug for MmsgBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgBuffers")
            .field("slots", &self.headers.len())
            .finish()
    }
}

/// Outcome of one `recvmmsg` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MmsgResult {
    /// This many datagrams were received.
    Received(usize),
    /// Nothing queued (EAGAIN).
    Empty,
    /// The kernel reported ENOBUFS: messages were dropped. The queue stays readable.
    Overrun,
}

impl MmsgBuffers {
    /// `slots` datagrams of [`SLOT_BYTES`] each.
    pub(crate) fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        let mut data = vec![0u8; slots * SLOT_BYTES];
        let base = data.as_mut_ptr();
        let iovecs: Vec<libc::iovec> = (0..slots)
            .map(|i| libc::iovec {
                // SAFETY: `i * SLOT_BYTES` is within `data`.
                iov_base: unsafe { base.add(i * SLOT_BYTES) }.cast(),
                iov_len: SLOT_BYTES,
            })
            .collect();
        // SAFETY: mmsghdr is plain data for which all-zero is valid.
        let headers = (0..slots)
            .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
            .collect();
        let mut me = Self {
            data,
            iovecs,
            headers,
        };
        me.rearm();
        me
    }

    fn rearm(&mut self) {
        let iov = self.iovecs.as_mut_ptr();
        for (i, h) in self.headers.iter_mut().enumerate() {
            // SAFETY: `i` indexes `iovecs`, which has one entry per header.
            h.msg_hdr.msg_iov = unsafe { iov.add(i) };
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
    }

    /// Number of slots.
    pub(crate) fn slots(&self) -> usize {
        self.headers.len()
    }

    /// One non-blocking `recvmmsg`.
    pub(crate) fn recv(&mut self, fd: RawFd) -> Result<MmsgResult, ConntrackError> {
        loop {
            // SAFETY: every header points at a live iovec over `data`; counts match.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    self.headers.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                return Ok(if n == 0 {
                    MmsgResult::Empty
                } else {
                    MmsgResult::Received(n as usize)
                });
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(MmsgResult::Empty),
                Some(libc::ENOBUFS) => return Ok(MmsgResult::Overrun),
                _ => return Err(ConntrackError::io("recvmmsg", err)),
            }
        }
    }

    /// Datagram `i` of the last receive, and whether the kernel truncated it.
    #[inline]
    pub(crate) fn datagram(&self, i: usize) -> (&[u8], bool) {
        let h = &self.headers[i];
        let len = (h.msg_len as usize).min(SLOT_BYTES);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        (&self.data[i * SLOT_BYTES..i * SLOT_BYTES + len], truncated)
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable; false on timeout.
pub(crate) fn wait_readable(fd: RawFd, timeout_ms: i32) -> Result<bool, ConntrackError> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd that outlives the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(ConntrackError::io("poll", err));
        }
    }
}

/// Receives one datagram into `buf`, blocking. Returns its length.
pub fn recv_blocking(sock: &Socket, buf: &mut [u8]) -> Result<usize, ConntrackError> {
    loop {
        match sock.recv(&mut &mut buf[..], 0) {
            Ok(n) => return Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(ConntrackError::io("recv", e)),
        }
    }
}

/// Socket set-ups the kernel tests need and `std` does not offer.
#[doc(hidden)]
pub mod testing {
    use std::io;
    use std::net::{SocketAddrV4, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd};

    /// Connects from a chosen local address and port (`SO_REUSEADDR`), so a test can
    /// reuse the tuple of a connection that just ended.
    pub fn connect_from(local: SocketAddrV4, remote: SocketAddrV4) -> io::Result<TcpStream> {
        let sin = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new socket this function owns from here on.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        super::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let (l, r) = (sin(local), sin(remote));
        // SAFETY: `l` is a valid sockaddr_in of `len` bytes.
        if unsafe { libc::bind(fd, (&l as *const libc::sockaddr_in).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `r` is a valid sockaddr_in of `len` bytes.
        if unsafe { libc::connect(fd, (&r as *const libc::sockaddr_in).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }

    /// Makes closing `s` send a RST (`SO_LINGER` with a zero timeout).
    pub fn reset_on_close(s: &TcpStream) -> io::Result<()> {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `linger` outlives the call and its size is passed exactly.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn recvmmsg_reads_a_batch_and_flags_truncated_datagrams() {
        let (tx, rx) = UnixDatagram::pair().unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut bufs = MmsgBuffers::new(4);
        assert_eq!(bufs.recv(rx.as_raw_fd()).unwrap(), MmsgResult::Empty);
        for i in 0..6u8 {
            tx.send(&[i; 100]).unwrap();
        }
        tx.send(&vec![9u8; SLOT_BYTES + 100]).unwrap();
        assert_eq!(bufs.recv(rx.as_raw_fd()).unwrap(), MmsgResult::Received(4));
        for i in 0..4 {
            let (d, truncated) = bufs.datagram(i);
            assert_eq!(d, &[i as u8; 100][..]);
            assert!(!truncated);
        }
        assert_eq!(bufs.recv(rx.as_raw_fd()).unwrap(), MmsgResult::Received(3));
        assert_eq!(bufs.datagram(1).0, &[5u8; 100][..]);
        let (big, truncated) = bufs.datagram(2);
        assert!(
            truncated,
            "a datagram larger than a slot is reported truncated"
        );
        assert_eq!(big.len(), SLOT_BYTES);
        assert_eq!(bufs.recv(rx.as_raw_fd()).unwrap(), MmsgResult::Empty);
    }

    #[test]
    fn a_bad_descriptor_is_an_io_error_not_a_panic() {
        let mut bufs = MmsgBuffers::new(1);
        let err = bufs.recv(-1).unwrap_err();
        assert!(
            matches!(err, ConntrackError::Io { op: "recvmmsg", .. }),
            "{err}"
        );
        assert!(socket_drops(-1).is_err());
        assert!(attach_filter(-1, &[]).is_err());
    }
}
