//! Wake admission against real conntrack, in kernel mode: a port sweep from a client
//! outside `wake_source_cidrs` wakes nothing, a SYN storm from 1,000 sources asks for
//! one restore, and 32 instances asked at once are restored at most
//! `max_concurrent_restores` at a time, in the order of their first SYNs, each then
//! serving its client.
//!
//! The standby instances' addresses live in namespace B (so the kernel there answers
//! the SYNs with a RST, as a host answers for a VM whose guest is stopped); conntrack
//! in B reports the NEW events. Needs root.

mod conntrack_support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{Decision, InstanceSpec, Lifecycle, WakeOutcome};
use autostandby::policy::Cidr;
use conntrack_support::*;

/// Instance `i`'s address: 10.231.0.110 on, clear of the fixture's own addresses.
fn vm_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, 0, 110 + i as u8)
}

fn standby_spec(addr: Ipv4Addr, wake_sources: &[&str]) -> InstanceSpec {
    let mut spec = running_instance(IpAddr::V4(addr), 600_000);
    spec.lifecycle = Lifecycle::Standby;
    let p = spec.policy.as_mut().unwrap();
    p.wake_on_traffic = true;
    p.wake_source_cidrs = wake_sources
        .iter()
        .map(|c| Cidr::parse(c).unwrap())
        .collect();
    spec
}

/// Adds `n` instance addresses to namespace B, in one `ip -batch`.
fn add_vm_addrs(pair: &Pair, n: u32) {
    let script: String = (0..n)
        .map(|i| format!("addr add {}/32 dev vb\n", vm_addr(i)))
        .collect();
    let mut child = Command::new("ip")
        .args(["-n", &pair.b, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

fn controller(pair: &Pair, max_concurrent_restores: u32) -> Controller {
    Controller::new(ControllerConfig {
        netns: Some(pair.b_path()),
        max_concurrent_restores,
        ..ControllerConfig::kernel()
    })
    .expect("kernel-mode controller")
}

/// Waits until the first dump of every instance's addresses has been applied, so the
/// event filter covers them.
fn wait_synced(ctl: &Controller, keys: impl Iterator<Item = u64> + Clone) {
    let until = Instant::now() + Duration::from_secs(60);
    while keys.clone().any(|k| ctl.resync_pending(k).unwrap()) {
        assert!(Instant::now() < until, "first dump not applied within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls decisions for `for_` and returns the wakes' keys.
fn wakes_for(ctl: &Controller, for_: Duration) -> Vec<u64> {
    let until = Instant::now() + for_;
    let mut keys = Vec::new();
    let mut out = Vec::new();
    while Instant::now() < until {
        out.clear();
        ctl.poll_decisions(&mut out, 256, Duration::from_millis(50))
            .unwrap();
        keys.extend(out.iter().filter_map(|d| match d {
            Decision::Wake { key, .. } => Some(*key),
            _ => None,
        }));
    }
    keys
}

/// Waits until `progress` reaches `target`, or stops moving for 3 s after events were
/// lost (then it cannot reach it), or 120 s pass; returns the last value.
fn wait_for(ctl: &Controller, target: u64, progress: impl Fn(&Controller) -> u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(120);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let seen = progress(ctl);
        if seen >= target || Instant::now() > until {
            return seen;
        }
        if seen != last {
            (last, since) = (seen, Instant::now());
        } else if ctl.stats().events_lost > 0 && since.elapsed() > Duration::from_secs(3) {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the engine has applied at least `min` flow events since `base` and no
/// more for a second (or 120 s pass); returns how many it applied.
fn settle(ctl: &Controller, base: u64, min: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(120);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let seen = ctl.stats().engine.flow_events - base;
        if seen != last {
            (last, since) = (seen, Instant::now());
        } else if seen >= min && since.elapsed() > Duration::from_secs(1) {
            return seen;
        }
        if Instant::now() > until {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_port_sweep_from_a_client_that_may_not_wake_wakes_nothing() {
    const VMS: u32 = 64;
    const PORTS: u16 = 256;
    let pair = Pair::new();
    add_vm_addrs(&pair, VMS);
    let ctl = controller(&pair, 8);
    for i in 0..VMS {
        // The sweeping client (10.231.0.1) is outside the allowed prefix.
        ctl.register(u64::from(i), standby_spec(vm_addr(i), &["192.0.2.0/24"]))
            .unwrap();
    }
    wait_synced(&ctl, 0..u64::from(VMS));
    let base = ctl.stats().engine.flow_events;
    let refused = pair.in_a(|| {
        let mut refused = 0u32;
        for port in 1..=PORTS {
            for i in 0..VMS {
                let to = SocketAddr::new(IpAddr::V4(vm_addr(i)), port);
                if TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_err() {
                    refused += 1;
                }
            }
        }
        Ok(refused)
    });
    assert_eq!(refused, u32::from(PORTS) * VMS, "every port is closed");
    let syns = u64::from(PORTS) * u64::from(VMS);
    wait_for(&ctl, syns, |c| {
        c.stats().engine.wakes_suppressed.source_not_allowed
    });
    let seen = ctl.stats().engine.flow_events - base;
    let wakes = wakes_for(&ctl, Duration::from_millis(500));
    let s = ctl.stats();
    println!(
        "sweep: {} SYNs, {seen} flow events applied, {} suppressed as source_not_allowed, {} lost-event reports, {} wakes",
        u32::from(PORTS) * VMS,
        s.engine.wakes_suppressed.source_not_allowed,
        s.events_lost,
        wakes.len()
    );
    assert!(wakes.is_empty(), "a sweep woke {wakes:?}");
    assert_eq!(s.engine.wake_decisions, 0);
    // The NEW events did reach the engine: the test would see a wake.
    assert!(s.engine.wakes_suppressed.source_not_allowed > 0);
    if s.events_lost == 0 {
        assert_eq!(
            s.engine.wakes_suppressed.source_not_allowed,
            u64::from(PORTS) * u64::from(VMS)
        );
    }

    // Control: from an allowed client, the same SYN wakes its instance.
    ctl.update(0, standby_spec(vm_addr(0), &["10.231.0.0/24"]))
        .unwrap();
    pair.in_a(|| {
        let to = SocketAddr::new(IpAddr::V4(vm_addr(0)), 80);
        let _ = TcpStream::connect_timeout(&to, Duration::from_secs(2));
        Ok(())
    });
    let until = Instant::now() + Duration::from_secs(30);
    let mut wakes = Vec::new();
    while wakes.is_empty() && Instant::now() < until {
        wakes = wakes_for(&ctl, Duration::from_millis(100));
    }
    assert_eq!(wakes, vec![0]);
}

/// Internet checksum of `data` (with `sum` as the starting value).
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 TCP SYN from `src:sport` to `dst:dport`.
fn syn_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(tcp);
    let tcp_sum = checksum(&pseudo, 0);
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sends one SYN per source from a raw socket of the calling thread's namespace.
fn send_syns(sources: &[Ipv4Addr], dst: Ipv4Addr, dport: u16) -> std::io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns; the buffers
    // outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let mut result = Ok(());
        for (i, &src) in sources.iter().enumerate() {
            let pkt = syn_packet(src, 40_000 + (i % 20_000) as u16, dst, dport);
            let n = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            if n < 0 {
                result = Err(std::io::Error::last_os_error());
                break;
            }
            if i % 100 == 99 {
                // Paced a little, so the event socket keeps up without loss.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        libc::close(fd);
        result
    }
}

#[test]
fn a_syn_storm_from_a_thousand_sources_asks_for_one_restore() {
    const SOURCES: u32 = 1_000;
    let pair = Pair::new();
    add_vm_addrs(&pair, 1);
    // Replies to the forged sources go back through A (which drops them); no
    // reverse-path filter in B.
    for dev in ["all", "default", "vb"] {
        pair.sysctl_b(&format!("net.ipv4.conf.{dev}.rp_filter"), "0");
    }
    let out = Command::new("ip")
        .args([
            "-n",
            &pair.b,
            "route",
            "add",
            "10.232.0.0/16",
            "via",
            CLIENT,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctl = controller(&pair, 8);
    ctl.register(1, standby_spec(vm_addr(0), &[])).unwrap();
    wait_synced(&ctl, 1..2);
    let base = ctl.stats().engine.flow_events;
    let sources: Vec<Ipv4Addr> = (0..SOURCES)
        .map(|i| Ipv4Addr::new(10, 232, (i / 250) as u8, 1 + (i % 250) as u8))
        .collect();
    pair.in_a(|| send_syns(&sources, vm_addr(0), 80));
    let seen = settle(&ctl, base, u64::from(SOURCES));
    let wakes = wakes_for(&ctl, Duration::from_millis(500));
    let s = ctl.stats();
    println!(
        "storm: {SOURCES} SYNs from {SOURCES} sources, {seen} flow events applied, {} lost-event reports, {} wakes",
        s.events_lost,
        wakes.len()
    );
    assert_eq!(wakes, vec![1]);
    assert!(seen > 0, "the SYNs reached conntrack");
    assert_eq!(s.engine.restores_in_flight, 1);

    // Restored: the slot is free, and more SYNs before the host's Running update still
    // ask for nothing.
    ctl.report_wake(1, WakeOutcome::Success).unwrap();
    pair.in_a(|| send_syns(&sources[..100], vm_addr(0), 81));
    settle(&ctl, base + seen, 100);
    assert!(wakes_for(&ctl, Duration::from_millis(500)).is_empty());
    let s = ctl.stats();
    assert_eq!(
        (s.engine.wake_decisions, s.engine.restores_in_flight),
        (1, 0)
    );
}

#[test]
fn thirty_two_instances_are_restored_a_few_at_a_time_in_first_syn_order() {
    const VMS: u32 = 32;
    const LIMIT: u32 = 4;
    let pair = Pair::new();
    add_vm_addrs(&pair, VMS);
    let ctl = Arc::new(controller(&pair, LIMIT));
    for i in 0..VMS {
        ctl.register(u64::from(i), standby_spec(vm_addr(i), &[]))
            .unwrap();
    }
    wait_synced(&ctl, 0..u64::from(VMS));

    let done = AtomicBool::new(false);
    let (order, max_outstanding, served) = std::thread::scope(|s| {
        // The host: restores each woken instance (a listener on its address in B stands
        // for the restored guest) after a while, then reports it and its new state.
        let host = s.spawn(|| {
            let mut order = Vec::new();
            let mut outstanding: HashMap<u64, Instant> = HashMap::new();
            let mut listeners = Vec::new();
            let mut max = 0usize;
            let mut out = Vec::new();
            let until = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::Relaxed) && Instant::now() < until {
                out.clear();
                ctl.poll_decisions(&mut out, 64, Duration::from_millis(20))
                    .unwrap();
                for d in &out {
                    if let Decision::Wake { key, .. } = *d {
                        assert!(outstanding.insert(key, Instant::now()).is_none());
                        order.push(key);
                    }
                }
                max = max.max(outstanding.len());
                assert!(ctl.stats().engine.restores_in_flight <= u64::from(LIMIT));
                // Restores finish one at a time once every slot is taken (so the
                // limit is reached whatever the machine's speed), and the last few
                // after a while.
                let mut ready: Vec<u64> = outstanding
                    .iter()
                    .filter(|(_, t)| t.elapsed() > Duration::from_secs(2))
                    .map(|(k, _)| *k)
                    .collect();
                if ready.is_empty() && outstanding.len() == LIMIT as usize {
                    let oldest = outstanding.iter().min_by_key(|(_, t)| **t).unwrap();
                    ready.push(*oldest.0);
                }
                for key in ready {
                    outstanding.remove(&key);
                    let addr = SocketAddr::new(IpAddr::V4(vm_addr(key as u32)), 80);
                    listeners.push(pair.in_b(move || TcpListener::bind(addr)));
                    ctl.report_wake(key, WakeOutcome::Success).unwrap();
                    let mut spec = standby_spec(vm_addr(key as u32), &[]);
                    spec.lifecycle = Lifecycle::Running;
                    ctl.update(key, spec).unwrap();
                }
            }
            (order, max)
        });
        // The clients: one first SYN per instance, in order, then each retries (as a
        // client's kernel would) until its instance serves it.
        let served = pair.in_a(|| {
            let mut served = HashSet::new();
            for i in 0..VMS {
                let to = SocketAddr::new(IpAddr::V4(vm_addr(i)), 80);
                if TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok() {
                    served.insert(i);
                }
            }
            let until = Instant::now() + Duration::from_secs(90);
            while served.len() < VMS as usize && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
                for i in 0..VMS {
                    let to = SocketAddr::new(IpAddr::V4(vm_addr(i)), 80);
                    if !served.contains(&i)
                        && TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
                    {
                        served.insert(i);
                    }
                }
            }
            Ok(served.len())
        });
        done.store(true, Ordering::Relaxed);
        let (order, max) = host.join().unwrap();
        (order, max, served)
    });
    let s = ctl.stats();
    println!(
        "restores: {} wakes, at most {max_outstanding} outstanding (limit {LIMIT}), {served}/{VMS} clients served, {} lost-event reports",
        order.len(),
        s.events_lost
    );
    assert_eq!(served, VMS as usize, "every client is served");
    assert_eq!(
        order,
        (0..u64::from(VMS)).collect::<Vec<_>>(),
        "first-SYN order, once each"
    );
    assert!(max_outstanding <= LIMIT as usize);
    assert_eq!(max_outstanding, LIMIT as usize, "the slots were used");
    assert_eq!(
        (s.engine.restores_in_flight, s.engine.restores_queued),
        (0, 0)
    );
}
