//! Reading a whole BPF hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`,
//! Linux 5.6), which aya 0.14 does not wrap. Walking a map key by key
//! costs two syscalls per entry: for a conntrack table of 100 000
//! connections, read every second for the stats, that was a core's worth
//! of the daemon's time.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};

/// `BPF_MAP_LOOKUP_BATCH` (uapi/linux/bpf.h `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    // A hash map's batch token is a bucket index (u32).
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        // SAFETY: Pod types are valid for any bit pattern, zero included.
        let mut keys: Vec<K> = vec![unsafe { core::mem::zeroed() }; chunk];
        // SAFETY: as above.
        let mut values: Vec<V> = vec![unsafe { core::mem::zeroed() }; chunk];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd().cast_unsigned(),
            ..Default::default()
        };
        // SAFETY: the attribute points at buffers of `count` keys and
        // values and at two u32 tokens, all alive across the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, core::mem::size_of::<BatchAttr>()) };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                let n = attr.count as usize;
                out.extend(keys.into_iter().zip(values).take(n));
                if err.is_some() {
                    return Ok(out); // ENOENT: past the last bucket
                }
                token_in = token_out;
                first = false;
            }
            // A bucket holds more entries than we offered room for.
            Some(libc::ENOSPC) if chunk < 1 << 20 => chunk *= 2,
            _ => return Err(Error::Io(format!("reading {what} (BPF_MAP_LOOKUP_BATCH): {}", err.expect("error")))),
        }
    }
}
