//! Pinning for hitless restarts: the state maps (conntrack, fragments,
//! counters) and the XDP/TC links live in bpffs under one directory, so a
//! daemon that stops with `--persist`, or is killed, leaves forwarding
//! running, and the next `forwarder run` with the same `--pin-dir` adopts
//! the maps and atomically swaps its programs into the pinned links
//! (`bpf_link_update`): no packet meets a detached interface.
//!
//! Configuration maps are not pinned: a new daemon fills fresh ones and
//! its programs take them at the swap, so a new rule set goes live at once.

use std::path::{Path, PathBuf};

use forwarder_common::abi;

use crate::error::{Error, Result};

/// Maps whose contents must survive a restart, with the version of their
/// layout: pinned as `NAME_vN` (bpffs refuses dots in names). Bump a version when the map's key, value
/// or meaning of its entries changes; a daemon then never adopts a map of
/// another layout (it retires it, see [`Pins::retire_stale`]), while maps
/// whose layout did not change carry over an upgrade.
pub const STATE_MAPS: [(&str, u32); 8] = [
    // v4: 48-byte entries, times in ticks of the flow clock (v3: 56
    // bytes, times in ns).
    (abi::MAP_FLOWS, 4),
    (abi::MAP_FRAGS, 1),
    // v2: 10 240 rules (v1 held 4096).
    (abi::MAP_RULE_STATS, 2),
    // v6: 34 counters (`stats::COUNT`).
    (abi::MAP_STATS, 6),
    // The early-drop candidates (keys into the adopted table), v2: a ring
    // per CPU; and where each ring stands.
    (abi::MAP_CT_CANDIDATES, 2),
    (abi::MAP_CT_CANDIDATE_POS, 1),
    // Each backend's counters, and the slot each backend counts in.
    (abi::MAP_BACKEND_STATS, 1),
    (abi::MAP_BACKEND_SLOTS, 1),
];

/// The programs' tail-call tables, pinned beside the links: the kernel
/// empties a program array when its last reference from user space goes,
/// so without a pin a killed or persisted daemon's programs would lose
/// their tail calls (and with them the setup of new connections). Each
/// daemon pins its own, replacing the pin of the one before.
pub const TAIL_MAPS: [&str; 2] = [abi::MAP_XDP_TAILS, abi::MAP_TC_TAILS];

/// The pin file name of state map `name` at `version`.
fn versioned(name: &str, version: u32) -> String {
    format!("{name}_v{version}")
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Clone)]
pub struct Pins {
    pub dir: PathBuf,
}

/// Whether `dir` is on a bpf filesystem.
fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs fills the struct we pass.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type == BPF_FS_MAGIC
    }
}

/// Whether this process runs in another mount namespace than PID 1.
fn private_mount_namespace() -> bool {
    match (std::fs::read_link("/proc/self/ns/mnt"), std::fs::read_link("/proc/1/ns/mnt")) {
        (Ok(a), Ok(b)) => a != b,
        _ => false,
    }
}

impl Pins {
    /// Uses `dir` (created if needed) on a bpf filesystem, mounting one
    /// there if it is not (`ip netns exec` gives a fresh /sys without one).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("creating pin directory {}: {e}", dir.display())))?;
        if !is_bpffs(dir) {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Io(format!("bad path {}", dir.display())))?;
            // SAFETY: plain mount(2) of a bpf filesystem on our directory.
            let rc = unsafe {
                libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null())
            };
            if rc != 0 {
                return Err(Error::Io(format!(
                    "{} is not on bpffs and mounting one failed: {}",
                    dir.display(),
                    std::io::Error::last_os_error()
                )));
            }
            log::info!("mounted bpffs on {}", dir.display());
            if private_mount_namespace() {
                log::warn!(
                    "{} was mounted in this process's own mount namespace (e.g. `ip netns exec`): it and the pins vanish when the daemon dies, so a killed daemon's datapath is detached; for restarts without loss, mount bpffs there first from the host (mount -t bpf bpf {0})",
                    dir.display()
                );
            }
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The pin of state map `name` (in its current layout version).
    pub fn map(&self, name: &str) -> PathBuf {
        let version = STATE_MAPS.iter().find(|(n, _)| *n == name).map_or(1, |(_, v)| *v);
        self.dir.join(versioned(name, version))
    }

    /// Unpins state maps an earlier daemon of another layout version left
    /// (`NAME` without a version, or `NAME_vN` with another N), so they
    /// are not adopted: this daemon starts that map fresh. Returns the
    /// retired pin names.
    pub fn retire_stale(&self) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(|e| Error::Io(format!("{}: {e}", self.dir.display())))?
            .flatten()
        {
            let file = e.file_name().to_string_lossy().into_owned();
            let stale = STATE_MAPS.iter().any(|(name, version)| {
                let other_version = file
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix("_v"))
                    .is_some_and(|v| v != version.to_string());
                file == *name || other_version
            });
            if stale {
                std::fs::remove_file(e.path())
                    .map_err(|err| Error::Io(format!("unpinning {}: {err}", e.path().display())))?;
                gone.push(file);
            }
        }
        Ok(gone)
    }

    /// The pin of tail-call table `name` ([`TAIL_MAPS`]).
    pub fn tails(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `kind` is "xdp" or "tc".
    pub fn link(&self, kind: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("link-{kind}-{ifname}"))
    }

    /// Whether an earlier daemon left state here.
    pub fn has_state(&self) -> bool {
        self.map(abi::MAP_FLOWS).exists()
    }

    /// Unpins (detaches) the links of interfaces not in `keep`.
    pub fn prune_links(&self, keep: &[String]) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(|e| Error::Io(format!("{}: {e}", self.dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let iface = name.strip_prefix("link-xdp-").or_else(|| name.strip_prefix("link-tc-"));
            if let Some(i) = iface.filter(|i| !keep.iter().any(|k| k == i)) {
                std::fs::remove_file(e.path())
                    .map_err(|err| Error::Io(format!("unpinning {}: {err}", e.path().display())))?;
                gone.push(i.to_string());
            }
        }
        Ok(gone)
    }

    /// Removes every pin: links are detached from their interfaces first
    /// (at once, whoever still holds them) and the state maps are freed.
    pub fn remove_all(&self) -> Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir)
            .map_err(|e| Error::Io(format!("{}: {e}", self.dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("link-")
                || TAIL_MAPS.contains(&name.as_str())
                || STATE_MAPS.iter().any(|(m, _)| name == *m || name.starts_with(&format!("{m}_v")))
            {
                if name.starts_with("link-") {
                    detach_link(&e.path())?;
                }
                std::fs::remove_file(e.path())
                    .map_err(|err| Error::Io(format!("unpinning {}: {err}", e.path().display())))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// `BPF_OBJ_GET` and `BPF_LINK_DETACH` (uapi/linux/bpf.h `enum bpf_cmd`).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the link pinned at `path` from its hook now (Linux 5.9). Only
/// unpinning would leave that to the kernel's deferred release of the
/// link's last reference, after `teardown` has returned, and to whichever
/// process still holds a descriptor of it: the datapath would go on
/// forwarding for a while, or for good. A link whose kind cannot be
/// detached (`EOPNOTSUPP`) goes when its pin does.
fn detach_link(path: &Path) -> Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;

    let at = |what: &str, e: std::io::Error| Error::Io(format!("{what} {}: {e}", path.display()));
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| at("pin path", e.into()))?;
    // The `obj` member of `union bpf_attr`: pathname, bpf_fd, file_flags.
    let mut obj = [0u64; 2];
    obj[0] = name.as_ptr() as u64;
    // SAFETY: the attribute points at a NUL-terminated path alive across
    // the call; the kernel reads 16 bytes.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, obj.as_mut_ptr(), core::mem::size_of_val(&obj))
    };
    if fd < 0 {
        return Err(at("opening", std::io::Error::last_os_error()));
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let fd = unsafe {
        OwnedFd::from_raw_fd(
            i32::try_from(fd)
                .map_err(|_| at("opening", std::io::Error::from_raw_os_error(libc::EBADF)))?,
        )
    };
    // The `link_detach` member: link_fd.
    let mut detach = [0u32; 2];
    detach[0] = std::os::fd::AsRawFd::as_raw_fd(&fd).cast_unsigned();
    // SAFETY: a plain attribute of two u32, alive across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            detach.as_mut_ptr(),
            core::mem::size_of_val(&detach),
        )
    };
    let err = (rc < 0).then(std::io::Error::last_os_error);
    match err.as_ref().and_then(std::io::Error::raw_os_error) {
        None | Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(at("detaching", err.expect("error"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_layouts_are_retired_and_current_ones_kept() {
        let dir = std::env::temp_dir().join(format!("forwarder-pin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pins = Pins { dir: dir.clone() };
        let flows = pins.map(abi::MAP_FLOWS);
        let stats = pins.map(abi::MAP_STATS);
        assert_eq!(stats.file_name().unwrap(), "FWD_STATS_v6");
        for f in [
            "FWD_STATS",
            "FWD_STATS_v1",
            "FWD_FLOWS_v4",
            "FWD_FLOWS_v3",
            "FWD_STATS_v3",
            "FWD_STATS_v4",
            "FWD_STATS_v5",
            "FWD_STATS_v6",
            "FWD_FLOWS_v2",
            "link-xdp-pub0",
            "FWD_FLOWS_OTHER",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let mut gone = pins.retire_stale().unwrap();
        gone.sort();
        assert_eq!(
            gone,
            [
                "FWD_FLOWS_v2",
                "FWD_FLOWS_v3",
                "FWD_STATS",
                "FWD_STATS_v1",
                "FWD_STATS_v3",
                "FWD_STATS_v4",
                "FWD_STATS_v5"
            ]
        );
        assert!(
            flows.exists()
                && stats.exists()
                && dir.join("link-xdp-pub0").exists()
                && dir.join("FWD_FLOWS_OTHER").exists()
        );
        assert!(pins.has_state());
        // Teardown takes every version, nothing else (links, which it
        // detaches first, need a real bpffs: the e2e hitless test).
        std::fs::remove_file(dir.join("link-xdp-pub0")).unwrap();
        std::fs::write(dir.join("FWD_FRAGS_v7"), "").unwrap();
        std::fs::write(dir.join("FWD_TC_TAILS"), "").unwrap();
        assert_eq!(pins.remove_all().unwrap(), 4);
        assert!(dir.join("FWD_FLOWS_OTHER").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
