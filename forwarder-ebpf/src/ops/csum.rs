//! The checksum work that needs packet access: summing the L4 segment for a
//! full recomputation (partial-checksum packets in XDP), in fixed-size
//! chunks through `bpf_csum_diff` so the verifier sees constant sizes and a
//! bounded number of calls.

use aya_ebpf::helpers::generated::bpf_csum_diff;
use forwarder_common::csum::fold;

use crate::ctx::{Packet, ptr_at};

/// Largest L4 segment summed in XDP (jumbo frames included).
const MAX_CHUNKS: usize = 36;
/// Largest L4 segment [`sum`] handles (9216 bytes).
pub const MAX_SUM_LEN: usize = MAX_CHUNKS * 256;

/// `bpf_csum_diff` over `N` packet bytes at `off`, as a big-endian-word sum.
#[inline(always)]
fn chunk<const N: usize, P: Packet>(p: &P, off: usize) -> Option<u32> {
    let ptr: *mut [u8; N] = ptr_at(p, off)?;
    // SAFETY: N bytes at ptr are inside the packet (checked above).
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr.cast(), N as u32, 0) };
    if s < 0 {
        return None;
    }
    // The helper sums host-order (little-endian) words: fold, then swap.
    Some(u32::from(fold(s as u32).swap_bytes()))
}

/// The unfolded one's-complement sum (big-endian words) of `len` bytes at
/// `off`. `None` when the segment is larger than we sum or out of bounds.
#[inline(always)]
pub fn sum<P: Packet>(p: &P, off: usize, len: usize) -> Option<u32> {
    if len > MAX_SUM_LEN {
        return None;
    }
    let mut acc: u32 = 0;
    let mut done = 0usize;
    for _ in 0..MAX_CHUNKS {
        if done + 256 > len {
            break;
        }
        acc += chunk::<256, P>(p, off + done)?;
        done += 256;
    }
    macro_rules! step {
        ($n:literal) => {
            if len - done >= $n {
                acc += chunk::<$n, P>(p, off + done)?;
                done += $n;
            }
        };
    }
    step!(128);
    step!(64);
    step!(32);
    step!(16);
    step!(8);
    step!(4);
    if len - done >= 2 {
        let w: *const [u8; 2] = ptr_at(p, off + done)?;
        // SAFETY: bounds checked by ptr_at.
        acc += u32::from(u16::from_be_bytes(unsafe { *w }));
        done += 2;
    }
    if len - done == 1 {
        let b: *const u8 = ptr_at(p, off + done)?;
        // SAFETY: bounds checked by ptr_at.
        acc += u32::from(unsafe { *b }) << 8;
    }
    Some(acc)
}
