//! Helpers shared by the C ABI tests: building C structs and reading errors.
#![allow(dead_code)]

use std::ffi::CStr;
use std::mem::size_of;
use std::net::IpAddr;
use std::ptr;

use autostandby::ffi::*;

/// A fresh error struct with a sentinel code.
pub fn err() -> autostandby_error {
    autostandby_error {
        code: u32::MAX,
        message: [0; AUTOSTANDBY_ERROR_MESSAGE_LEN],
    }
}

/// The message of an error struct.
pub fn msg(e: &autostandby_error) -> String {
    // SAFETY: the library always NUL-terminates the message.
    unsafe { CStr::from_ptr(e.message.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A C address.
pub fn ip(text: &str) -> autostandby_ip {
    autostandby_ip::from_ip(text.parse::<IpAddr>().unwrap())
}

/// A manual-mode configuration with the clock at `start_ms`.
pub fn manual_config(start_ms: u64) -> autostandby_config {
    autostandby_config {
        struct_size: size_of::<autostandby_config>() as u32,
        mode: AUTOSTANDBY_MODE_MANUAL,
        netns_path: ptr::null(),
        rcvbuf_bytes: 0,
        max_concurrent_standbys: 0,
        resync_interval_ms: 0,
        events_sysctl: AUTOSTANDBY_EVENTS_SYSCTL_REPORT,
        manual_start_ms: start_ms,
        ..Default::default()
    }
}

/// An owned controller handle, freed on drop.
pub struct Handle(pub *mut autostandby_controller);

// SAFETY: the C ABI documents every call but `free` as thread-safe.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    /// A manual-mode controller.
    pub fn manual(start_ms: u64) -> Self {
        Self::new(&manual_config(start_ms))
    }

    /// A controller with this configuration, which must be accepted.
    pub fn new(cfg: &autostandby_config) -> Self {
        let mut out = ptr::null_mut();
        let mut e = err();
        // SAFETY: valid pointers.
        let rc = unsafe { autostandby_controller_new(cfg, &mut out, &mut e) };
        assert_eq!(rc, AUTOSTANDBY_OK, "controller_new: {}", msg(&e));
        assert!(!out.is_null());
        Self(out)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by controller_new, freed once.
        unsafe { autostandby_controller_free(self.0) };
    }
}

/// A policy with no arrays.
pub fn policy(idle_timeout_ms: u64) -> autostandby_policy {
    autostandby_policy {
        struct_size: size_of::<autostandby_policy>() as u32,
        enabled: true,
        idle_timeout_ms,
        ignore_source_cidrs: ptr::null(),
        ignore_source_cidrs_len: 0,
        ignore_destination_ports: ptr::null(),
        ignore_destination_ports_len: 0,
        tcp: true,
        udp: false,
        wake_on_traffic: false,
        min_uptime_ms: 0,
        wake_source_cidrs: ptr::null(),
        wake_source_cidrs_len: 0,
    }
}

/// A running instance with the given addresses and policy (borrowed).
pub fn instance(
    addrs: &[autostandby_ip],
    policy: *const autostandby_policy,
) -> autostandby_instance {
    autostandby_instance {
        struct_size: size_of::<autostandby_instance>() as u32,
        addresses: addrs.as_ptr(),
        addresses_len: addrs.len(),
        policy,
        lifecycle: AUTOSTANDBY_LIFECYCLE_RUNNING,
        network_enabled: true,
        has_vgpu: false,
        runtime: autostandby_runtime::default(),
    }
}

/// A TCP flow event from `client:cport` to `guest:gport`.
pub fn tcp_event(
    kind: u32,
    client: &str,
    cport: u16,
    guest: &str,
    gport: u16,
    id: u32,
    state: Option<u8>,
) -> autostandby_flow_event {
    autostandby_flow_event {
        kind,
        protocol: 6,
        orig_src: ip(client),
        orig_dst: ip(guest),
        orig_src_port: cport,
        orig_dst_port: gport,
        reply_src: ip(guest),
        reply_dst: ip(client),
        reply_src_port: gport,
        reply_dst_port: cport,
        zone: 0,
        id,
        has_tcp_state: state.is_some(),
        tcp_state: state.unwrap_or(0),
    }
}

/// A zeroed status struct with its size set.
pub fn status_out() -> autostandby_status {
    autostandby_status {
        struct_size: size_of::<autostandby_status>() as u32,
        ..Default::default()
    }
}

/// A zeroed stats struct with its size set.
pub fn stats_out() -> autostandby_stats {
    autostandby_stats {
        struct_size: size_of::<autostandby_stats>() as u32,
        ..Default::default()
    }
}

/// Polls without blocking.
pub fn poll(h: &Handle) -> Vec<autostandby_decision> {
    let mut out = [autostandby_decision::default(); 64];
    let mut n = usize::MAX;
    let mut e = err();
    // SAFETY: valid pointers.
    let rc =
        unsafe { autostandby_poll_decisions(h.0, out.as_mut_ptr(), out.len(), &mut n, 0, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_OK, "poll: {}", msg(&e));
    out[..n].to_vec()
}
