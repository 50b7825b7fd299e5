//! One packet API over `XdpContext` and `TcContext`, so the pipeline is
//! written once and verified twice.

use core::{ffi::c_void, mem};

use aya_ebpf::{
    EbpfContext,
    programs::{TcContext, XdpContext},
};

/// `EbpfContext` too, so aya-log can report from the pipeline.
pub trait Packet: EbpfContext {
    /// True for XDP: no neighbour resolution, checksums fixed by hand.
    const IS_XDP: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// The whole packet's length (for TC, including non-linear parts).
    fn len(&self) -> u32;
    /// The 802.1Q TCI the packet came with (TC: the kernel has already
    /// taken the tag off into the skb); 0 = untagged. XDP hands tagged
    /// frames to TC, so it always says 0.
    fn vlan(&self) -> u16;
    /// The context pointer helpers such as `bpf_fib_lookup` take.
    fn raw(&self) -> *mut c_void;
}

impl Packet for XdpContext {
    const IS_XDP: bool = true;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn vlan(&self) -> u16 {
        0
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.cast()
    }
}

impl Packet for TcContext {
    const IS_XDP: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    #[expect(
        clippy::misnamed_getters,
        reason = "on TC ingress, the skb's ifindex is where it arrived"
    )]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's lifetime.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn vlan(&self) -> u16 {
        // SAFETY: the context pointer is valid for the program's lifetime.
        unsafe {
            let skb = &*self.skb.skb;
            // A priority tag alone (VID 0) counts as untagged.
            if skb.vlan_present != 0 && skb.vlan_tci & 0x0fff != 0 {
                skb.vlan_tci as u16
            } else {
                0
            }
        }
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb.cast()
    }
}

/// A pointer to a `T` at `offset` into the packet, or `None` when it does not
/// fit: the bounds check the verifier needs.
#[inline(always)]
pub fn ptr_at<T, P: Packet>(p: &P, offset: usize) -> Option<*mut T> {
    let start = p.data();
    let end = p.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}
