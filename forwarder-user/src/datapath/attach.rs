//! Attaching the programs to every interface per its mode: XDP (native,
//! or generic with a warning) with the TC assist program behind it, or TC
//! alone; links an earlier daemon pinned adopted (programs swapped in).
//!
//! Order matters for "nothing half-applied": maps are filled before any
//! program is attached, and if any attach fails the whole `Datapath` is
//! dropped, which detaches whatever was already attached.

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::{XdpLink, XdpLinkId},
};
use forwarder_common::abi::{self};

use crate::{
    error::{Error, Result},
    pin::Pins,
    plan::{Compiled, IfaceMode},
};

use super::object::{Attached, Datapath, Hook, prog_err, prog_mut};

/// How to attach XDP where the mode says XDP (`--xdp-attach`). Not to be
/// confused with [`IfaceMode::NativeXdpElseTc`] (`--mode auto`), which
/// falls back to TC, never to generic XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// Native (driver) mode, falling back to generic with a warning.
    #[value(name = "auto")]
    NativeElseGeneric,
    /// Native only: fail if the driver cannot.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

impl Datapath {
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
            let (name, ifindex, mode) = (&i.name, i.ifindex, i.mode);
            if let Some(note) = &i.note {
                log::info!("{note}");
            }
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

    /// An XDP link an earlier daemon pinned for `name`: this daemon's
    /// program swapped into it (whether it was), or, in TC mode, the link
    /// removed.
    fn adopt_xdp(&mut self, name: &str, mode: IfaceMode, pins: Option<&Pins>) -> Result<bool> {
        let Some(path) = pins.map(|p| p.link("xdp", name)).filter(|p| p.exists()) else {
            return Ok(false);
        };
        if mode == IfaceMode::Tc {
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
        mode: IfaceMode,
        xdp_attach: XdpAttach,
    ) -> Result<(Hook, Vec<XdpLinkId>)> {
        let xdp: &mut Xdp = prog_mut(&mut self.ebpf, abi::PROG_XDP)?;
        let generic = |xdp: &mut Xdp| {
            xdp.attach(name, XdpMode::Skb)
                .map_err(prog_err(format!("attaching XDP (generic) to {name}")))
        };
        Ok(match (mode, xdp_attach) {
            (IfaceMode::Tc, _) => (Hook::Tc, Vec::new()),
            (IfaceMode::NativeXdpElseTc, _) => match xdp.attach(name, XdpMode::Driver) {
                Ok(id) => (Hook::XdpNative, vec![id]),
                Err(e) => {
                    // The one decision the plan cannot take: only the
                    // attach shows whether the driver has native XDP.
                    log::info!("{name}: no native XDP ({e}); using TC (mode auto)");
                    self.mark_tc_only(ifindex, role)?;
                    (Hook::Tc, Vec::new())
                }
            },
            (IfaceMode::Xdp, XdpAttach::Generic) => (Hook::XdpGeneric, vec![generic(xdp)?]),
            (IfaceMode::Xdp, XdpAttach::Native) => {
                let id = xdp
                    .attach(name, XdpMode::Driver)
                    .map_err(prog_err(format!("attaching XDP (native) to {name}")))?;
                (Hook::XdpNative, vec![id])
            }
            (IfaceMode::Xdp, XdpAttach::NativeElseGeneric) => {
                match xdp.attach(name, XdpMode::Driver) {
                    Ok(id) => (Hook::XdpNative, vec![id]),
                    Err(e) => {
                        log::warn!(
                            "{name}: native XDP failed ({e}); falling back to generic XDP, which is much slower (consider --mode tc)"
                        );
                        (Hook::XdpGeneric, vec![generic(xdp)?])
                    }
                }
            }
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
    pub(super) fn pin_tails(&mut self, pins: &Pins) -> Result<()> {
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
}
