//! Reading a whole BPF hash map, and writing many entries of a map, in a
//! few syscalls (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`, Linux
//! 5.6), which aya 0.14 does not wrap. Walking a map key by key costs two
//! syscalls per entry: for a conntrack table of 100 000 connections, read
//! every second for the stats, that was a core's worth of the daemon's
//! time; a Maglev table of 65 537 slots took as many writes.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};

/// `BPF_MAP_LOOKUP_BATCH` (uapi/linux/bpf.h `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_UPDATE_BATCH`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `bpf(2)` batch command `cmd` with `attr`, whose pointers the
/// callers keep valid for the call.
fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> libc::c_long {
    // SAFETY: `attr` is a `union bpf_attr` batch member of its own size;
    // the buffers it points at are the callers' and outlive the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, core::ptr::from_mut(attr), size_of::<BatchAttr>()) }
}

/// Entries per syscall. Small: a batch call runs to its end (kernels
/// without kernel preemption, like this machine's, do not switch tasks
/// inside a syscall), and 4 096
/// entries per call held the daemon's CPU long enough to add a
/// millisecond to the p99 latency of traffic whose endpoints shared it
/// (`cargo xtask bench`); 256 still saves all but one syscall in 512. A
/// bucket holding more is answered ENOSPC, and the chunk doubles.
const CHUNK: usize = 256;

/// Every (key, value) of the hash map `fd` (plain, not per-CPU). `K` and
/// `V` must be the map's key and value types (sizes checked by the
/// kernel against the map's).
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>, what: &str) -> Result<Vec<(K, V)>> {
    Ok(lookup_from(fd, Walk::Start, usize::MAX, what)?.0)
}

/// Where a walk over a hash map stands: a hash map's batch token is a
/// bucket index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Walk {
    #[default]
    Start,
    /// Resume at this bucket.
    At(u32),
    /// Past the last bucket.
    Done,
}

/// At least `max` entries (or all that are left) of the hash map `fd`
/// from `from` on, whole buckets at a time, and where to go on. Entries
/// added behind the walk while it goes are not seen.
pub fn lookup_from<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    from: Walk,
    max: usize,
    what: &str,
) -> Result<(Vec<(K, V)>, Walk)> {
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    let mut at = from;
    let mut token_out = 0u32;
    while out.len() < max {
        let token_in = match at {
            Walk::Start => None,
            Walk::At(t) => Some(t),
            Walk::Done => break,
        };
        // SAFETY: Pod types are valid for any bit pattern, zero included.
        let mut keys: Vec<K> = vec![unsafe { core::mem::zeroed() }; chunk];
        // SAFETY: as above.
        let mut values: Vec<V> = vec![unsafe { core::mem::zeroed() }; chunk];
        let mut attr = BatchAttr {
            in_batch: token_in.as_ref().map_or(0, |t| core::ptr::from_ref(t) as u64),
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd().cast_unsigned(),
            ..Default::default()
        };
        // (The attribute points at buffers of `count` keys and values and
        // at two u32 tokens, all alive across the call.)
        let rc = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let err = (rc < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                let n = attr.count as usize;
                out.extend(keys.into_iter().zip(values).take(n));
                // ENOENT: past the last bucket.
                at = if err.is_some() { Walk::Done } else { Walk::At(token_out) };
            }
            // A bucket holds more entries than we offered room for.
            Some(libc::ENOSPC) if chunk < 1 << 20 => chunk *= 2,
            _ => {
                return Err(Error::Io(format!(
                    "reading {what} (BPF_MAP_LOOKUP_BATCH): {}",
                    err.expect("error")
                )));
            }
        }
    }
    Ok((out, at))
}

/// Writes `values[i]` at `keys[i]` in map `fd` (`K`, `V` its key and
/// value types), [`CHUNK`] entries per syscall. On an error the entries
/// before the failing chunk are written.
pub fn update<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    what: &str,
) -> Result<()> {
    if keys.len() != values.len() {
        return Err(Error::Io(format!(
            "writing {what}: {} keys for {} values",
            keys.len(),
            values.len()
        )));
    }
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: u32::try_from(k.len()).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd().cast_unsigned(),
            ..Default::default()
        };
        // (The attribute points at `count` keys and values, alive across
        // the call; the kernel only reads them.)
        let rc = bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr);
        if rc < 0 {
            return Err(Error::Io(format!(
                "writing {what} (BPF_MAP_UPDATE_BATCH): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}
