//! The direct packet writes XDP and TC share: the IPv4 header (addresses,
//! TTL, header checksum), the ports, and the MACs. The L4 checksum is each
//! hook's own business (by hand in XDP, kernel helpers in TC).

use forwarder_common::{
    csum::ttl_decrement,
    nat::{CsumDelta, Tuple, ip_csum},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    ctx::{Packet, ptr_at},
    pipeline::Forward,
};

/// Writes the new addresses, decrements the TTL and fixes the header
/// checksum.
#[inline(always)]
pub fn ip_header<P: Packet>(p: &P, new: &Tuple, d: &CsumDelta) -> Option<()> {
    let ip: *mut Ipv4Hdr = ptr_at(p, EthHdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &mut *ip };
    let check = ip_csum(u16::from_be_bytes(ip.check), d);
    ip.check = ttl_decrement(check, ip.ttl, ip.proto as u8).to_be_bytes();
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
