//! The FIB lookup (`bpf_fib_lookup`) and what its answer means for a
//! translated packet.

use aya_ebpf::bindings::bpf_fib_lookup;
use aya_ebpf::helpers::generated::bpf_fib_lookup as fib_lookup_helper;
use forwarder_common::{
    decide::{FibOutcome, fib, fib_outcome, too_big},
    nat::Tuple,
};

use crate::{
    ctx::Packet,
    maps::FWD_TX_PORTS,
    types::{Forward, Parsed, Verdict},
};

const AF_INET: u8 = 2;

/// Result of a FIB lookup, with the fields we use copied out.
pub struct Route {
    ret: u32,
    ifindex: u32,
    pub src: [u8; 4],
    nexthop: [u8; 4],
    smac: [u8; 6],
    dmac: [u8; 6],
    /// The egress MTU, when the result is "fragmentation needed".
    mtu: u16,
}

impl Route {
    /// The FIB said the packet does not fit the egress link.
    #[inline(always)]
    pub const fn too_big(&self) -> bool {
        self.ret == fib::FRAG_NEEDED
    }
}

#[inline(always)]
pub fn route<P: Packet>(p: &P, parsed: &Parsed, t: &Tuple, flags: u32) -> Route {
    // SAFETY: bpf_fib_lookup is plain old data; zero is a valid value.
    let mut f: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    f.family = AF_INET;
    f.l4_protocol = parsed.proto;
    f.sport = u16::from_ne_bytes(t.sport);
    f.dport = u16::from_ne_bytes(t.dport);
    // XDP: let the kernel check the egress MTU against the frame. TC:
    // tot_len 0 makes the kernel check the skb itself (a GRO'd skb passes,
    // it is segmented on egress; a plain oversize one does not).
    f.__bindgen_anon_1.tot_len = if P::IS_XDP { parsed.l3_len } else { 0 };
    f.ifindex = p.ingress_ifindex();
    f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(t.saddr);
    f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(t.daddr);
    // SAFETY: valid context and a stack struct of the size passed.
    let ret = unsafe {
        fib_lookup_helper(p.raw(), &raw mut f, core::mem::size_of::<bpf_fib_lookup>() as i32, flags)
    };
    // SAFETY: union fields written by the kernel for IPv4.
    unsafe {
        Route {
            ret: ret as u32,
            ifindex: f.ifindex,
            src: f.__bindgen_anon_3.ipv4_src.to_ne_bytes(),
            nexthop: f.__bindgen_anon_4.ipv4_dst.to_ne_bytes(),
            smac: f.smac,
            dmac: f.dmac,
            mtu: f.__bindgen_anon_1.mtu_result,
        }
    }
}

/// Maps a FIB result to a verdict ([`fib_outcome`] says what it means
/// in this hook); `Ok` means "send it".
#[inline(always)]
pub fn fib_verdict<P: Packet>(r: &Route, new: Tuple) -> Result<Forward, Verdict> {
    match fib_outcome(r.ret, P::IS_XDP) {
        FibOutcome::Send => {
            if P::IS_XDP && FWD_TX_PORTS.get(r.ifindex).is_none() {
                // Egress is not one of ours: TC can redirect anywhere.
                return Err(Verdict::ToTc);
            }
            Ok(Forward {
                new,
                ifindex: r.ifindex,
                smac: r.smac,
                dmac: r.dmac,
                resolve: false,
                nexthop: [0; 4],
                mtu: r.mtu,
                vlan: 0,
            })
        }
        FibOutcome::Resolve => Ok(Forward {
            new,
            ifindex: r.ifindex,
            smac: [0; 6],
            dmac: [0; 6],
            resolve: true,
            nexthop: r.nexthop,
            mtu: 0,
            vlan: 0,
        }),
        FibOutcome::ToTc => Err(Verdict::ToTc),
        FibOutcome::TooBig => Err(Verdict::Drop(too_big(r.mtu))),
        FibOutcome::Drop(s) => Err(Verdict::Drop(s)),
        FibOutcome::Pass(s) => Err(Verdict::Pass(s)),
    }
}
