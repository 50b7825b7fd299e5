//! The direct packet writes XDP and TC share: the IPv4 header (addresses,
//! TTL, header checksum), the ports, and the MACs. The L4 checksum is each
//! hook's own business (by hand in XDP, kernel helpers in TC).

use forwarder_common::{
    csum::ttl_decrement,
    icmp::quote_rewrite,
    nat::{CsumDelta, Tuple, delta, ip_csum},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    ctx::{Packet, ptr_at},
    types::{Forward, Parsed, Quote},
};

/// Writes the new addresses, decrements the TTL and fixes the header
/// checksum.
#[inline(always)]
pub fn ip_header<P: Packet>(p: &P, new: &Tuple, d: &CsumDelta) -> Option<()> {
    let ip: *mut Ipv4Hdr = ptr_at(p, EthHdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &mut *ip };
    let check = ip_csum(u16::from_be_bytes(ip.check), d);
    ip.check = ttl_decrement(check, ip.ttl, ip.proto).to_be_bytes();
    ip.ttl -= 1;
    ip.src_addr = new.saddr;
    ip.dst_addr = new.daddr;
    Some(())
}

/// [`ip_header`], then the new ports at `l4_off`.
#[inline(always)]
pub fn ip_and_ports<P: Packet>(p: &P, new: &Tuple, d: &CsumDelta, l4_off: usize) -> Option<()> {
    ip_header(p, new, d)?;
    let ports: *mut [u8; 4] = ptr_at(p, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *ports = [new.sport[0], new.sport[1], new.dport[0], new.dport[1]] };
    Some(())
}

/// Sets the MACs the FIB lookup returned.
#[inline(always)]
pub fn macs<P: Packet>(p: &P, fwd: &Forward) -> Option<()> {
    let eth: *mut EthHdr = ptr_at(p, 0)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = fwd.dmac;
        (*eth).src_addr = fwd.smac;
    }
    Some(())
}

/// Offset of the L4 checksum field.
#[inline(always)]
pub const fn l4_csum_off(l4_off: usize, proto: u8) -> usize {
    l4_off + if proto == forwarder_common::abi::PROTO_UDP { 6 } else { 16 }
}

/// Rewrites the outer header and the quote (direct writes only: ICMP
/// checksums are never partial, so XDP and TC share this).
#[inline(always)]
pub fn icmp_error<P: Packet>(p: &P, parsed: &Parsed, outer_new: &Tuple, q: &Quote) -> Option<()> {
    let d = delta(&parsed.tuple, outer_new);
    ip_header(p, outer_new, &d)?;
    let icmp_c: *mut [u8; 2] = ptr_at(p, parsed.l4() + 2)?;
    let ip: *mut [u8; 20] = ptr_at(p, q.ip_off)?;
    let ports: *mut [u8; 4] = ptr_at(p, q.l4_off)?;
    let l4c_ptr: Option<*mut [u8; 2]> = ptr_at(p, l4_csum_off(q.l4_off, q.proto));
    // SAFETY: every pointer was bounds-checked by ptr_at.
    unsafe {
        let ip = &mut *ip;
        let l4c = l4c_ptr.map_or(0, |c| u16::from_be_bytes(*c));
        let c = quote_rewrite(
            u16::from_be_bytes(*icmp_c),
            u16::from_be_bytes([ip[10], ip[11]]),
            l4c,
            l4c_ptr.is_some(),
            q.proto,
            &q.old,
            &q.new,
        );
        ip[10..12].copy_from_slice(&c.ip.to_be_bytes());
        ip[12..16].copy_from_slice(&q.new.saddr);
        ip[16..20].copy_from_slice(&q.new.daddr);
        *ports = [q.new.sport[0], q.new.sport[1], q.new.dport[0], q.new.dport[1]];
        if let Some(l) = l4c_ptr {
            *l = c.l4.to_be_bytes();
        }
        *icmp_c = c.icmp.to_be_bytes();
    }
    Some(())
}
