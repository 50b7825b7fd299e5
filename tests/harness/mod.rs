//! The test harness's handles on the eBPF programs, out of the loader:
//! `BPF_PROG_TEST_RUN` of the forwarder's own programs (fixtures, the
//! micro-benchmark), and the benchmark object (`datapath::BENCH_OBJECT`):
//! its reference programs, the comparison's generator and its receiver.
//! Included by the tests and benches that use it (`#[path]`).

pub mod timing;

use std::time::Duration;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, xdp::DevMapHash},
    programs::{
        SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId,
    },
};
use forwarder::datapath::{BENCH_OBJECT, Datapath};
use forwarder_common::abi;

/// The `struct xdp_md` a test run starts with: a frame of `len` bytes
/// arriving on `ifindex` (fields `data`, `data_end`, `data_meta`,
/// `ingress_ifindex`, `rx_queue_index`, `egress_ifindex`: u32 each).
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs `xdp` on `frame` (`BPF_PROG_TEST_RUN`) as if it arrived on
/// `ingress_ifindex` (of the caller's network namespace), `repeat` times:
/// the verdict, the frame as the program left it, the mean time per run.
pub fn test_run(
    xdp: &Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> Result<(u32, Vec<u8>, Duration)> {
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let res = xdp
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: repeat.max(1),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value, out, res.duration))
}

/// `BPF_PROG_TEST_RUN` of a loaded forwarder datapath's programs.
pub trait TestRunExt {
    /// The XDP program once on `frame` as if it arrived on
    /// `ingress_ifindex`: the verdict, the frame as the program left it
    /// (`repeat` > 1: the mean time per run).
    fn test_run_xdp(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration)>;
    /// The TC program once on `frame` as if it arrived on `ifindex`: the
    /// verdict (`TC_ACT_*`) and the frame as the program left it.
    fn test_run_tc(&self, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)>;
    /// The XDP program once on `frame` as if `ingress_ifindex` (in the
    /// calling thread's namespace) received it, in live-frame mode: what it
    /// redirects is transmitted, what it passes enters the stack there,
    /// metadata and all, and meets the TC program if it is attached.
    fn run_xdp_live(&self, frame: &[u8], ingress_ifindex: u32) -> Result<()>;
}

impl TestRunExt for Datapath {
    fn test_run_xdp(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration)> {
        test_run(self.xdp_program(abi::PROG_XDP)?, frame, ingress_ifindex, repeat)
    }

    fn test_run_tc(&self, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let tc: &SchedClassifier = self.tc_program()?;
        // struct __sk_buff up to ifindex (offset 40): the kernel takes
        // ingress_ifindex and ifindex from it, the rest must be zero.
        let mut ctx = [0u8; 44];
        ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let res = tc
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN (TC)")?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    fn run_xdp_live(&self, frame: &[u8], ingress_ifindex: u32) -> Result<()> {
        let xdp = self.xdp_program(abi::PROG_XDP)?;
        let ctx = xdp_md(frame.len(), ingress_ifindex);
        xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(1),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN (live frame)")?;
        Ok(())
    }
}

/// The benchmark object, loaded (every program verified): the reference
/// programs (`abi::PROG_BENCH_PASS`, `abi::PROG_BENCH_FIB`), the
/// generator (`abi::PROG_BENCH_TX`) and the receiver (`abi::PROG_BENCH_SINK`).
pub struct Bench {
    ebpf: Ebpf,
}

impl Bench {
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).context("loading the benchmark object")?;
        for name in
            [abi::PROG_BENCH_PASS, abi::PROG_BENCH_FIB, abi::PROG_BENCH_TX, abi::PROG_BENCH_SINK]
        {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .with_context(|| format!("{name} missing from the benchmark object"))?;
            p.load().with_context(|| format!("verifying {name}"))?;
        }
        Ok(Self { ebpf })
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .with_context(|| format!("{name} missing from the benchmark object"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the benchmark object"))
    }

    /// The interfaces (ifindexes, of the namespace the program runs in)
    /// [`abi::PROG_BENCH_FIB`] may redirect to.
    pub fn set_tx_ports(&mut self, ifindexes: &[u32]) -> Result<()> {
        let mut ports: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(abi::MAP_BENCH_TX_PORTS)?)?;
        for &i in ifindexes {
            ports
                .insert(i, i, None, 0)
                .with_context(|| format!("{} {i}", abi::MAP_BENCH_TX_PORTS))?;
        }
        Ok(())
    }

    /// Attaches program `name` natively to `ifname` (resolved in the
    /// calling thread's namespace). Detached by [`Bench::detach`] or on drop.
    pub fn attach(&mut self, name: &str, ifname: &str) -> Result<XdpLinkId> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .with_context(|| format!("{name} missing"))?;
        p.attach(ifname, XdpMode::Driver).with_context(|| format!("attaching {name} to {ifname}"))
    }

    pub fn detach(&mut self, name: &str, link: XdpLinkId) -> Result<()> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .with_context(|| format!("{name} missing"))?;
        p.detach(link).with_context(|| format!("detaching {name}"))
    }

    /// Sends the 64-byte `frame` out of `ifindex` (in the calling thread's
    /// namespace) `count` times, as fast as the kernel can: the benchmark
    /// generator (`BPF_PROG_TEST_RUN`, live frames, batches of 64). The
    /// frames are spread over `flows` flows from the frame's source up
    /// ([`abi::bench_flow`]), the first frame's flow being flow `first`.
    /// Returns the time it took.
    pub fn generate(
        &mut self,
        frame: &[u8; 64],
        flows: u32,
        first: u32,
        ifindex: u32,
        count: u32,
    ) -> Result<Duration> {
        let mut a: Array<&mut MapData, abi::BenchFrame> =
            Array::try_from(self.map_mut(abi::MAP_BENCH_FRAME)?)?;
        a.set(0, abi::BenchFrame { frame: *frame, flows, seq: first }, 0)?;
        let xdp = self.program(abi::PROG_BENCH_TX)?;
        let ctx = xdp_md(frame.len(), ifindex);
        let t0 = std::time::Instant::now();
        xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(t0.elapsed())
    }

    /// Packets the receiver counted so far (all CPUs): (from the source it
    /// expects, from any other).
    pub fn sink_count(&self) -> Result<(u64, u64)> {
        let map = self.ebpf.map(abi::MAP_BENCH_SINK).context("map BENCH_SINK missing")?;
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let n = |i: u32| -> Result<u64> { Ok(a.get(&i, 0)?.iter().sum()) };
        Ok((n(abi::BENCH_SINK_FROM_SOURCE)?, n(abi::BENCH_SINK_FROM_OTHERS)?))
    }

    /// The source the receiver expects: `addr`/`prefix`.
    pub fn set_source(&mut self, addr: std::net::Ipv4Addr, prefix: u8) -> Result<()> {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
        let mut a: Array<&mut MapData, abi::BenchSource> =
            Array::try_from(self.map_mut(abi::MAP_BENCH_SINK_SOURCE)?)?;
        a.set(0, abi::BenchSource { addr: addr.octets(), mask: mask.to_be_bytes() }, 0)?;
        Ok(())
    }
}
