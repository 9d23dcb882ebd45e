//! Neighbour entries (ARP for IPv4, NDP for IPv6) over rtnetlink, for holding packets
//! while a VM is in Standby.
//!
//! With no entry for an address, the kernel does not drop a packet for it: it creates an
//! INCOMPLETE entry, queues the packet (up to `unres_qlen_bytes` per entry) and sends
//! solicitations, `mcast_solicit` of them `retrans_time` apart. The queue is sent as soon
//! as the address resolves, which a restored guest does at once by announcing itself
//! (virtio-net's guest announce after a restore: a gratuitous ARP and an unsolicited
//! neighbour advertisement) or by answering the next solicitation. Removing a stopped
//! VM's entries therefore turns the client's first SYN from lost (sent to a device
//! nobody reads) into queued. It is fail-open by nature: nothing is installed, so there
//! is nothing to undo, and if resolution gives up the packets are dropped as before.
//!
//! Static entries (`PERMANENT`, `NOARP`) are left alone: the host set them on purpose.
//! So are entries being resolved (`INCOMPLETE`): they already queue, and deleting one
//! fails its queue, which a local sender sees as EHOSTUNREACH and a forwarded packet's
//! sender as an ICMP host unreachable, ending the very connection that was waiting.
//! `FAILED` entries hold nothing and resolve afresh on the next packet.

use std::net::IpAddr;
use std::path::Path;

use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::error::ConntrackError;
use super::netns;

const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NDA_DST: u16 = 1;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
const NTF_PROXY: u8 = 0x08;

/// One neighbour entry removed by [`NeighbourSocket::remove`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemovedEntry {
    /// The neighbour's address.
    pub addr: IpAddr,
    /// The device the entry was on.
    pub ifindex: u32,
    /// Its NUD state before removal (`NUD_REACHABLE` 0x02, `NUD_STALE` 0x04, ...).
    pub state: u16,
}

/// What [`NeighbourSocket::remove`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Entries removed.
    pub removed: Vec<RemovedEntry>,
    /// Static entries of the addresses that were left in place: packets to them are
    /// not held.
    pub static_kept: Vec<RemovedEntry>,
    /// Entries left in place because they hold no link-layer address: being resolved
    /// (packets already wait in their queue) or failed.
    pub resolving: Vec<RemovedEntry>,
}

/// An rtnetlink socket in one network namespace, removing neighbour entries.
#[derive(Debug)]
pub struct NeighbourSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NeighbourSocket {
    /// Opens the socket in the namespace at `netns` (the caller's for `None`).
    pub fn open(netns: Option<&Path>) -> Result<Self, ConntrackError> {
        let sock = netns::run_in(netns, || {
            let mut s = Socket::new(NETLINK_ROUTE)
                .map_err(|e| ConntrackError::io("socket(NETLINK_ROUTE)", e))?;
            s.bind_auto()
                .map_err(|e| ConntrackError::io("bind rtnetlink socket", e))?;
            Ok(s)
        })?;
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0; 64 << 10],
        })
    }

    /// Removes every neighbour entry of `addrs` that holds a link-layer address and is
    /// not static, on any device. An entry that vanishes meanwhile is not an error.
    pub fn remove(&mut self, addrs: &[IpAddr]) -> Result<RemoveReport, ConntrackError> {
        let mut report = RemoveReport::default();
        if addrs.is_empty() {
            return Ok(report);
        }
        let mut found = Vec::new();
        self.dump(|e| {
            if addrs.contains(&e.addr) {
                found.push(e);
            }
        })?;
        for e in found {
            if e.state & (NUD_PERMANENT | NUD_NOARP) != 0 {
                report.static_kept.push(e);
                continue;
            }
            if e.state & (NUD_INCOMPLETE | NUD_FAILED) != 0 {
                report.resolving.push(e);
                continue;
            }
            match self.delete(&e) {
                Ok(()) => report.removed.push(e),
                Err(ConntrackError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(report)
    }

    /// The neighbour entries of `addrs` currently in the table, on any device.
    pub fn entries(&mut self, addrs: &[IpAddr]) -> Result<Vec<RemovedEntry>, ConntrackError> {
        let mut out = Vec::new();
        self.dump(|e| {
            if addrs.contains(&e.addr) {
                out.push(e);
            }
        })?;
        Ok(out)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn dump(&mut self, mut each: impl FnMut(RemovedEntry)) -> Result<(), ConntrackError> {
        let seq = self.next_seq();
        let req = request(
            RTM_GETNEIGH,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            libc::AF_UNSPEC as u8,
            0,
            None,
        );
        self.sock
            .send(&req, 0)
            .map_err(|e| ConntrackError::io("send RTM_GETNEIGH", e))?;
        loop {
            let n = self.recv()?;
            let mut done = false;
            for_each_message(&self.buf[..n], |ty, mseq, body| {
                if mseq != seq {
                    return Ok(());
                }
                match ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => check_ack(body, "dump neighbours")?,
                    RTM_NEWNEIGH => {
                        if let Some(e) = parse_neigh(body)? {
                            each(e);
                        }
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if done {
                return Ok(());
            }
        }
    }

    fn delete(&mut self, e: &RemovedEntry) -> Result<(), ConntrackError> {
        let seq = self.next_seq();
        let family = match e.addr {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        } as u8;
        let req = request(
            RTM_DELNEIGH,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            e.ifindex,
            Some(e.addr),
        );
        self.sock
            .send(&req, 0)
            .map_err(|e| ConntrackError::io("send RTM_DELNEIGH", e))?;
        loop {
            let n = self.recv()?;
            let mut acked = None;
            for_each_message(&self.buf[..n], |ty, mseq, body| {
                if mseq == seq && ty == NLMSG_ERROR {
                    acked = Some(check_ack(body, "delete neighbour"));
                }
                Ok(())
            })?;
            if let Some(r) = acked {
                return r;
            }
        }
    }

    fn recv(&mut self) -> Result<usize, ConntrackError> {
        let mut slice = &mut self.buf[..];
        self.sock
            .recv(&mut slice, 0)
            .map_err(|e| ConntrackError::io("recv rtnetlink", e))
    }
}

/// An rtnetlink neighbour request: header, `ndmsg`, and `NDA_DST` when given.
fn request(
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    ifindex: u32,
    dst: Option<IpAddr>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + NDMSG_LEN + 20);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ndmsg: family, 3 bytes padding, ifindex, state, flags, type.
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&[0; 4]);
    if let Some(addr) = dst {
        let octets: Vec<u8> = match addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        m.extend_from_slice(&((4 + octets.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&NDA_DST.to_ne_bytes());
        m.extend_from_slice(&octets);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Calls `f(type, seq, body)` for each netlink message in a datagram.
fn for_each_message(
    mut data: &[u8],
    mut f: impl FnMut(u16, u32, &[u8]) -> Result<(), ConntrackError>,
) -> Result<(), ConntrackError> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(ConntrackError::Malformed("netlink message length"));
        }
        f(u16_at(data, 4), u32_at(data, 8), &data[NLMSG_HDRLEN..len])?;
        let step = ((len + 3) & !3).min(data.len());
        data = &data[step..];
    }
    Ok(())
}

/// The error code of an `NLMSG_ERROR` (0 is an acknowledgement).
fn check_ack(body: &[u8], op: &'static str) -> Result<(), ConntrackError> {
    if body.len() < 4 {
        return Err(ConntrackError::Malformed("short netlink error"));
    }
    let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
    if code == 0 {
        Ok(())
    } else {
        Err(ConntrackError::io(
            op,
            std::io::Error::from_raw_os_error(-code),
        ))
    }
}

/// A neighbour entry from an `RTM_NEWNEIGH` body; `None` for proxy entries and
/// families other than IPv4 and IPv6.
fn parse_neigh(body: &[u8]) -> Result<Option<RemovedEntry>, ConntrackError> {
    if body.len() < NDMSG_LEN {
        return Err(ConntrackError::Malformed("short ndmsg"));
    }
    let family = body[0] as i32;
    let ifindex = u32_at(body, 4);
    let state = u16_at(body, 8);
    let flags = body[10];
    if flags & NTF_PROXY != 0 || (family != libc::AF_INET && family != libc::AF_INET6) {
        return Ok(None);
    }
    let mut attrs = &body[NDMSG_LEN..];
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0) as usize;
        if len < 4 || len > attrs.len() {
            return Err(ConntrackError::Malformed("neighbour attribute length"));
        }
        if u16_at(attrs, 2) == NDA_DST {
            let v = &attrs[4..len];
            let addr = match v.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(v).expect("length checked")),
                16 => IpAddr::from(<[u8; 16]>::try_from(v).expect("length checked")),
                _ => return Ok(None),
            };
            return Ok(Some(RemovedEntry {
                addr,
                ifindex,
                state,
            }));
        }
        let step = (len + 3) & !3;
        attrs = &attrs[step.min(attrs.len())..];
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_request_carries_family_device_and_address() {
        let addr: IpAddr = "fd00::2".parse().unwrap();
        let m = request(
            RTM_DELNEIGH,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            10,
            3,
            Some(addr),
        );
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_DELNEIGH);
        assert_eq!(u32_at(&m, 8), 7);
        let body = &m[NLMSG_HDRLEN..];
        let e = parse_neigh(body).unwrap().unwrap();
        assert_eq!(e.addr, addr);
        assert_eq!(e.ifindex, 3);
    }

    #[test]
    fn messages_are_walked_and_bad_lengths_refused() {
        let a = request(RTM_NEWNEIGH, 0, 1, 2, 1, Some("10.0.0.2".parse().unwrap()));
        let b = request(NLMSG_DONE, 0, 1, 0, 0, None);
        let mut data = a.clone();
        data.extend_from_slice(&b);
        let mut seen = Vec::new();
        for_each_message(&data, |ty, _, _| {
            seen.push(ty);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![RTM_NEWNEIGH, NLMSG_DONE]);
        let mut bad = a;
        bad[0] = 200;
        assert!(for_each_message(&bad, |_, _, _| Ok(())).is_err());
    }
}
