//! Timing a datapath program with `BPF_PROG_TEST_RUN`, one packet per
//! call (the micro-benchmark and the scale benchmark): the frames it is
//! timed on, and the measurement.

use std::net::Ipv4Addr;

use aya::programs::Xdp;
use etherparse::PacketBuilder;
use forwarder::datapath::Datapath;

/// A TCP frame: a SYN, or an ACK carrying `payload`.
#[expect(clippy::too_many_arguments, reason = "a frame is all of these")]
pub fn tcp(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64240);
    b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("frame");
    v
}

/// One timed case: median and range of its repetitions' mean ns per
/// packet.
pub struct Case {
    pub name: String,
    pub median_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
}

/// Mean ns per run of `xdp` (program `prog`) over `calls` single-run
/// calls on `frames` in turn, `reps` times: (median, min, max) of the
/// repetitions' means. Every run must end in `expect`.
pub fn measure(
    dp: &Datapath,
    (xdp, prog): (&Xdp, &str),
    frames: &[Vec<u8>],
    ifindex: u32,
    calls: usize,
    reps: usize,
    expect: u32,
) -> (f64, f64, f64) {
    let mut means = Vec::new();
    for r in 0..reps {
        let mut total = 0u64;
        for c in 0..calls {
            let f = &frames[(r * calls + c) % frames.len()];
            let (verdict, _, d) = super::test_run(xdp, f, ifindex, 1).expect("test run");
            assert_eq!(
                verdict,
                expect,
                "{prog}: unexpected verdict (repetition {r}, call {c}); counters {:?}",
                dp.snapshot(&[]).map(|s| s
                    .counters
                    .into_iter()
                    .filter(|(_, v)| *v > 0)
                    .collect::<Vec<_>>())
            );
            total += u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        }
        #[expect(clippy::cast_precision_loss, reason = "sums of nanoseconds far below 2^52")]
        means.push(total as f64 / calls as f64);
    }
    means.sort_by(f64::total_cmp);
    (means[means.len() / 2], means[0], means[means.len() - 1])
}
