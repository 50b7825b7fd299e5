//! The benchmarks' object's ABI (`forwarder-ebpf/src/bin/bench.rs`):
//! program and map names, the generator's frame, the receiver's expected
//! source, how the generator spreads frames over flows.

/// Micro-benchmark reference programs (never attached): an empty XDP
/// program and a bare FIB-lookup + redirect one.
pub const PROG_BENCH_PASS: &str = "bench_xdp_pass";
pub const PROG_BENCH_FIB: &str = "bench_xdp_fib";
/// Netfilter comparison: the generator (writes the 64-byte frame of
/// [`MAP_BENCH_FRAME`], `XDP_TX`; run in live-frames mode) and the receiver
/// (counts UDP and TCP to port 5300 in [`MAP_BENCH_SINK`], drops them).
pub const PROG_BENCH_TX: &str = "bench_xdp_tx";
/// The generator for the skb path: the same frames, `XDP_PASS` (the
/// stack of the test run's interface takes them as received skbs).
pub const PROG_BENCH_GEN_PASS: &str = "bench_xdp_gen_pass";
/// Its second half, a TC ingress program at the client: frames to another
/// host's MAC go back out of the interface.
pub const PROG_BENCH_TC_BOUNCE: &str = "bench_tc_bounce";
/// The generator where the kernel refuses live frames: a TC program test
/// run on a 64-byte skb, which writes the same frames and sends each as a
/// clone out of the test run's interface (`bpf_clone_redirect`).
pub const PROG_BENCH_TC_GEN: &str = "bench_tc_gen";
/// Array of one [`BenchFrame`].
pub const MAP_BENCH_FRAME: &str = "BENCH_FRAME";
pub const PROG_BENCH_SINK: &str = "bench_xdp_sink";
/// The receiver's counts: index [`BENCH_SINK_FROM_SOURCE`], packets from
/// the source in [`MAP_BENCH_SINK_SOURCE`]; [`BENCH_SINK_FROM_OTHERS`],
/// from any other.
pub const MAP_BENCH_SINK: &str = "BENCH_SINK";
pub const BENCH_SINK_FROM_SOURCE: u32 = 0;
pub const BENCH_SINK_FROM_OTHERS: u32 = 1;
/// The source the receiver expects ([`BenchSource`], index 0).
pub const MAP_BENCH_SINK_SOURCE: &str = "BENCH_SINK_SOURCE";
/// The benchmark object's devmap: where [`PROG_BENCH_FIB`] may redirect.
pub const MAP_BENCH_TX_PORTS: &str = "BENCH_TX_PORTS";
/// What the netfilter comparison's generator sends ([`MAP_BENCH_FRAME`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BenchFrame {
    /// Ethernet, IPv4 without options, UDP or TCP; the L4 checksum
    /// complete (UDP: or 0, none).
    pub frame: [u8; 64],
    /// Flows to spread the frames over ([`bench_flow`]); 0 or 1: one flow.
    pub flows: u32,
    /// Frames sent so far (the generator's counter; it runs on one CPU).
    pub seq: u32,
    /// Paced sending: a frame every `gap_ns` on average (monotonic
    /// clock), in bursts of [`BENCH_PACE_BURST`]; the runs in between
    /// send nothing. 0: every run of the program sends a frame.
    pub gap_ns: u64,
    /// When the next burst is due (0: at once).
    pub next_ns: u64,
    /// Paced frames still to send (then the runs send nothing).
    pub left: u32,
    /// Frames of the current burst still to send.
    pub credit: u32,
}

/// Frames a paced generator sends back to back, as a NIC's interrupt
/// moderation hands a host its frames: a receiver is woken once per
/// burst, not once per frame (a wake-up per frame would cost more than
/// the frame).
pub const BENCH_PACE_BURST: u32 = 16;

/// How far a paced generator catches up when it was held up, in frames:
/// with the burst, far below every queue on the way (a veth's ring holds
/// 256 frames, the backlog 1 000).
pub const BENCH_PACE_CATCH_UP: u64 = 32;

/// The source addresses the netfilter comparison's receiver expects
/// ([`MAP_BENCH_SINK_SOURCE`]): those whose `mask`ed bits are `addr`'s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BenchSource {
    /// Network byte order.
    pub addr: [u8; 4],
    /// Network byte order.
    pub mask: [u8; 4],
}

impl BenchSource {
    /// Whether `saddr` (network byte order) is one of them.
    #[inline(always)]
    #[must_use]
    pub const fn matches(&self, saddr: [u8; 4]) -> bool {
        u32::from_ne_bytes(saddr) & u32::from_ne_bytes(self.mask)
            == u32::from_ne_bytes(self.addr) & u32::from_ne_bytes(self.mask)
    }
}

/// Source ports per source address of a generator's flows.
pub const BENCH_PORTS_PER_ADDR: u32 = 40_000;

/// Where frame `seq` of a generator spreading over `flows` flows comes
/// from, relative to the frame's own source: (port offset, offset of the
/// address's last byte). Flows fill [`BENCH_PORTS_PER_ADDR`] ports of an
/// address before taking the next address.
#[inline(always)]
#[must_use]
pub const fn bench_flow(seq: u32, flows: u32) -> (u16, u8) {
    if flows <= 1 {
        return (0, 0);
    }
    let i = seq % flows;
    ((i % BENCH_PORTS_PER_ADDR) as u16, (i / BENCH_PORTS_PER_ADDR) as u8)
}

const _: () = assert!(core::mem::size_of::<BenchFrame>() == 96);
const _: () = assert!(core::mem::size_of::<BenchSource>() == 8);

#[cfg(test)]
mod tests {
    use super::{BENCH_PORTS_PER_ADDR, BenchSource, bench_flow};

    #[test]
    fn receiver_source_matches_by_prefix() {
        let host = BenchSource { addr: [192, 168, 1, 1], mask: [255; 4] };
        assert!(host.matches([192, 168, 1, 1]));
        assert!(!host.matches([192, 168, 1, 2]) && !host.matches([203, 0, 113, 10]));
        let net = BenchSource { addr: [203, 0, 113, 0], mask: [255, 255, 255, 0] };
        assert!(net.matches([203, 0, 113, 10]) && net.matches([203, 0, 113, 12]));
        assert!(!net.matches([203, 0, 114, 10]) && !net.matches([192, 168, 1, 1]));
        assert!(
            BenchSource { addr: [10, 0, 0, 0], mask: [0; 4] }.matches([1, 2, 3, 4]),
            "prefix 0: any source"
        );
    }

    #[test]
    fn generator_spreads_frames_over_ports_then_addresses() {
        assert_eq!(bench_flow(7, 0), (0, 0));
        assert_eq!(bench_flow(7, 1), (0, 0));
        let ports: Vec<(u16, u8)> = (0..6).map(|n| bench_flow(n, 4)).collect();
        assert_eq!(ports, [(0, 0), (1, 0), (2, 0), (3, 0), (0, 0), (1, 0)]);
        let n = 3 * BENCH_PORTS_PER_ADDR;
        assert_eq!(bench_flow(BENCH_PORTS_PER_ADDR - 1, n), (39_999, 0));
        assert_eq!(bench_flow(BENCH_PORTS_PER_ADDR, n), (0, 1));
        assert_eq!(bench_flow(n + 5, n), (5, 0), "then again from the first flow");
        assert_eq!(bench_flow(u32::MAX, u32::MAX), (0, 0), "no overflow at the extremes");
    }
}
