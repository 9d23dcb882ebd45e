//! Policy validation and normalisation: every invalid input gets an error naming the
//! field and the value; valid input is canonicalised.

use std::net::IpAddr;

use autostandby::policy::{Cidr, MAX_IDLE_TIMEOUT_MS, Policy, PolicyError, Protocols};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn enabled(timeout_ms: u64) -> Policy {
    Policy {
        enabled: true,
        idle_timeout_ms: timeout_ms,
        ..Policy::default()
    }
}

#[test]
fn normalisation_masks_dedups_and_sorts_numerically() {
    let mut p = enabled(300_000);
    p.ignore_source_cidrs = Policy::parse_cidrs([
        "10.0.0.0/8",
        " 10.0.0.0/8 ",
        "",
        "192.168.1.1/24",
        "fd00::1/8",
        "9.0.0.0/8",
        "::ffff:100.64.0.0/106",
    ])
    .unwrap();
    p.ignore_destination_ports = vec![9000, 22, 9000];
    let n = p.normalized().unwrap();
    let texts: Vec<String> = n
        .ignore_source_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    // Numeric order: 9/8 before 10/8 (as strings "10..." would sort first).
    assert_eq!(
        texts,
        [
            "9.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "192.168.1.0/24",
            "fd00::/8"
        ]
    );
    assert_eq!(n.ignore_destination_ports, vec![22, 9000]);
}

#[test]
fn zero_timeout_is_rejected() {
    let e = enabled(0).normalized().unwrap_err();
    assert_eq!(e, PolicyError::IdleTimeoutNotPositive { value_ms: 0 });
    assert_eq!(e.field(), "idle_timeout");
    assert!(e.to_string().contains("must be positive"));
}

#[test]
fn timeout_above_thirty_days_is_rejected() {
    assert!(enabled(MAX_IDLE_TIMEOUT_MS).normalized().is_ok());
    let e = enabled(MAX_IDLE_TIMEOUT_MS + 1).normalized().unwrap_err();
    assert_eq!(
        e,
        PolicyError::IdleTimeoutTooLarge {
            value_ms: MAX_IDLE_TIMEOUT_MS + 1
        }
    );
    assert_eq!(e.field(), "idle_timeout");
}

#[test]
fn port_zero_is_rejected_and_wide_ports_are_checked() {
    let mut p = enabled(1000);
    p.ignore_destination_ports = vec![80, 0];
    let e = p.normalized().unwrap_err();
    assert_eq!(e, PolicyError::PortOutOfRange { value: 0 });
    assert_eq!(e.field(), "ignore_destination_ports");
    assert_eq!(Policy::port_from_u32(65535), Ok(65535));
    assert_eq!(
        Policy::port_from_u32(65536),
        Err(PolicyError::PortOutOfRange { value: 65536 })
    );
    assert_eq!(
        Policy::port_from_u32(0),
        Err(PolicyError::PortOutOfRange { value: 0 })
    );
}

#[test]
fn prefix_too_long_for_its_family_is_rejected() {
    assert_eq!(
        Cidr::new(ip("10.0.0.0"), 33),
        Err(PolicyError::InvalidCidr {
            addr: ip("10.0.0.0"),
            prefix_len: 33
        })
    );
    assert!(Cidr::new(ip("fd00::"), 129).is_err());
    assert_eq!(
        Cidr::parse("10.0.0.0/33").unwrap_err().field(),
        "ignore_source_cidrs"
    );
    // Hand-built structs are validated too.
    let mut p = enabled(1000);
    p.ignore_source_cidrs = vec![Cidr {
        addr: ip("10.0.0.0"),
        prefix_len: 40,
    }];
    assert!(matches!(
        p.normalized(),
        Err(PolicyError::InvalidCidr { prefix_len: 40, .. })
    ));
}

#[test]
fn unparsable_cidr_text_is_rejected_with_the_text() {
    for bad in [
        "10.0.0.1",
        "10.0.0.0/",
        "10.0.0.0/x",
        "10.0.0/8",
        "/8",
        "10.0.0.0/-1",
        "10.0.0.0/+8",
        "10.0.0.0/0008",
        "host/8",
    ] {
        let e = Cidr::parse(bad).unwrap_err();
        assert_eq!(
            e,
            PolicyError::UnparsableCidr {
                text: bad.to_string()
            },
            "{bad}"
        );
        assert!(e.to_string().contains(bad));
    }
    assert!(Policy::parse_cidrs(["10.0.0.0/8", "nope"]).is_err());
}

#[test]
fn no_protocol_is_rejected() {
    let mut p = enabled(1000);
    p.protocols = Protocols {
        tcp: false,
        udp: false,
    };
    let e = p.normalized().unwrap_err();
    assert_eq!(e, PolicyError::NoProtocol);
    assert_eq!(e.field(), "protocols");
}

#[test]
fn disabled_policy_keeps_its_fields_and_is_still_validated() {
    let mut p = enabled(120_000);
    p.enabled = false;
    p.ignore_destination_ports = vec![22];
    p.wake_on_traffic = true;
    let n = p.clone().normalized().unwrap();
    assert_eq!(n, p);
    p.idle_timeout_ms = 0;
    assert!(p.normalized().is_err());
}

#[test]
fn prefixes_contain_canonicalised_addresses() {
    let v4 = Cidr::parse("192.168.1.77/24").unwrap();
    assert_eq!(v4.addr, ip("192.168.1.0"));
    assert!(v4.contains(ip("192.168.1.200")));
    assert!(v4.contains(ip("::ffff:192.168.1.5")));
    assert!(!v4.contains(ip("192.168.2.1")));
    assert!(!v4.contains(ip("fd00::1")));
    let mapped_space = Cidr::parse("::ffff:0:0/96").unwrap();
    assert_eq!(mapped_space.to_string(), "0.0.0.0/0");
    let compat = Cidr::parse("::/96").unwrap();
    assert!(compat.contains(ip("::1")));
    assert!(
        !compat.contains(ip("10.0.0.1")),
        "::/96 stops short of ::ffff:0:0/96"
    );
    // A prefix that spans the mapped range covers IPv4 clients as well.
    assert!(Cidr::parse("::/64").unwrap().contains(ip("10.0.0.1")));
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    let all6 = Cidr::parse("::/0").unwrap();
    assert!(all6.contains(ip("2001:db8::1")) && all6.contains(ip("8.8.8.8")));
}

#[test]
fn defaults_are_tcp_only_and_disabled() {
    let p = Policy::default();
    assert!(!p.enabled && p.protocols.tcp && !p.protocols.udp && !p.wake_on_traffic);
    assert_eq!(p.min_uptime_ms, 0);
}

#[test]
fn wake_sources_are_normalised_and_their_errors_name_their_field() {
    let mut p = enabled(300_000);
    p.wake_source_cidrs =
        Policy::parse_wake_cidrs(["203.0.113.9/24", "", "10.0.0.0/8", "10.1.2.3/8"]).unwrap();
    let p = p.normalized().unwrap();
    assert_eq!(
        p.wake_source_cidrs,
        vec![
            Cidr::new(ip("10.0.0.0"), 8).unwrap(),
            Cidr::new(ip("203.0.113.0"), 24).unwrap()
        ]
    );
    assert!(p.allows_wake_from(ip("10.200.0.1")));
    assert!(!p.allows_wake_from(ip("198.51.100.1")));
    assert!(enabled(1).allows_wake_from(ip("198.51.100.1")));

    let e = Policy::parse_wake_cidrs(["10.0.0.0"]).unwrap_err();
    assert_eq!(e.field(), "wake_source_cidrs");
    assert_eq!(
        e.to_string(),
        "wake_source_cidrs contains invalid CIDR \"10.0.0.0\""
    );
    let mut p = enabled(1);
    p.wake_source_cidrs = vec![Cidr {
        addr: ip("10.0.0.0"),
        prefix_len: 40,
    }];
    assert_eq!(
        p.normalized(),
        Err(PolicyError::InvalidWakeCidr {
            addr: ip("10.0.0.0"),
            prefix_len: 40
        })
    );
}
