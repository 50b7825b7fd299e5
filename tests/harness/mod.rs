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

/// The `struct __sk_buff` a TC test run starts with, up to `ifindex`
/// (offset 40): a packet on `ifindex`, the kernel takes `ingress_ifindex`
/// and `ifindex` from it, the rest must be zero.
fn skb_ctx(ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Whether a live-frames test run works on `ifindex`: the benchmark
/// object's empty program passes one frame of zeros, which the stack drops
/// (no protocol).
fn live_frames(ebpf: &Ebpf, ifindex: u32) -> bool {
    let frame = [0u8; 64];
    let xdp: Option<&Xdp> = ebpf.program(abi::PROG_BENCH_PASS).and_then(|p| p.try_into().ok());
    xdp.is_some_and(|xdp| {
        xdp.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&xdp_md(frame.len(), ifindex)),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(1),
            ..Default::default()
        })
        .is_ok()
    })
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
        let ctx = skb_ctx(ifindex);
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
}

/// The calling thread under `SCHED_IDLE` until dropped: any other task
/// that wakes on its core preempts it at once.
struct IdlePolicy;

impl IdlePolicy {
    fn enter() -> Result<Self> {
        Self::set(libc::SCHED_IDLE)?;
        Ok(Self)
    }

    fn set(policy: libc::c_int) -> Result<()> {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscall on the calling thread with a valid param.
        let rc = unsafe { libc::sched_setscheduler(0, policy, &raw const param) };
        anyhow::ensure!(rc == 0, "sched_setscheduler: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

impl Drop for IdlePolicy {
    fn drop(&mut self) {
        // (Back to the default policy; a failure leaves the thread idle-
        // scheduled, which costs the benchmark time, nothing else.)
        let _ = Self::set(libc::SCHED_OTHER);
    }
}

/// The benchmark object, loaded (every program verified): the reference
/// programs (`abi::PROG_BENCH_PASS`, `abi::PROG_BENCH_FIB`), the
/// generator (`abi::PROG_BENCH_TX`) and the receiver (`abi::PROG_BENCH_SINK`).
pub struct Bench {
    ebpf: Ebpf,
    /// The generator [`Bench::generate`] runs.
    generator: &'static str,
    /// Where the TC bounce program is attached ([`Bench::attach_bounce`]).
    bounce: Option<aya::programs::tc::SchedClassifierLinkId>,
    /// Whether the kernel runs XDP test runs in live-frames mode (some
    /// refuse it, EPERM), found at the first run of the generator. When
    /// it does not, `abi::PROG_BENCH_TC_GEN` sends the frames instead.
    live: Option<bool>,
}

impl Bench {
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).context("loading the benchmark object")?;
        for name in [
            abi::PROG_BENCH_PASS,
            abi::PROG_BENCH_FIB,
            abi::PROG_BENCH_TX,
            abi::PROG_BENCH_GEN_PASS,
            abi::PROG_BENCH_SINK,
        ] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .with_context(|| format!("{name} missing from the benchmark object"))?;
            p.load().with_context(|| format!("verifying {name}"))?;
        }
        let p: &mut SchedClassifier = ebpf
            .program_mut(abi::PROG_BENCH_TC_BOUNCE)
            .and_then(|p| p.try_into().ok())
            .with_context(|| {
                format!("{} missing from the benchmark object", abi::PROG_BENCH_TC_BOUNCE)
            })?;
        p.load().with_context(|| format!("verifying {}", abi::PROG_BENCH_TC_BOUNCE))?;
        let p: &mut SchedClassifier =
            ebpf.program_mut(abi::PROG_BENCH_TC_GEN).and_then(|p| p.try_into().ok()).with_context(
                || format!("{} missing from the benchmark object", abi::PROG_BENCH_TC_GEN),
            )?;
        p.load().with_context(|| format!("verifying {}", abi::PROG_BENCH_TC_GEN))?;
        Ok(Self { ebpf, generator: abi::PROG_BENCH_TX, bounce: None, live: None })
    }

    /// Whether [`Bench::generate`] transmits its frames as XDP frames
    /// (`abi::PROG_BENCH_TX`: the receiving veth needs NAPI) or passes
    /// them to the interface's stack as skbs (`abi::PROG_BENCH_GEN_PASS`:
    /// a TC rule there sends them on).
    pub fn set_generator_skbs(&mut self, skbs: bool) {
        self.generator = if skbs { abi::PROG_BENCH_GEN_PASS } else { abi::PROG_BENCH_TX };
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

    /// Attaches the skb generator's TC half (`abi::PROG_BENCH_TC_BOUNCE`)
    /// at `ifname`'s ingress (in the calling thread's namespace), where the
    /// frames of [`Bench::generate`] arrive when it passes them as skbs.
    /// Stays until the next call, the object is dropped or the interface
    /// goes (with its lab).
    pub fn attach_bounce(&mut self, ifname: &str) -> Result<()> {
        // (An existing clsact qdisc is fine.)
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(abi::PROG_BENCH_TC_BOUNCE)
            .and_then(|p| p.try_into().ok())
            .context("the TC bounce program missing")?;
        if let Some(old) = self.bounce.take() {
            // (Gone with the previous lab's interface, as a rule.)
            let _ = p.detach(old);
        }
        self.bounce = Some(
            p.attach(ifname, aya::programs::TcAttachType::Ingress)
                .with_context(|| format!("attaching {} to {ifname}", abi::PROG_BENCH_TC_BOUNCE))?,
        );
        Ok(())
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
    /// namespace) `count` times: the benchmark generator
    /// (`BPF_PROG_TEST_RUN`, live frames, batches of 64). The frames are
    /// spread over `flows` flows from the frame's source up
    /// ([`abi::bench_flow`]), the first frame's flow being flow `first`.
    /// Returns the time it took.
    ///
    /// `rate: None`: as fast as the kernel can, in one test run. `Some`:
    /// that many frames per second, in evenly spaced bursts of
    /// `abi::BENCH_PACE_BURST`: the program sends when a burst is due and
    /// nothing on the runs in between (`abi::BenchFrame`), so a test run
    /// takes as long as the frames it must send. Test runs follow each
    /// other until all are sent, each sized by the time a run took in the
    /// first (a test run costs tens of ms of setup on this kernel: a call
    /// per burst would not reach 1 000 frames a second).
    pub fn generate(
        &mut self,
        frame: &[u8; 64],
        flows: u32,
        first: u32,
        ifindex: u32,
        count: u32,
        rate: Option<u32>,
    ) -> Result<Duration> {
        let Some(rate) = rate else {
            self.set_frame(frame, flows, first, 0, 0)?;
            return self.test_run(ifindex, count);
        };
        if count == 0 {
            return Ok(Duration::ZERO);
        }
        let gap_ns = (1_000_000_000 / u64::from(rate.max(1))).max(1);
        self.set_frame(frame, flows, first, gap_ns, count)?;
        // The runs between frames only wait: they take the core only when
        // nothing else wants it (the receiver may share it).
        let _idle = IdlePolicy::enter()?;
        let t0 = std::time::Instant::now();
        let mut runs: u64 = 1 << 16;
        loop {
            let took = self.test_run(ifindex, u32::try_from(runs).unwrap_or(u32::MAX))?;
            let left = u64::from(self.frame_state()?.left);
            if left == 0 {
                return Ok(t0.elapsed());
            }
            // Runs for what is left to take, plus a tenth.
            let ns_per_run = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX) / runs;
            runs =
                (left * gap_ns / ns_per_run.max(1) * 11 / 10).clamp(1 << 12, u64::from(u32::MAX));
        }
    }

    /// The generator's frame and pacing (`abi::BenchFrame`).
    fn set_frame(
        &mut self,
        frame: &[u8; 64],
        flows: u32,
        first: u32,
        gap_ns: u64,
        left: u32,
    ) -> Result<()> {
        let mut a: Array<&mut MapData, abi::BenchFrame> =
            Array::try_from(self.map_mut(abi::MAP_BENCH_FRAME)?)?;
        let f = abi::BenchFrame {
            frame: *frame,
            flows,
            seq: first,
            gap_ns,
            next_ns: 0,
            left,
            credit: 0,
        };
        a.set(0, f, 0)?;
        Ok(())
    }

    fn frame_state(&self) -> Result<abi::BenchFrame> {
        let map = self.ebpf.map(abi::MAP_BENCH_FRAME).context("map BENCH_FRAME missing")?;
        let a: Array<&MapData, abi::BenchFrame> = Array::try_from(map)?;
        Ok(a.get(&0, 0)?)
    }

    /// `runs` runs of the generator on `ifindex`: in live-frames mode, or,
    /// where the kernel refuses that, `abi::PROG_BENCH_TC_GEN`'s.
    fn test_run(&mut self, ifindex: u32, runs: u32) -> Result<Duration> {
        let frame = [0u8; 64];
        let live = *self.live.get_or_insert_with(|| {
            let live = live_frames(&self.ebpf, ifindex);
            if !live {
                eprintln!(
                    "bench: this kernel refuses live-frames test runs; the generator sends its frames as clones of a TC test run's skb (bpf_clone_redirect)"
                );
            }
            live
        });
        let t0 = std::time::Instant::now();
        if live {
            let xdp = self.program(self.generator)?;
            let ctx = xdp_md(frame.len(), ifindex);
            xdp.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: runs,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN (live frames)")?;
        } else {
            let tc: &SchedClassifier = self
                .ebpf
                .program(abi::PROG_BENCH_TC_GEN)
                .and_then(|p| p.try_into().ok())
                .with_context(|| format!("{} missing", abi::PROG_BENCH_TC_GEN))?;
            tc.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&skb_ctx(ifindex)),
                repeat: runs,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN (TC generator)")?;
        }
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
