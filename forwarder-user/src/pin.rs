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

/// Maps whose contents must survive a restart.
pub const STATE_MAPS: [&str; 4] = [abi::MAP_FLOWS, abi::MAP_FRAGS, abi::MAP_RULE_STATS, abi::MAP_STATS];

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

impl Pins {
    /// Uses `dir` (created if needed) on a bpf filesystem, mounting one
    /// there if it is not (`ip netns exec` gives a fresh /sys without one).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("creating pin directory {}: {e}", dir.display())))?;
        if !is_bpffs(dir) {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| Error::Io(format!("bad path {}", dir.display())))?;
            // SAFETY: plain mount(2) of a bpf filesystem on our directory.
            let rc = unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
            if rc != 0 {
                return Err(Error::Io(format!("{} is not on bpffs and mounting one failed: {}", dir.display(), std::io::Error::last_os_error())));
            }
            log::info!("mounted bpffs on {}", dir.display());
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub fn map(&self, name: &str) -> PathBuf {
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
        for e in std::fs::read_dir(&self.dir).map_err(|e| Error::Io(format!("{}: {e}", self.dir.display())))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let iface = name.strip_prefix("link-xdp-").or_else(|| name.strip_prefix("link-tc-"));
            if let Some(i) = iface.filter(|i| !keep.iter().any(|k| k == i)) {
                std::fs::remove_file(e.path()).map_err(|err| Error::Io(format!("unpinning {}: {err}", e.path().display())))?;
                gone.push(i.to_string());
            }
        }
        Ok(gone)
    }

    /// Removes every pin: links go (their interfaces are detached once no
    /// process holds them) and the state maps are freed.
    pub fn remove_all(&self) -> Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir).map_err(|e| Error::Io(format!("{}: {e}", self.dir.display())))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("link-") || STATE_MAPS.contains(&name.as_str()) {
                std::fs::remove_file(e.path()).map_err(|err| Error::Io(format!("unpinning {}: {err}", e.path().display())))?;
                n += 1;
            }
        }
        Ok(n)
    }
}
