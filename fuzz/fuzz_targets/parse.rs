//! The zero-copy ctnetlink parser on arbitrary datagrams: never panics, never reads out
//! of bounds, and its two views of a message agree.
#![no_main]

use autostandby::conntrack::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for m in parse::messages(data) {
        let Ok(m) = m else { break };
        let _ = m.error_code();
        let subtype = m.conntrack_subtype();
        let kind = m.event_kind();
        let ct = parse::parse_conntrack(&m);
        if ct.is_ok() {
            assert!(subtype.is_some(), "a conntrack message without a subtype");
        }
        for a in parse::attrs(m.bytes) {
            if a.is_err() {
                break;
            }
        }
        match parse::parse_event(&m) {
            Ok(Some(ev)) => {
                assert_eq!(Some(ev.kind), kind);
                assert_eq!(
                    ev.flow,
                    ct.expect("an event parses as a conntrack message").flow
                );
            }
            Ok(None) => assert!(kind.is_none()),
            Err(_) => assert!(kind.is_some() && ct.is_err()),
        }
    }
});
