//! The event socket's classic BPF filter against the parser. For arbitrary flows and
//! address sets, run the program (bpf::interpret, which runs it as the kernel runs a
//! socket filter on a netlink skb) on the message the kernel would send:
//! - unchanged message: the filter passes it exactly when the parser finds the flow's
//!   reply source or original destination in the set;
//! - message with arbitrary bytes changed or appended: the filter may pass more, but
//!   never drops an event the parser reads as one for a watched address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use autostandby::conntrack::request::testing::build_flow_message;
use autostandby::conntrack::{bpf, parse, wire};
use autostandby::flow::{Flow, TcpState, Tuple};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    v6: bool,
    udp: bool,
    client: [u8; 16],
    guest: [u8; 16],
    /// The address the client dialled, when DNAT rewrote it to the guest.
    dialled: Option<[u8; 16]>,
    ports: (u16, u16, u16),
    id: u32,
    zone: u16,
    mark: u32,
    status: u32,
    tcp_state: u8,
    delete: bool,
    /// Other watched addresses (either family).
    others: Vec<(bool, [u8; 16])>,
    watch_guest: bool,
    watch_dialled: bool,
    watch_client: bool,
    /// Byte changes at (offset modulo length).
    changes: Vec<(u16, u8)>,
    /// Bytes appended inside the message (its length is fixed up).
    tail: Vec<u8>,
}

fn addr(v6: bool, b: [u8; 16]) -> IpAddr {
    if v6 {
        let a = Ipv6Addr::from(b);
        // The filter compares the message's bytes, the engine canonical addresses: an
        // IPv4-mapped address inside an IPv6 flow is the one case where they differ. The
        // kernel's IPv6 input drops such packets (no conntrack entry carries them), so
        // the generator does not produce them.
        if a.to_ipv4_mapped().is_some() {
            let mut b = b;
            b[0] = 0xfd;
            return IpAddr::V6(Ipv6Addr::from(b));
        }
        IpAddr::V6(a)
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

fn watched(set: &[IpAddr], a: IpAddr) -> bool {
    set.iter().any(|w| w.to_canonical() == a.to_canonical())
}

fuzz_target!(|input: Input| {
    let client = addr(input.v6, input.client);
    let guest = addr(input.v6, input.guest);
    let dialled = input.dialled.map_or(guest, |d| addr(input.v6, d));
    let (cport, dport, gport) = input.ports;
    let flow = Flow {
        protocol: if input.udp { 17 } else { 6 },
        orig: Tuple::new(client, cport, dialled, dport),
        reply: Tuple::new(guest, gport, client, cport),
        zone: input.zone,
        id: input.id,
        tcp_state: (!input.udp).then(|| TcpState(input.tcp_state % 10)),
        status: input.status,
        mark: input.mark,
        timeout_s: None,
    };
    let mut set: Vec<IpAddr> = input
        .others
        .iter()
        .take(64)
        .map(|(v6, b)| addr(*v6, *b))
        .collect();
    if input.watch_guest {
        set.push(guest);
    }
    if input.watch_dialled {
        set.push(dialled);
    }
    if input.watch_client {
        set.push(client);
    }
    let prog = bpf::address_filter(&set).expect("64 addresses fit");

    let (subtype, flags) = if input.delete {
        (wire::IPCTNL_MSG_CT_DELETE, 0)
    } else {
        (wire::IPCTNL_MSG_CT_NEW, wire::NLM_F_CREATE)
    };
    let mut msg = build_flow_message(&flow, subtype, flags);
    let pristine = input.changes.is_empty() && input.tail.is_empty();
    msg.extend_from_slice(&input.tail);
    if !input.tail.is_empty() {
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
    }
    let n = msg.len();
    for (off, v) in &input.changes {
        msg[*off as usize % n] = *v;
    }

    let verdict = bpf::interpret(&prog, &msg).expect("address_filter emits a valid program");
    assert!(
        verdict == bpf::ACCEPT || verdict == bpf::DROP,
        "verdict {verdict}"
    );
    let event = match parse::messages(&msg).next() {
        Some(Ok(m)) => parse::parse_event(&m).ok().flatten(),
        _ => None,
    };
    let relevant = event
        .as_ref()
        .is_some_and(|e| watched(&set, e.flow.reply.src) || watched(&set, e.flow.orig.dst));
    if relevant {
        assert_eq!(
            verdict,
            bpf::ACCEPT,
            "the filter dropped a watched event: {event:?} set {set:?}"
        );
    }
    if pristine {
        let e = event.expect("the parser reads the kernel's message");
        assert_eq!(e.flow.reply.src, flow.reply.src);
        assert_eq!(e.flow.orig.dst, flow.orig.dst);
        let want = if relevant { bpf::ACCEPT } else { bpf::DROP };
        assert_eq!(
            verdict, want,
            "filter and parser disagree on {flow:?} set {set:?}"
        );
    }
});
