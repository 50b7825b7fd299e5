//! What the fixture tests share: frames built from scratch (etherparse),
//! this module's own RFC 1071 checksums, the verdict constants, the
//! gateway lab they run in, and the XDP fixture table ([`table`]).

#![allow(dead_code, reason = "each fixture test uses its part")]

pub mod table;

use std::net::Ipv4Addr;

use crate::harness::TestRunExt;
use etherparse::PacketBuilder;
use forwarder::{
    datapath::Datapath,
    iface,
    settings::{Mode, Rule, Settings},
};
use forwarder_common::{
    abi::{DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN},
    conntrack::{snat_candidate, tuple_hash},
    nat::Tuple,
};
use forwarder_testkit::{ADDRS, GW_INTERNAL_IF, GW_PUBLIC_IF, Lab, Macs};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

pub enum L4<'a> {
    Tcp { sport: u16, dport: u16, seq: u32, flags: &'a str },
    Udp { sport: u16, dport: u16 },
}

pub fn frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    l4: &L4,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(smac, dmac).ipv4(src.octets(), dst.octets(), ttl);
    let mut v = Vec::new();
    match *l4 {
        L4::Tcp { sport, dport, seq, flags } => {
            let mut b = ip.tcp(sport, dport, seq, 64240);
            if flags.contains('S') {
                b = b.syn();
            }
            if flags.contains('A') {
                b = b.ack(7);
            }
            if flags.contains('R') {
                b = b.rst();
            }
            if flags.contains('P') {
                b = b.psh();
            }
            if flags.contains('F') {
                b = b.fin();
            }
            b.write(&mut v, payload).unwrap();
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut v, payload).unwrap(),
    }
    v
}

/// The one's-complement sum of `bytes` (big-endian 16-bit words, an odd
/// last byte padded with zero) on top of `init`, folded to 16 bits: this
/// test's own RFC 1071, written apart from the datapath's `csum` module so
/// that a mistake there cannot hide in the expected values.
pub fn ones_sum(bytes: &[u8], init: u64) -> u16 {
    let mut s = init;
    for w in bytes.chunks(2) {
        s += u64::from(w[0]) << 8 | u64::from(w.get(1).copied().unwrap_or(0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The IPv4 header checksum to write into the header `h` (whose own
/// checksum field is skipped).
pub fn ip_csum(h: &[u8]) -> u16 {
    let mut v = h.to_vec();
    v[10] = 0;
    v[11] = 0;
    !ones_sum(&v, 0)
}

/// Rewrites the IPv4 header checksum of frame `f` (IHL from the header).
pub fn fix_ip_csum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 15) * 4;
    let c = ip_csum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// The pseudo-header's sum (RFC 793/768) of frame `f` for an L4 segment of
/// `len` bytes, unfolded.
pub fn pseudo_sum(f: &[u8], proto: u8, len: usize) -> u64 {
    f[26..34].chunks(2).map(|w| u64::from(w[0]) << 8 | u64::from(w[1])).sum::<u64>()
        + u64::from(proto)
        + len as u64
}

/// Inserts 4 bytes of IP options (NOP NOP NOP EOL): IHL 6.
pub fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut v = f[..34].to_vec();
    v.extend_from_slice(&[1, 1, 1, 0]);
    v.extend_from_slice(&f[34..]);
    v[14] = 0x46;
    let tot = u16::from_be_bytes([v[16], v[17]]) + 4;
    v[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_csum(&mut v);
    v
}

/// Replaces the TCP checksum of an IHL-5 frame with the bare pseudo-header
/// sum, as a `CHECKSUM_PARTIAL` skb from a local sender carries it.
pub fn as_partial(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    let p = ones_sum(&[], pseudo_sum(&v, 6, v.len() - 34));
    v[50..52].copy_from_slice(&p.to_be_bytes());
    v
}

/// The start of a packet as an ICMP error quotes it: IPv4 header (TTL 63)
/// and the first `n` bytes of `l4`.
pub fn quote(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4, n: usize) -> Vec<u8> {
    let f = frame([0; 6], [0; 6], src, dst, 63, l4, &[]);
    f[14..14 + 20 + n].to_vec()
}

/// An ICMP "destination unreachable" frame quoting `q`: code 4
/// (fragmentation needed, MTU 1280) or port unreachable.
pub fn icmp_err(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    code: u8,
    q: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    let t = match code {
        4 => etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
        ),
        _ => etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
    };
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4(t)
        .write(&mut v, q)
        .unwrap();
    v
}

pub fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Whether this kernel lets XDP use its metadata area, which decides how
/// XDP hands packets to TC.
pub fn xdp_meta() -> bool {
    static META: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *META.get_or_init(forwarder::datapath::xdp_meta_supported)
}

/// What XDP does with a packet it leaves to TC: passes it untouched, with
/// the handoff word (0xf04d7c01, host order) in the metadata area, which
/// `BPF_PROG_TEST_RUN` returns in front of the frame; without metadata,
/// only untouched.
pub fn handed(f: &[u8]) -> Vec<u8> {
    let mut v = if xdp_meta() { 0xf04d_7c01_u32.to_ne_bytes().to_vec() } else { Vec::new() };
    v.extend_from_slice(f);
    v
}

/// Checks a row through the TC program.
#[track_caller]
pub fn check_tc(
    dp: &Datapath,
    name: &str,
    input: &[u8],
    ifindex: u32,
    want_verdict: u32,
    want: &[u8],
) {
    let (verdict, out) = dp.test_run_tc(input, ifindex).unwrap();
    assert_eq!(
        verdict,
        want_verdict,
        "{name} (TC): verdict; counters: {:?}",
        dp.snapshot(&[]).map(|s| s.counters)
    );
    assert_eq!(hex(&out), hex(want), "{name} (TC): output frame");
}

#[track_caller]
pub fn check(
    dp: &Datapath,
    name: &str,
    input: &[u8],
    ifindex: u32,
    want_verdict: u32,
    want: &[u8],
) {
    let (verdict, out, _) = dp.test_run_xdp(input, ifindex, 1).unwrap();
    assert_eq!(verdict, want_verdict, "{name}: verdict");
    assert_eq!(hex(&out), hex(want), "{name}: output frame");
}

/// The rules every fixture runs with.
pub const RULES: [&str; 4] = [
    "tcp:8080=192.168.1.50:80",
    "udp:5353=192.168.1.50:53",
    "udp:7000=192.168.1.50:7002",
    "udp:7000@pub0=192.168.1.50:7001",
];

/// A lab whose gateway has permanent neighbours and forwarding on, and a
/// datapath loaded (not attached) with [`RULES`] and room for `conns`
/// connections, its interfaces flagged for TC mode (the TC program then
/// takes every packet in its own test runs; the XDP program does not look
/// at them); runs `f` on a thread inside the gateway namespace with
/// (datapath, MACs, pub0, int0, netns).
pub fn in_gateway(
    conns: u32,
    f: impl FnOnce(&mut Datapath, &Macs, u32, u32, &str) + Send + 'static,
) {
    let lab = Lab::new().unwrap();
    let m = lab.prime_gateway().unwrap();
    let gw_ns = lab.gateway.name.clone();
    lab.gateway
        .enter(move || {
            let (mut dp, _) = load(conns, Mode::Tc);
            let (pub_if, int_if) =
                (iface::index(GW_PUBLIC_IF).unwrap(), iface::index(GW_INTERNAL_IF).unwrap());
            f(&mut dp, &m, pub_if, int_if, &gw_ns);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A datapath loaded (in the calling thread's namespace) and configured
/// with [`RULES`], its interfaces in `mode`.
/// The fixtures' settings: [`RULES`] with handles 1, 2, … in that order.
pub fn fixture_settings(mode: Mode) -> Settings {
    let mut settings = Settings {
        public: vec![GW_PUBLIC_IF.into()],
        internal: vec![GW_INTERNAL_IF.into()],
        rules: RULES.iter().map(|r| Rule::parse_spec(r).unwrap()).collect(),
        mode,
        ..Default::default()
    };
    settings.assign_handles(None).unwrap();
    settings
}

pub fn load(conns: u32, mode: Mode) -> (Datapath, forwarder::plan::Compiled) {
    let compiled = fixture_settings(mode).compile(&forwarder::plan::System).unwrap();
    let mut dp = Datapath::load(conns).unwrap();
    dp.configure(&compiled).unwrap();
    (dp, compiled)
}

pub fn snat_port(client: Ipv4Addr, cport: u16, dport: u16) -> u16 {
    let t = Tuple {
        saddr: client.octets(),
        daddr: ADDRS.gw_public.octets(),
        sport: cport.to_be_bytes(),
        dport: dport.to_be_bytes(),
    };
    snat_candidate(tuple_hash(&t), 0, DEFAULT_SNAT_PORT_MIN, DEFAULT_SNAT_PORT_MAX)
}
