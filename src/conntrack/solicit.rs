//! How long the kernel keeps resolving an address before it gives up, per device:
//! `mcast_solicit` solicitations `retrans_time_ms` apart. Packets held for a guest in
//! Standby (see [`super::neigh`]) wait that long at most; when its restore may take
//! longer, `mcast_solicit` is raised on the device that reaches it, and put back when
//! the controller ends.
//!
//! Each value changed is first recorded in a file of the state directory (its network
//! namespace's inode, family and device in the name, the original value inside), so that
//! a controller that crashed leaves a record the next one finds and restores.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::ConntrackError;
use super::netns;

/// The state directory used when the host names none.
pub const DEFAULT_STATE_DIR: &str = "/run/autostandby";

/// Address family of a neighbour table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// ARP.
    V4,
    /// NDP.
    V6,
}

impl Family {
    fn dir(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

#[derive(Debug)]
struct Changed {
    ifname: String,
    original: u32,
    record: PathBuf,
}

/// The `mcast_solicit` values this controller raised in one network namespace.
#[derive(Debug)]
pub struct SolicitTuning {
    netns: Option<PathBuf>,
    state_dir: PathBuf,
    ns_ino: u64,
    changed: HashMap<(Family, u32), Changed>,
}

impl SolicitTuning {
    /// Tuning for the namespace at `netns` (the caller's for `None`), recording in
    /// `state_dir`. Values left raised by an earlier controller of the same namespace
    /// that did not end cleanly are restored first.
    pub fn open(netns: Option<&Path>, state_dir: &Path) -> Result<Self, ConntrackError> {
        let ns_file = netns.map_or_else(
            || PathBuf::from("/proc/thread-self/ns/net"),
            Path::to_path_buf,
        );
        let ns_ino = std::fs::metadata(&ns_file)
            .map_err(|e| ConntrackError::io("stat network namespace", e))?
            .ino();
        let mut t = Self {
            netns: netns.map(Path::to_path_buf),
            state_dir: state_dir.to_path_buf(),
            ns_ino,
            changed: HashMap::new(),
        };
        t.recover();
        Ok(t)
    }

    fn prefix(&self) -> String {
        format!("neigh-{}-", self.ns_ino)
    }

    /// Restores every value recorded for this namespace in the state directory.
    fn recover(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.state_dir) else {
            return;
        };
        let prefix = self.prefix();
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            // neigh-<ino>-<ipv4|ipv6>-<ifname>
            let Some((fam, ifname)) = rest.split_once('-') else {
                continue;
            };
            let family = match fam {
                "ipv4" => Family::V4,
                "ipv6" => Family::V6,
                _ => continue,
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(original) = text.trim().parse::<u32>() else {
                continue;
            };
            match self.write(family, ifname, original) {
                Ok(()) => tracing::info!(
                    device = ifname,
                    family = fam,
                    mcast_solicit = original,
                    "restored mcast_solicit left raised by an earlier controller"
                ),
                // The device is gone: nothing is left to restore.
                Err(err) => {
                    tracing::info!(device = ifname, error = %err, "stale mcast_solicit record dropped")
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// Makes the device `ifindex` keep resolving for at least `window_ms`, raising its
    /// `mcast_solicit` when needed (never lowering it).
    pub fn ensure(
        &mut self,
        family: Family,
        ifindex: u32,
        window_ms: u64,
    ) -> Result<(), ConntrackError> {
        if window_ms == 0 || self.changed.contains_key(&(family, ifindex)) {
            return Ok(());
        }
        let (ifname, retrans_ms, current) = netns::run_in(self.netns.as_deref(), || {
            let ifname = ifname(ifindex)?;
            let base = format!("/proc/sys/net/{}/neigh/{ifname}", family.dir());
            let retrans = read_u32(&format!("{base}/retrans_time_ms"))?;
            let current = read_u32(&format!("{base}/mcast_solicit"))?;
            Ok((ifname, retrans, current))
        })?;
        let wanted = window_ms
            .div_ceil(u64::from(retrans_ms.max(1)))
            .min(u64::from(u32::MAX)) as u32;
        if current >= wanted {
            return Ok(());
        }
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| ConntrackError::io("create the state directory", e))?;
        let record = self
            .state_dir
            .join(format!("{}{}-{ifname}", self.prefix(), family.dir()));
        std::fs::write(&record, format!("{current}\n"))
            .map_err(|e| ConntrackError::io("record mcast_solicit", e))?;
        if let Err(err) = self.write(family, &ifname, wanted) {
            let _ = std::fs::remove_file(&record);
            return Err(err);
        }
        tracing::info!(
            device = %ifname,
            family = family.dir(),
            from = current,
            to = wanted,
            retrans_time_ms = retrans_ms,
            "raised mcast_solicit so held packets wait out a restore"
        );
        self.changed.insert(
            (family, ifindex),
            Changed {
                ifname,
                original: current,
                record,
            },
        );
        Ok(())
    }

    /// Puts back every value this controller raised.
    pub fn restore_all(&mut self) {
        for ((family, _), c) in std::mem::take(&mut self.changed) {
            match self.write(family, &c.ifname, c.original) {
                Ok(()) => {}
                Err(err) => {
                    tracing::info!(device = %c.ifname, error = %err, "could not restore mcast_solicit")
                }
            }
            let _ = std::fs::remove_file(&c.record);
        }
    }

    fn write(&self, family: Family, ifname: &str, value: u32) -> Result<(), ConntrackError> {
        if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
            return Err(ConntrackError::Invalid(format!("device name {ifname:?}")));
        }
        let path = format!(
            "/proc/sys/net/{}/neigh/{ifname}/mcast_solicit",
            family.dir()
        );
        netns::run_in(self.netns.as_deref(), || {
            std::fs::write(&path, format!("{value}\n"))
                .map_err(|e| ConntrackError::io("write mcast_solicit", e))
        })
    }
}

impl Drop for SolicitTuning {
    fn drop(&mut self) {
        self.restore_all();
    }
}

fn read_u32(path: &str) -> Result<u32, ConntrackError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConntrackError::io("read a neighbour sysctl", e))?
        .trim()
        .parse()
        .map_err(|_| ConntrackError::Malformed("neighbour sysctl is not a number"))
}

/// The name of device `ifindex` in the calling thread's namespace.
fn ifname(ifindex: u32) -> Result<String, ConntrackError> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(ConntrackError::last_os("if_indextoname"));
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}
