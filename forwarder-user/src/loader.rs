//! Loading the embedded eBPF object, filling its maps, and attaching the
//! programs: XDP (native, or generic with a warning) plus the TC ingress
//! assist program on every managed interface.
//!
//! Order matters for "nothing half-applied": maps are filled before any
//! program is attached, and if any attach fails the whole `Datapath` is
//! dropped, which detaches whatever was already attached.

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, ProgramArray,
        lpm_trie::{Key, LpmTrie},
        xdp::DevMapHash,
    },
    programs::{
        RawTracePoint, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::{XdpLink, XdpLinkId},
    },
};
use forwarder_common::{
    abi::{self, Config, IfaceInfo, RuleKey, RuleTarget},
    conntrack::{self, Timeouts},
};

use crate::{
    config::{Compiled, Mode},
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

/// How to attach XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// Native (driver) mode, falling back to generic with a warning.
    Auto,
    /// Native only: fail if the driver cannot.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

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
    ebpf: Ebpf,
    /// Must outlive the programs' verification (it owns the log map fd);
    /// taken by `run` to poll it.
    logger: Option<KernelLogger>,
    pub attached: Vec<Attached>,
    /// Entries the conntrack table holds.
    flow_capacity: u32,
    /// The refusal watch (`abi::PROG_XDP_TX_ERR`) is attached.
    tx_watch: bool,
}

fn map_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> Error + '_ {
    move |source| Error::Map { what: what.to_string(), source }
}

/// Program `name` of the object, as the type it is (`Xdp`,
/// `SchedClassifier`).
fn prog<'a, T>(ebpf: &'a Ebpf, name: &str) -> Result<&'a T>
where
    &'a T: TryFrom<&'a aya::programs::Program>,
{
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::Io(format!("program {name} missing from the object")))
}

/// [`prog`], mutable.
fn prog_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::Io(format!("program {name} missing from the object")))
}

fn prog_err(what: String) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    move |source| Error::Program { what, source }
}

/// The kernel verifier's limit on instructions processed per program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_BUDGET: u32 = 1_000_000;

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

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Io(format!("map {name} missing from the object")))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| Error::Io(format!("map {name} missing from the object")))
    }

    /// Fills config, interface, devmap and rule tables.
    pub fn configure(&mut self, c: &Compiled) -> Result<()> {
        let cfg = Config {
            snat_port_min: c.snat_ports.0,
            snat_port_max: c.snat_ports.1,
            snat_attempts: abi::DEFAULT_SNAT_ATTEMPTS,
            audit_rate: c.audit.0,
            audit_burst: c.audit.1,
            new_conn_rate: c.new_conn.0,
            new_conn_burst: c.new_conn.1,
            cpus: aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            _pad: 0,
        };
        let mut a: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(abi::MAP_CONFIG)?).map_err(map_err(abi::MAP_CONFIG))?;
        a.set(0, cfg, 0).map_err(map_err(abi::MAP_CONFIG))?;

        let mut ifaces: HashMap<&mut MapData, u32, IfaceInfo> =
            HashMap::try_from(self.map_mut(abi::MAP_IFACES)?).map_err(map_err(abi::MAP_IFACES))?;
        for i in &c.ifaces {
            // TC mode is set here; `auto` may still switch an interface to
            // TC in `attach` when its driver has no native XDP.
            let flags = if i.mode == Mode::Tc { abi::IFACE_F_TC_ONLY } else { 0 };
            ifaces
                .insert(i.ifindex, IfaceInfo { role: i.role, flags }, 0)
                .map_err(map_err(abi::MAP_IFACES))?;
        }
        let mut tx: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(abi::MAP_TX_PORTS)?)
                .map_err(map_err(abi::MAP_TX_PORTS))?;
        for i in &c.ifaces {
            tx.insert(i.ifindex, i.ifindex, None, 0).map_err(|e| {
                Error::Io(format!("adding {} to {}: {e}", i.name, abi::MAP_TX_PORTS))
            })?;
        }
        let mut rules: LpmTrie<&mut MapData, RuleKey, RuleTarget> =
            LpmTrie::try_from(self.map_mut(abi::MAP_RULES)?).map_err(map_err(abi::MAP_RULES))?;
        for (prefix_len, k, v) in &c.rules {
            rules.insert(&Key::new(*prefix_len, *k), v, 0).map_err(map_err(abi::MAP_RULES))?;
        }
        let mut allow: LpmTrie<&mut MapData, abi::SrcKey, u8> =
            LpmTrie::try_from(self.map_mut(abi::MAP_SRC_ALLOW)?)
                .map_err(map_err(abi::MAP_SRC_ALLOW))?;
        for (prefix_len, k) in &c.sources {
            allow.insert(&Key::new(*prefix_len, *k), 1, 0).map_err(map_err(abi::MAP_SRC_ALLOW))?;
        }
        Ok(())
    }

    /// Puts egress `ifindex` into XDP's transmit set (the devmap) or takes
    /// it out (XDP then hands packets towards it to TC); whether it
    /// changed.
    pub fn set_xdp_egress(&mut self, ifindex: u32, on: bool) -> Result<bool> {
        let mut tx: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(abi::MAP_TX_PORTS)?)
                .map_err(map_err(abi::MAP_TX_PORTS))?;
        let present = tx.get(ifindex, 0).is_ok();
        match (present, on) {
            (false, true) => tx.insert(ifindex, ifindex, None, 0).map_err(|e| {
                Error::Io(format!("adding ifindex {ifindex} to {}: {e}", abi::MAP_TX_PORTS))
            })?,
            (true, false) => tx.remove(ifindex).map_err(map_err(abi::MAP_TX_PORTS))?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Frames the kernel refused after XDP redirected them, per egress
    /// ifindex: (frames, the last errno, negative). Empty when not watched.
    pub fn xdp_tx_errors(&self) -> Result<std::collections::BTreeMap<u32, (u64, i32)>> {
        let m: aya::maps::PerCpuHashMap<&MapData, u32, abi::XdpTxErrors> =
            aya::maps::PerCpuHashMap::try_from(self.map(abi::MAP_XDP_TX_ERRORS)?)
                .map_err(map_err(abi::MAP_XDP_TX_ERRORS))?;
        let mut out = std::collections::BTreeMap::new();
        for item in &m {
            let (ifindex, per_cpu) = item.map_err(map_err(abi::MAP_XDP_TX_ERRORS))?;
            let frames = per_cpu.iter().map(|v| v.frames).sum();
            let last_err = per_cpu.iter().map(|v| v.last_err).find(|e| *e != 0).unwrap_or(0);
            out.insert(ifindex, (frames, last_err));
        }
        Ok(out)
    }

    /// Tells the programs that `ifindex` carries TC alone (mode `auto`
    /// decided so at attach time).
    fn mark_tc_only(&mut self, ifindex: u32, role: u32) -> Result<()> {
        let mut ifaces: HashMap<&mut MapData, u32, IfaceInfo> =
            HashMap::try_from(self.map_mut(abi::MAP_IFACES)?).map_err(map_err(abi::MAP_IFACES))?;
        ifaces
            .insert(ifindex, IfaceInfo { role, flags: abi::IFACE_F_TC_ONLY }, 0)
            .map_err(map_err(abi::MAP_IFACES))
    }

    /// Attaches the programs to every interface, per its mode: XDP with
    /// the TC assist program behind it, or TC alone.
    pub fn attach(&mut self, c: &Compiled, xdp_attach: XdpAttach) -> Result<()> {
        self.attach_pinned(c, xdp_attach, None)
    }

    /// [`Datapath::attach`]; with `pins`, links are pinned, and links an
    /// earlier daemon pinned get this daemon's programs swapped in
    /// atomically instead of a new attachment.
    pub fn attach_pinned(
        &mut self,
        c: &Compiled,
        xdp_attach: XdpAttach,
        pins: Option<&Pins>,
    ) -> Result<()> {
        for i in &c.ifaces {
            let (name, ifindex) = (&i.name, i.ifindex);
            let mode = self.resolve_auto(name, ifindex, i.role, i.mode)?;
            let adopted_xdp = self.adopt_xdp(name, mode, pins)?;
            let (hook, xdp_ids) = if adopted_xdp {
                (Hook::XdpAdopted, Vec::new())
            } else {
                self.attach_xdp(name, ifindex, i.role, mode, xdp_attach)?
            };
            self.attach_tc(name, pins)?;
            if let (Some(p), false, true) = (pins, adopted_xdp, hook != Hook::Tc) {
                self.pin_xdp_links(name, xdp_ids, p)?;
            }
            self.attached.push(Attached { name: name.clone(), ifindex, hook });
        }
        if let Some(p) = pins {
            self.pin_tails(p)?;
        }
        Ok(())
    }

    /// `--mode auto` on a driver that does better with TC (veth): TC,
    /// said in the log; any other mode as asked.
    fn resolve_auto(&mut self, name: &str, ifindex: u32, role: u32, mode: Mode) -> Result<Mode> {
        if mode != Mode::Auto {
            return Ok(mode);
        }
        match crate::iface::driver(name) {
            Some(d) if crate::iface::prefers_tc(&d) => {
                log::info!(
                    "{name}: {d}: using TC (mode auto: XDP on a {d} turns off TSO on its peer, which costs TCP bulk more than XDP saves per packet; --iface-mode {name}=xdp for packet rate)"
                );
                self.mark_tc_only(ifindex, role)?;
                Ok(Mode::Tc)
            }
            _ => Ok(Mode::Auto),
        }
    }

    /// An XDP link an earlier daemon pinned for `name`: this daemon's
    /// program swapped into it (whether it was), or, in TC mode, the link
    /// removed.
    fn adopt_xdp(&mut self, name: &str, mode: Mode, pins: Option<&Pins>) -> Result<bool> {
        let Some(path) = pins.map(|p| p.link("xdp", name)).filter(|p| p.exists()) else {
            return Ok(false);
        };
        if mode == Mode::Tc {
            // Now TC mode: the earlier XDP link goes.
            std::fs::remove_file(&path)
                .map_err(|e| Error::Io(format!("unpinning {}: {e}", path.display())))?;
            return Ok(false);
        }
        let xdp: &mut Xdp = prog_mut(&mut self.ebpf, abi::PROG_XDP)?;
        let link = PinnedLink::from_pin(&path)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let link = XdpLink::try_from(FdLink::from(link))
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        xdp.attach_to_link(link).map_err(prog_err(format!("swapping XDP on {name}")))?;
        Ok(true)
    }

    /// A new XDP attachment of `name` per its mode and `xdp_attach` (none
    /// in TC mode): the hook it got and its links.
    fn attach_xdp(
        &mut self,
        name: &str,
        ifindex: u32,
        role: u32,
        mode: Mode,
        xdp_attach: XdpAttach,
    ) -> Result<(Hook, Vec<XdpLinkId>)> {
        let xdp: &mut Xdp = prog_mut(&mut self.ebpf, abi::PROG_XDP)?;
        let generic = |xdp: &mut Xdp| {
            xdp.attach(name, XdpMode::Skb)
                .map_err(prog_err(format!("attaching XDP (generic) to {name}")))
        };
        Ok(match (mode, xdp_attach) {
            (Mode::Tc, _) => (Hook::Tc, Vec::new()),
            (Mode::Auto, _) => match xdp.attach(name, XdpMode::Driver) {
                Ok(id) => (Hook::XdpNative, vec![id]),
                Err(e) => {
                    log::info!("{name}: no native XDP ({e}); using TC (mode auto)");
                    self.mark_tc_only(ifindex, role)?;
                    (Hook::Tc, Vec::new())
                }
            },
            (Mode::Xdp, XdpAttach::Generic) => (Hook::XdpGeneric, vec![generic(xdp)?]),
            (Mode::Xdp, XdpAttach::Native) => {
                let id = xdp
                    .attach(name, XdpMode::Driver)
                    .map_err(prog_err(format!("attaching XDP (native) to {name}")))?;
                (Hook::XdpNative, vec![id])
            }
            (Mode::Xdp, XdpAttach::Auto) => match xdp.attach(name, XdpMode::Driver) {
                Ok(id) => (Hook::XdpNative, vec![id]),
                Err(e) => {
                    log::warn!(
                        "{name}: native XDP failed ({e}); falling back to generic XDP, which is much slower (consider --mode tc)"
                    );
                    (Hook::XdpGeneric, vec![generic(xdp)?])
                }
            },
        })
    }

    /// The TC ingress program on `name`: swapped into the link an earlier
    /// daemon pinned, or attached (and pinned, with `pins`).
    fn attach_tc(&mut self, name: &str, pins: Option<&Pins>) -> Result<()> {
        let tc: &mut SchedClassifier = prog_mut(&mut self.ebpf, abi::PROG_TC)?;
        if let Some(path) = pins.map(|p| p.link("tc", name)).filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(&path)
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            let link = SchedClassifierLink::try_from(FdLink::from(link))
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            return tc
                .attach_to_link(link)
                .map(|_| ())
                .map_err(prog_err(format!("swapping TC on {name}")));
        }
        // Kernels before 6.6 attach through a clsact qdisc; it may exist.
        let _ = aya::programs::tc::qdisc_add_clsact(name);
        let id = tc
            .attach(name, TcAttachType::Ingress)
            .map_err(prog_err(format!("attaching TC ingress to {name}")))?;
        if let Some(p) = pins {
            let link =
                FdLink::try_from(tc.take_link(id).map_err(prog_err(format!("TC link on {name}")))?)
                    .map_err(|e| Error::Io(format!("TC link on {name}: {e}")))?;
            link.pin(p.link("tc", name))
                .map_err(|e| Error::Io(format!("pinning TC link of {name}: {e}")))?;
        }
        Ok(())
    }

    /// Pins the XDP links of `name` (a restart adopts them).
    fn pin_xdp_links(&mut self, name: &str, ids: Vec<XdpLinkId>, pins: &Pins) -> Result<()> {
        let xdp: &mut Xdp = prog_mut(&mut self.ebpf, abi::PROG_XDP)?;
        for id in ids {
            let link = FdLink::try_from(
                xdp.take_link(id).map_err(prog_err(format!("XDP link on {name}")))?,
            )
            .map_err(|e| Error::Io(format!("XDP link on {name}: {e}")))?;
            link.pin(pins.link("xdp", name))
                .map_err(|e| Error::Io(format!("pinning XDP link of {name}: {e}")))?;
        }
        Ok(())
    }

    /// Pins this datapath's tail-call tables (see `pin::TAIL_MAPS`),
    /// replacing an earlier daemon's pins.
    fn pin_tails(&mut self, pins: &Pins) -> Result<()> {
        for name in crate::pin::TAIL_MAPS {
            let path = pins.tails(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|e| Error::Io(format!("unpinning {}: {e}", path.display())))?;
            }
            let aya::maps::Map::ProgramArray(m) = self.map_mut(name)? else {
                return Err(Error::Io(format!("{name} is not a program array")));
            };
            m.pin(&path).map_err(|e| Error::Io(format!("pinning {}: {e}", path.display())))?;
        }
        Ok(())
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

    /// Removes flow table entries (both directions of connections).
    pub fn remove_flows(&mut self, keys: &[abi::FlowKey]) -> Result<usize> {
        let mut flows: HashMap<&mut MapData, abi::FlowKey, abi::FlowEntry> =
            HashMap::try_from(self.map_mut(abi::MAP_FLOWS)?).map_err(map_err(abi::MAP_FLOWS))?;
        Ok(keys.iter().filter(|k| flows.remove(k).is_ok()).count())
    }

    /// The flow table's entry for `key`, if there is one.
    pub fn flow(&self, key: &abi::FlowKey) -> Result<Option<abi::FlowEntry>> {
        let flows: HashMap<&MapData, abi::FlowKey, abi::FlowEntry> =
            HashMap::try_from(self.map(abi::MAP_FLOWS)?).map_err(map_err(abi::MAP_FLOWS))?;
        match flows.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(abi::MAP_FLOWS)(e)),
        }
    }

    /// The flow table's entries (both directions).
    pub fn flows(&self) -> Result<Vec<(abi::FlowKey, abi::FlowEntry)>> {
        crate::batch::lookup_all(self.flows_fd()?, abi::MAP_FLOWS)
    }

    /// The flow table's descriptor, for batch reads.
    fn flows_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        let aya::maps::Map::HashMap(data) = self.map(abi::MAP_FLOWS)? else {
            return Err(Error::Io(format!("{} is not a hash map", abi::MAP_FLOWS)));
        };
        Ok(std::os::fd::AsFd::as_fd(data.fd()))
    }

    /// Removes the connections idle past their timeout (both entries),
    /// `now_ns` on the datapath's clock ([`monotonic_ns`]): a whole
    /// [`Sweep`] pass at once.
    pub fn collect_expired(&mut self, t: &Timeouts, now_ns: u64) -> Result<SweepPass> {
        let mut sweep = Sweep::default();
        loop {
            if let Some(pass) = self.sweep_step(&mut sweep, t, now_ns, usize::MAX)? {
                return Ok(pass);
            }
        }
    }

    /// Goes on with `sweep` over at least `budget` entries (whole hash
    /// buckets), removing the connections idle past their timeout (both
    /// entries). Returns the pass's totals when it has reached the end of
    /// the table (the next step starts a new pass). The table is read a
    /// few hundred entries per syscall; an entry is looked at again, fresh,
    /// with its peer, only when it looks expired on its own (both entries
    /// of a connection carry its state, so a pair is expired only if its
    /// more advanced entry looks so alone).
    pub fn sweep_step(
        &mut self,
        sweep: &mut Sweep,
        t: &Timeouts,
        now_ns: u64,
        budget: usize,
    ) -> Result<Option<SweepPass>> {
        let (chunk, next) = crate::batch::lookup_from::<abi::FlowKey, abi::FlowEntry>(
            self.flows_fd()?,
            sweep.at,
            budget,
            abi::MAP_FLOWS,
        )?;
        let mut flows: HashMap<&mut MapData, abi::FlowKey, abi::FlowEntry> =
            HashMap::try_from(self.map_mut(abi::MAP_FLOWS)?).map_err(map_err(abi::MAP_FLOWS))?;
        // Idle past its timeout, judged with its peer (the other direction).
        let expired = |k: &abi::FlowKey, e: &abi::FlowEntry, peer: Option<&abi::FlowEntry>| {
            let (ps, pl) = peer.map_or((e.state, e.last_seen_ns), |p| (p.state, p.last_seen_ns));
            conntrack::expired(t, k.proto, e.state, ps, e.last_seen_ns, pl, now_ns)
        };
        for (k, e) in &chunk {
            sweep.pass.scanned += 1;
            if expired(k, e, None) {
                // Gone meanwhile: removed with its peer earlier in the pass.
                let Ok(e) = flows.get(k, 0) else { continue };
                let pk = abi::FlowKey::new(&e.tuple().reversed(), k.proto);
                let peer = flows.get(&pk, 0).ok();
                if expired(k, &e, peer.as_ref()) {
                    sweep.pass.removed += usize::from(flows.remove(k).is_ok());
                    sweep.pass.removed += usize::from(peer.is_some() && flows.remove(&pk).is_ok());
                    continue;
                }
            }
            sweep.pass.usage.add(k, e);
        }
        sweep.at = next;
        Ok((next == crate::batch::Walk::Done).then(|| std::mem::take(sweep).pass))
    }

    /// Makes the public-address table equal to `want`, or to its first
    /// [`abi::MAX_PUBLIC_ADDRS`] when it holds more (hairpin then works for
    /// those); says whether the table changed and how many did not fit.
    pub fn sync_public_addrs(
        &mut self,
        want: &std::collections::BTreeSet<([u8; 4], u32)>,
    ) -> Result<AddrSync> {
        let fit: std::collections::BTreeMap<[u8; 4], u32> =
            want.iter().take(abi::MAX_PUBLIC_ADDRS as usize).copied().collect();
        let left_out = want.len().saturating_sub(fit.len());
        let mut m: HashMap<&mut MapData, [u8; 4], u32> =
            HashMap::try_from(self.map_mut(abi::MAP_PUBLIC_ADDRS)?)
                .map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        let have: std::collections::BTreeMap<[u8; 4], u32> = m
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        if have == fit {
            return Ok(AddrSync { changed: false, left_out });
        }
        // Removals first: the table never needs room for both.
        for a in have.keys().filter(|a| !fit.contains_key(*a)) {
            m.remove(a).map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        }
        for (a, i) in fit.iter().filter(|(a, i)| have.get(*a) != Some(i)) {
            m.insert(a, i, 0).map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        }
        Ok(AddrSync { changed: true, left_out })
    }

    /// One global counter (`forwarder_common::stats::*`), summed over CPUs.
    pub fn counter(&self, index: u32) -> Result<u64> {
        let gs: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(abi::MAP_STATS)?).map_err(map_err(abi::MAP_STATS))?;
        Ok(gs.get(&index, 0).map_err(map_err(abi::MAP_STATS))?.iter().sum())
    }

    /// Sums the per-CPU counters and counts the conntrack table.
    pub fn snapshot(&self, rules: &[crate::config::Rule]) -> Result<crate::stats::Snapshot> {
        self.snapshot_with(rules, CtUsage::of(&self.flows()?))
    }

    /// [`Datapath::snapshot`] with the conntrack table's use counted
    /// elsewhere (by the last sweep: reading the whole table costs time).
    pub fn snapshot_with(
        &self,
        rules: &[crate::config::Rule],
        ct: CtUsage,
    ) -> Result<crate::stats::Snapshot> {
        let rs: PerCpuArray<&MapData, abi::RuleStats> =
            PerCpuArray::try_from(self.map(abi::MAP_RULE_STATS)?)
                .map_err(map_err(abi::MAP_RULE_STATS))?;
        let mut out = crate::stats::Snapshot::default();
        for (i, rule) in rules.iter().enumerate() {
            let id = i as u32;
            let per_cpu = rs.get(&id, 0).map_err(map_err(abi::MAP_RULE_STATS))?;
            let mut sum = abi::RuleStats::default();
            for s in per_cpu.iter() {
                sum.orig_packets += s.orig_packets;
                sum.orig_bytes += s.orig_bytes;
                sum.reply_packets += s.reply_packets;
                sum.reply_bytes += s.reply_bytes;
                sum.new_conns += s.new_conns;
                sum.denied += s.denied;
            }
            out.rules.push(crate::stats::RuleCounters::new(id, rule, &sum));
        }
        let gs: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(abi::MAP_STATS)?).map_err(map_err(abi::MAP_STATS))?;
        for (i, name) in forwarder_common::stats::NAMES.iter().enumerate() {
            let v: u64 = gs.get(&(i as u32), 0).map_err(map_err(abi::MAP_STATS))?.iter().sum();
            out.counters.insert((*name).to_string(), v);
        }
        (out.flow_entries, out.snat_ports_in_use) = (ct.entries, ct.snat_ports);
        out.flow_capacity = u64::from(self.flow_capacity);
        Ok(out)
    }
}

/// What [`Datapath::sync_public_addrs`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrSync {
    pub changed: bool,
    /// Public addresses beyond the table's capacity (not hairpinned).
    pub left_out: usize,
}

/// How much of the conntrack table is in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtUsage {
    /// Entries (two per connection).
    pub entries: u64,
    /// Masquerade source ports held (one per masqueraded connection).
    pub snat_ports: u64,
}

impl CtUsage {
    /// Counts `flows` (the table's entries).
    pub fn of(flows: &[(abi::FlowKey, abi::FlowEntry)]) -> Self {
        let mut u = Self::default();
        for (k, e) in flows {
            u.add(k, e);
        }
        u
    }

    /// Counts one entry.
    pub fn add(&mut self, k: &abi::FlowKey, e: &abi::FlowEntry) {
        self.entries += 1;
        // A reply entry is keyed by the translated tuple: its destination
        // is the masquerade address unless the rule keeps the client's
        // (then it equals where the reply goes).
        if e.dir == abi::DIR_REPLY && k.daddr != e.daddr {
            self.snat_ports += 1;
        }
    }
}

/// A conntrack sweep in progress ([`Datapath::sweep_step`]).
#[derive(Debug, Default)]
pub struct Sweep {
    at: crate::batch::Walk,
    pass: SweepPass,
}

/// What one pass of a sweep over the whole table did and found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepPass {
    /// Entries looked at.
    pub scanned: usize,
    /// Entries removed (two per connection).
    pub removed: usize,
    /// The table's use: the entries it kept.
    pub usage: CtUsage,
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`, which the
/// flow entries' times are on.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}
