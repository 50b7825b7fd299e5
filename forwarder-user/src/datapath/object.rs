//! The datapath object: loading the embedded eBPF object into the kernel
//! (verifier included) on pinned or fresh state maps, its tail calls, and
//! the handles the other parts of [`crate::datapath`] and the test harness
//! use (programs, maps, the kernel log, the audit ring).

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, ProgramArray},
    programs::{RawTracePoint, SchedClassifier, Xdp},
};
use forwarder_common::abi::{self};

use crate::{
    error::{Error, Result},
    pin::{Pins, STATE_MAPS},
};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder.bpf.o"));

/// The benchmarks' object (reference programs, generator, receiver),
/// built by `build.rs` from the same crate: loaded only by the benchmark
/// harness; the `forwarder` binary never references it, so it does not
/// carry it.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.bpf.o"));

/// Which hook an interface ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    XdpNative,
    XdpGeneric,
    Tc,
    /// Pinned links of an earlier daemon, with this daemon's programs.
    XdpAdopted,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::XdpNative => "XDP native + TC ingress (assist)",
            Self::XdpGeneric => "XDP generic + TC ingress (assist)",
            Self::Tc => "TC ingress (TC mode)",
            Self::XdpAdopted => {
                "XDP + TC ingress, adopted from the pinned links (programs swapped in)"
            }
        })
    }
}

/// How one interface ended up attached.
#[derive(Debug, Clone)]
pub struct Attached {
    pub name: String,
    pub ifindex: u32,
    pub hook: Hook,
}

/// Reads the datapath's aya-log records and hands them to `log`.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct Datapath {
    pub(super) ebpf: Ebpf,
    /// Must outlive the programs' verification (it owns the log map fd);
    /// taken by `run` to poll it.
    pub(super) logger: Option<KernelLogger>,
    pub attached: Vec<Attached>,
    /// Entries the conntrack table holds.
    pub(super) flow_capacity: u32,
    /// The refusal watch (`abi::PROG_XDP_TX_ERR`) is attached.
    pub(super) tx_watch: bool,
}

pub(super) fn map_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> Error + '_ {
    move |source| Error::Map { what: what.to_string(), source }
}

/// Program `name` of the object, as the type it is (`Xdp`,
/// `SchedClassifier`).
pub(super) fn prog<'a, T>(ebpf: &'a Ebpf, name: &str) -> Result<&'a T>
where
    &'a T: TryFrom<&'a aya::programs::Program>,
{
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::Io(format!("program {name} missing from the object")))
}

/// [`prog`], mutable.
pub(super) fn prog_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::Io(format!("program {name} missing from the object")))
}

pub(super) fn prog_err(what: String) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    move |source| Error::Program { what, source }
}

/// The kernel verifier's limit on instructions processed per program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_BUDGET: u32 = 1_000_000;

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`, which the
/// flow entries' times are on.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// Whether the kernel lets an XDP program call `bpf_xdp_adjust_meta`: a
/// four-instruction program that calls it is put to the verifier, and
/// only its refusal (EINVAL) says no.
/// Kernels built without the helper for XDP refuse the whole program that
/// calls it, not only the call.
pub fn xdp_meta_supported() -> bool {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_FUNC_XDP_ADJUST_META: i32 = 54;
    /// `struct bpf_insn`: opcode, registers (dst low nibble, src high),
    /// offset, immediate.
    #[repr(C)]
    struct Insn(u8, u8, i16, i32);
    /// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to the log.
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    let insns = [
        Insn(0xb7, 2, 0, -4),                       // r2 = -4
        Insn(0x85, 0, 0, BPF_FUNC_XDP_ADJUST_META), // call bpf_xdp_adjust_meta
        Insn(0xb7, 0, 0, 2),                        // r0 = XDP_PASS
        Insn(0x95, 0, 0, 0),                        // exit
    ];
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoad::default()
    };
    // SAFETY: `attr` and what it points to outlive the call; the kernel
    // reads `size_of::<ProgLoad>()` bytes and zero-fills the rest.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        // EINVAL is the verifier's refusal; anything else (EPERM, …) the
        // object's own load reports as it is.
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL);
    }
    // SAFETY: the fd the kernel just returned, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

impl Datapath {
    /// Loads the object into the kernel (verifier included) with a
    /// conntrack table for `max_connections`; attaches nothing.
    pub fn load(max_connections: u32) -> Result<Self> {
        Self::load_pinned(max_connections, None)
    }

    /// [`Datapath::load`], with the state maps pinned under `pins` (and
    /// adopted from there when an earlier daemon left them).
    pub fn load_pinned(max_connections: u32, pins: Option<&Pins>) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::NoObject);
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(abi::MAP_FLOWS, max_connections.saturating_mul(2));
        let meta = u8::from(xdp_meta_supported());
        if meta == 0 {
            log::info!(
                "this kernel does not let XDP programs call bpf_xdp_adjust_meta: XDP hands packets to TC untouched and unmarked, and the TC program behind XDP looks at every packet XDP lets through"
            );
        }
        loader.override_global(abi::GLOBAL_XDP_META, &meta, true);
        if let Some(p) = pins {
            for gone in p.retire_stale()? {
                log::warn!(
                    "{}: pinned by a forwarder with another layout of this map; not adopted, this daemon starts it fresh{}",
                    gone,
                    if gone.starts_with(abi::MAP_FLOWS) {
                        " (connections it tracked are not translated any more)"
                    } else {
                        ""
                    }
                );
            }
        }
        let paths: Vec<(&str, std::path::PathBuf)> = pins
            .map(|p| STATE_MAPS.iter().map(|(m, _)| (*m, p.map(m))).collect())
            .unwrap_or_default();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .map_err(|e| Error::Io(format!("kernel log channel: {e}")))?;
        for name in
            [abi::PROG_XDP, abi::PROG_XDP_CSUM, abi::PROG_XDP_NEW, abi::PROG_TC, abi::PROG_TC_NEW]
        {
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::Io(format!("program {name} missing from the object")))?;
            match prog {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                _ => return Err(Error::Io(format!("program {name} has an unexpected type"))),
            }
            .map_err(prog_err(format!("verifying {name}")))?;
        }
        // The watch on the kernel refusing our redirects: counts for this
        // datapath's devmap only. A kernel without BPF tracing still
        // forwards; it only cannot see refusals (the egress features still
        // keep XDP off the devices that cannot take its frames).
        let devmap_id = match ebpf.map(abi::MAP_TX_PORTS) {
            Some(aya::maps::Map::DevMapHash(m)) => {
                m.info().map_err(map_err(abi::MAP_TX_PORTS))?.id()
            }
            _ => {
                return Err(Error::Io(format!(
                    "map {} missing from the object",
                    abi::MAP_TX_PORTS
                )));
            }
        };
        let mut watch: Array<&mut MapData, u32> = Array::try_from(
            ebpf.map_mut(abi::MAP_TX_WATCH)
                .ok_or_else(|| Error::Io(format!("map {} missing", abi::MAP_TX_WATCH)))?,
        )
        .map_err(map_err(abi::MAP_TX_WATCH))?;
        watch.set(0, devmap_id, 0).map_err(map_err(abi::MAP_TX_WATCH))?;
        let tp: &mut RawTracePoint = prog_mut(&mut ebpf, abi::PROG_XDP_TX_ERR)?;
        let tx_watch = match tp.load().and_then(|()| tp.attach(abi::TRACEPOINT_XDP_REDIRECT_ERR)) {
            Ok(_) => true,
            Err(e) => {
                log::warn!(
                    "cannot watch XDP transmit refusals ({e}); egresses are chosen by their XDP features alone"
                );
                false
            }
        };
        // The programs' tail calls.
        for (map, index, name) in [
            (abi::MAP_XDP_TAILS, abi::XDP_TAIL_FULL_CSUM, abi::PROG_XDP_CSUM),
            (abi::MAP_XDP_TAILS, abi::XDP_TAIL_NEW_FLOW, abi::PROG_XDP_NEW),
            (abi::MAP_TC_TAILS, abi::TC_TAIL_NEW_FLOW, abi::PROG_TC_NEW),
        ] {
            let fd = match ebpf.program(name) {
                Some(aya::programs::Program::Xdp(p)) => p.fd(),
                Some(aya::programs::Program::SchedClassifier(p)) => p.fd(),
                _ => return Err(Error::Io(format!("program {name} missing from the object"))),
            }
            .map_err(prog_err(name.to_string()))?
            .try_clone()
            .map_err(|e| Error::Io(format!("dup program fd: {e}")))?;
            let mut tails: ProgramArray<&mut MapData> = ProgramArray::try_from(
                ebpf.map_mut(map).ok_or_else(|| Error::Io(format!("map {map} missing")))?,
            )
            .map_err(map_err(map))?;
            tails.set(index, &fd, 0).map_err(map_err(map))?;
        }
        // The table's real size: an adopted (pinned) one keeps the size it
        // was made with, whatever `max_connections` asks (aya reuses a
        // pinned map as it is).
        let flow_capacity = match ebpf.map(abi::MAP_FLOWS) {
            Some(aya::maps::Map::HashMap(m)) => {
                m.info().map_err(map_err(abi::MAP_FLOWS))?.max_entries()
            }
            _ => return Err(Error::Io(format!("map {} missing from the object", abi::MAP_FLOWS))),
        };
        Ok(Self { ebpf, logger: Some(logger), attached: Vec::new(), flow_capacity, tx_watch })
    }

    /// Connections the conntrack table holds (two entries each): as asked
    /// at load, or as an adopted table was made.
    pub const fn connection_capacity(&self) -> u32 {
        self.flow_capacity / 2
    }

    /// Entries the conntrack table holds (two per connection).
    pub const fn flow_capacity(&self) -> u32 {
        self.flow_capacity
    }

    /// Whether the kernel's refusals of XDP redirects are watched.
    pub const fn tx_watch(&self) -> bool {
        self.tx_watch
    }

    /// The verifier's work per program: (name, instructions it processed),
    /// out of its budget of [`VERIFIER_BUDGET`]. `None` when the kernel
    /// does not say (before 5.16).
    pub fn verified_insns(&self) -> Vec<(&'static str, Option<u32>)> {
        [
            abi::PROG_XDP,
            abi::PROG_XDP_CSUM,
            abi::PROG_XDP_NEW,
            abi::PROG_TC,
            abi::PROG_TC_NEW,
            abi::PROG_XDP_TX_ERR,
        ]
        .into_iter()
        .map(|name| {
            let n = self
                .ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            (name, n)
        })
        .collect()
    }

    /// The audit event ring (once): records are `abi::AuditEvent`s.
    pub fn take_events(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        let m = self
            .ebpf
            .take_map(abi::MAP_EVENTS)
            .ok_or_else(|| Error::Io(format!("map {} missing from the object", abi::MAP_EVENTS)))?;
        aya::maps::RingBuf::try_from(m).map_err(map_err(abi::MAP_EVENTS))
    }

    /// The kernel log reader, for polling (once).
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    pub(super) fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Io(format!("map {name} missing from the object")))
    }

    pub(super) fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| Error::Io(format!("map {name} missing from the object")))
    }

    /// XDP program `name` of the loaded object (the test harness runs it
    /// with `BPF_PROG_TEST_RUN`).
    pub fn xdp_program(&self, name: &str) -> Result<&Xdp> {
        prog(&self.ebpf, name)
    }

    /// The loaded TC program (`abi::PROG_TC`), for the test harness.
    pub fn tc_program(&self) -> Result<&SchedClassifier> {
        prog(&self.ebpf, abi::PROG_TC)
    }
}
