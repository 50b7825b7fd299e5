//! `forwarder check`: what a gateway needs before `forwarder run`, each
//! item OK / WARN / FAIL with what to do.

use std::{fmt, path::Path, process::Command};

use crate::{
    datapath::{Datapath, VERIFIER_BUDGET, XdpAttach},
    iface,
    plan::System,
    settings::{ConntrackSettings, Mode, Settings},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "OK  ",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Item {
    pub level: Level,
    pub what: String,
    /// What to do about it (empty when OK).
    pub fix: String,
}

fn item(level: Level, what: impl Into<String>, fix: impl Into<String>) -> Item {
    Item { level, what: what.into(), fix: fix.into() }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Kernel version as (major, minor).
fn kernel() -> Option<(u32, u32)> {
    let r = read("/proc/sys/kernel/osrelease")?;
    let mut it =
        r.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().ok());
    Some((it.next()??, it.next()??))
}

/// Runs all checks for these interfaces.
pub fn run(public: &[String], internal: &[String]) -> Vec<Item> {
    let mut out = Vec::new();
    kernel_and_bpf(&mut out);
    datapath(&mut out);
    system(&mut out);
    interfaces(&mut out, public, internal);
    out
}

/// The kernel, its JIT and BTF.
fn kernel_and_bpf(out: &mut Vec<Item>) {
    match kernel() {
        Some(v) if v >= (6, 7) => out.push(item(Level::Ok, format!("kernel {}.{} (bpf_fib_lookup source selection needs 6.7)", v.0, v.1), "")),
        Some(v) => out.push(item(Level::Fail, format!("kernel {}.{} is older than 6.7", v.0, v.1), "masquerade takes its source address from BPF_FIB_LOOKUP_SRC (6.7+): upgrade the kernel")),
        None => out.push(item(Level::Warn, "kernel version unreadable", "check /proc/sys/kernel/osrelease")),
    }
    match read("/proc/sys/net/core/bpf_jit_enable").as_deref() {
        Some("0") => out.push(item(
            Level::Warn,
            "BPF JIT disabled",
            "sysctl -w net.core.bpf_jit_enable=1 (interpreted BPF is several times slower)",
        )),
        _ => out.push(item(Level::Ok, "BPF JIT enabled", "")),
    }
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        out.push(item(Level::Ok, "kernel BTF present", ""));
    } else {
        out.push(item(
            Level::Warn,
            "no kernel BTF (/sys/kernel/btf/vmlinux)",
            "not needed today; bpftool's views are poorer without it",
        ));
    }
}

/// Whether the datapath loads, and how close each program is to the
/// verifier's budget.
fn datapath(out: &mut Vec<Item>) {
    match Datapath::load(1024) {
        Ok(dp) => {
            out.push(item(Level::Ok, "datapath loads (verifier accepts all programs)", ""));
            for (name, n) in dp.verified_insns() {
                if let Some(n) = n {
                    // Not a gateway problem, but the first thing to know
                    // when a kernel upgrade or a new feature nears the limit.
                    let level = if n > VERIFIER_BUDGET / 10 * 9 { Level::Warn } else { Level::Ok };
                    let fix = if level == Level::Warn {
                        "the program is close to the verifier's limit: a newer kernel may refuse it; report it"
                    } else {
                        ""
                    };
                    out.push(item(
                        level,
                        format!("{name}: verifier processed {n} of {VERIFIER_BUDGET} instructions"),
                        fix,
                    ));
                }
            }
        }
        Err(e) => out.push(item(
            Level::Fail,
            format!("datapath does not load: {e}"),
            "run as root on a kernel with BPF; the message says what the verifier refused",
        )),
    }
}

/// bpffs, forwarding, firewall managers.
fn system(out: &mut Vec<Item>) {
    // bpffs: where `--pin-dir` keeps the datapath across restarts.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let bpffs: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .get(1..3)
                .filter(|f| f[1] == "bpf")
                .map(|f| f[0])
        })
        .collect();
    if bpffs.contains(&"/sys/fs/bpf") {
        out.push(item(
            Level::Ok,
            "bpffs mounted on /sys/fs/bpf (for --pin-dir /sys/fs/bpf/forwarder: hitless restarts)",
            "",
        ));
    } else {
        out.push(item(
            Level::Warn,
            "no bpffs on /sys/fs/bpf",
            "mount -t bpf bpf /sys/fs/bpf (systemd does at boot); `forwarder run --pin-dir` mounts one itself, but one mounted inside `ip netns exec` dies with the daemon",
        ));
    }
    match read("/proc/sys/net/ipv4/ip_forward").as_deref() {
        Some("1") => out.push(item(Level::Ok, "net.ipv4.ip_forward=1", "")),
        _ => out.push(item(Level::Warn, "net.ipv4.ip_forward=0", "`forwarder run` enables it (and restores it at exit unless --keep-ip-forward); to persist: net.ipv4.ip_forward=1 in /etc/sysctl.d/")),
    }
    for fw in ["firewalld", "ufw"] {
        let active = Command::new("systemctl")
            .args(["is-active", "--quiet", fw])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if active {
            out.push(item(Level::Warn, format!("{fw} is active"), "it does not see forwarded flows (they bypass netfilter); keep its rules from fighting the forwarder's ports"));
        }
    }
}

/// Each interface: exists, no other XDP program, native XDP, XDP
/// transmission, `rp_filter`; the MTUs against each other.
fn interfaces(out: &mut Vec<Item>, public: &[String], internal: &[String]) {
    let mut mtus = Vec::new();
    let mut netdev = crate::netdev::Netdev::open().map_err(|e| e.to_string());
    for (name, role) in
        public.iter().map(|n| (n, "public")).chain(internal.iter().map(|n| (n, "internal")))
    {
        let Ok(idx) = iface::index(name) else {
            out.push(item(
                Level::Fail,
                format!("{role} interface `{name}` does not exist"),
                "see `ip link`",
            ));
            continue;
        };
        if let Some(m) =
            read(&format!("/sys/class/net/{name}/mtu")).and_then(|m| m.parse::<u32>().ok())
        {
            mtus.push((name.clone(), m));
        }
        let link = Command::new("ip")
            .args(["-d", "link", "show", "dev", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if link.contains(" xdp") || link.contains("prog/xdp") {
            out.push(item(
                Level::Warn,
                format!("{name}: another XDP program is attached"),
                "detach it (ip link set dev IFACE xdp off) or `forwarder run` cannot attach",
            ));
            continue;
        }
        match try_native_xdp(name) {
            Ok(()) => match iface::driver(name) {
                Some(d) if iface::prefers_tc(&d) => out.push(item(
                    Level::Ok,
                    format!("{name} (ifindex {idx}, {role}, {d}): native XDP works; --mode auto picks TC here"),
                    "XDP on a veth turns off TSO on its peer: TCP bulk is faster in TC, small packets in XDP",
                )),
                _ => out.push(item(Level::Ok, format!("{name} (ifindex {idx}, {role}): native XDP works"), "")),
            },
            Err(e) => out.push(item(Level::Warn, format!("{name} ({role}): no native XDP ({e})"), "use --mode tc (or auto) for this interface; generic XDP is slower than TC")),
        }
        out.push(xdp_transmit(&mut netdev, name, idx));
        let rp = read(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"));
        if rp.as_deref() == Some("1") {
            out.push(item(
                Level::Ok,
                format!("{name}: rp_filter strict (translated traffic bypasses it)"),
                "",
            ));
        }
    }
    if let (Some(min), Some(max)) =
        (mtus.iter().min_by_key(|m| m.1), mtus.iter().max_by_key(|m| m.1))
    {
        if min.1 == max.1 {
            out.push(item(Level::Ok, format!("MTU {} on every interface", min.1), ""));
        } else {
            out.push(item(
                Level::Warn,
                format!("MTU mismatch: {} has {}, {} has {}", max.0, max.1, min.0, min.1),
                "DF packets too big get \"fragmentation needed\" from the forwarder; packets without DF are dropped (it does not fragment)",
            ));
        }
    }
}

/// Whether XDP can transmit into `name`: its XDP features say so (a veth
/// only while its peer has an XDP program or GRO on).
fn xdp_transmit(
    netdev: &mut Result<crate::netdev::Netdev, String>,
    name: &str,
    ifindex: u32,
) -> Item {
    let features = match netdev {
        Ok(n) => n.xdp_features(ifindex).map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let veth = iface::driver(name).is_some_and(|d| iface::prefers_tc(&d));
    match features {
        Ok(Some(f)) if crate::netdev::takes_xdp_frames(f) => item(
            Level::Ok,
            format!("{name}: takes redirected XDP frames (XDP transmits into it)"),
            "",
        ),
        Ok(Some(_)) if veth => item(
            Level::Ok,
            format!(
                "{name}: takes no redirected XDP frames (its veth peer has no XDP program and GRO off); where XDP runs, packets towards {name} go through TC"
            ),
            format!(
                "for XDP speed towards {name}: `ethtool -K PEER gro on` on its peer (in the peer's namespace)"
            ),
        ),
        Ok(Some(_)) => item(
            Level::Warn,
            format!(
                "{name}: takes no redirected XDP frames (its driver has no XDP transmit now); packets towards it go through TC"
            ),
            "nothing is lost, but XDP's speed needs a driver that takes redirected frames (see its documentation)",
        ),
        Ok(None) => item(
            Level::Warn,
            format!("{name}: the kernel does not report XDP features (before 6.3)"),
            "the forwarder tries XDP towards it and watches the kernel's refusals",
        ),
        Err(e) => item(
            Level::Warn,
            format!("{name}: XDP features unreadable ({e})"),
            "the forwarder tries XDP towards it and watches the kernel's refusals",
        ),
    }
}

/// Attaches the XDP program natively and detaches it again: the plan of
/// a gateway with `name` as its one public interface in XDP mode.
fn try_native_xdp(name: &str) -> Result<(), String> {
    let settings = Settings {
        public: vec![name.to_string()],
        mode: Mode::Xdp,
        conntrack: ConntrackSettings { max_connections: 1024, ..ConntrackSettings::default() },
        ..Settings::default()
    };
    let plan = settings.compile(&System).map_err(|e| e.to_string())?;
    let mut dp = Datapath::load(plan.conntrack.max_connections).map_err(|e| e.to_string())?;
    dp.attach(&plan, XdpAttach::Native).map_err(|e| e.to_string())
    // dropped here: detached
}
