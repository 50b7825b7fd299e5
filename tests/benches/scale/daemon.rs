//! Rule changes with many rules (10 000 in a full run, and one UDP echo
//! rule), on the lab's gateway, for the forwarder and for the netfilter
//! recipe in iptables and in nftables, one after the other: the whole
//! configuration loaded, a rule added and removed (`forwarder rule add` /
//! `del`, `iptables -t nat -A` / `-D`, `nft add rule` / `delete rule
//! handle`), and the whole configuration reloaded (SIGHUP, from the
//! signal until the daemon logs it done; `iptables-restore`; `nft -f`
//! with `flush ruleset`). Each command's whole time, process start
//! included (the netfilter tools run directly in the gateway's namespace,
//! as the forwarder's CLI runs directly on its socket). Meanwhile a client
//! sends a numbered datagram every millisecond through the echo rule:
//! lost ones must be 0, every change replaces the tables at once.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use forwarder::settings::{Proto, Rule, Settings};
use forwarder_testkit::{
    ADDRS, BpfFs, Forwarder, GW_INTERNAL_IF, GW_PUBLIC_IF, Lab, proc::forwarder_bin,
};
use serde_json::json;

/// The echo rule's public port (and the backend's).
const ECHO: u16 = 5353;
/// One datagram per this interval.
const EVERY: Duration = Duration::from_millis(1);
/// The first public port of the rules added and removed.
const ADDED: u16 = 60_000;

/// Datagrams sent and answered, numbered: the sender and the receiver.
struct Probe {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u32>,
    receiver: std::thread::JoinHandle<Vec<bool>>,
    echo: std::thread::JoinHandle<()>,
}

impl Probe {
    /// An echo server on the backend and a client sending to the public
    /// port, from now until [`Probe::finish`].
    fn start(lab: &Lab) -> Self {
        let server = lab
            .server
            .enter(|| UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], ECHO))).unwrap())
            .unwrap()
            .join()
            .unwrap();
        server.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let echo = std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while let Ok((k, from)) = server.recv_from(&mut b) {
                let _ = server.send_to(&b[..k], from);
            }
        });
        let client = lab
            .client
            .enter(|| {
                let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).unwrap();
                s.connect(SocketAddr::from((ADDRS.gw_public, ECHO))).unwrap();
                s
            })
            .unwrap()
            .join()
            .unwrap();
        client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let rx = client.try_clone().unwrap();
        let done = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut b = [0u8; 64];
            // Until the sender stopped and a second passed without an answer.
            let mut idle = 0;
            while idle < 10 {
                match rx.recv(&mut b) {
                    Ok(4) => {
                        idle = 0;
                        let i = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
                        if seen.len() <= i {
                            seen.resize(i + 1, false);
                        }
                        seen[i] = true;
                    }
                    Ok(_) => {}
                    Err(_) => idle += usize::from(done.load(Ordering::Relaxed)),
                }
            }
            seen
        });
        let done = stop.clone();
        let sender = std::thread::spawn(move || {
            let (t0, mut i) = (Instant::now(), 0u32);
            while !done.load(Ordering::Relaxed) {
                // A send refused (no buffer) is a datagram lost like any other.
                let _ = client.send(&i.to_be_bytes());
                i += 1;
                std::thread::sleep((t0 + EVERY * i).saturating_duration_since(Instant::now()));
            }
            i
        });
        Self { stop, sender, receiver, echo }
    }

    /// Stops sending; (sent, the sequence numbers never answered).
    fn finish(self) -> (u32, Vec<u32>) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().unwrap();
        let seen = self.receiver.join().unwrap();
        let _ = self.echo.join();
        (sent, (0..sent).filter(|&i| !seen.get(i as usize).copied().unwrap_or(false)).collect())
    }
}

/// What one system's run measured.
struct Changes {
    load: Duration,
    adds: Vec<Duration>,
    dels: Vec<Duration>,
    reloads: Vec<Duration>,
    sent: u32,
    lost: Vec<u32>,
}

/// How one system is changed: each a command's time (the add also says
/// the handle the delete needs).
trait System {
    fn load(&mut self, lab: &Lab) -> Duration;
    fn add(&mut self, lab: &Lab, port: u16) -> (Duration, String);
    fn del(&mut self, lab: &Lab, port: u16, handle: &str) -> Duration;
    fn reload(&mut self, lab: &Lab) -> Duration;
    fn unload(&mut self, lab: &Lab);
}

/// Loads `sys`, then (with the probe running) `changes` additions and
/// removals and `reloads` reloads.
fn measure(lab: &Lab, sys: &mut dyn System, changes: usize, reloads: usize) -> Changes {
    let load = sys.load(lab);
    let probe = Probe::start(lab);
    std::thread::sleep(Duration::from_millis(300));
    let (mut adds, mut dels) = (vec![], vec![]);
    for i in 0..changes {
        let port = ADDED + u16::try_from(i).unwrap();
        let (took, handle) = sys.add(lab, port);
        adds.push(took);
        dels.push(sys.del(lab, port, &handle));
    }
    let reloads = (0..reloads).map(|_| sys.reload(lab)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (sent, lost) = probe.finish();
    sys.unload(lab);
    Changes { load, adds, dels, reloads, sent, lost }
}

/// `program args…` run directly in the gateway's namespace (from a
/// thread in it); its time and standard output. It must succeed.
fn in_gateway(lab: &Lab, program: &str, args: &[&str]) -> (Duration, String) {
    let (program, args) =
        (program.to_string(), args.iter().map(ToString::to_string).collect::<Vec<_>>());
    lab.gateway
        .enter(move || {
            let t0 = Instant::now();
            let out = std::process::Command::new(&program).args(&args).output().unwrap();
            let took = t0.elapsed();
            assert!(
                out.status.success(),
                "{program} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (took, String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .unwrap()
        .join()
        .unwrap()
}

/// The forwarder daemon with `--config` and `--pin-dir`, changed by its
/// CLI and SIGHUP.
struct Daemon {
    settings: Settings,
    bpf: Option<BpfFs>,
    fwd: Option<Forwarder>,
    /// The reload times the daemon logs for itself.
    logged: Vec<Duration>,
    /// The rule changes' times the daemon logs for itself (made in the
    /// running tables).
    changes_logged: Vec<Duration>,
}

impl Daemon {
    /// The times the daemon logged for its rule changes in place so far.
    fn note_change(&mut self) {
        let fwd = self.fwd.as_ref().unwrap();
        self.changes_logged = fwd
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("rule change made in the running tables"))
            .filter_map(|l| logged_ms(l))
            .collect();
    }

    fn cli(lab: &Lab, args: &[&str]) -> (Duration, String) {
        let t0 = Instant::now();
        let out = std::process::Command::new(forwarder_bin().unwrap())
            .args(args)
            .arg("--control")
            .arg(lab.dir.join("control.sock"))
            .output()
            .unwrap();
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "forwarder {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (took, text)
    }
}

impl System for Daemon {
    fn load(&mut self, lab: &Lab) -> Duration {
        let bpf = BpfFs::mount(lab.dir.join("bpf-daemon")).expect("bpffs");
        let cfg = lab.dir.join("forwarder.toml");
        std::fs::write(&cfg, self.settings.to_toml().unwrap()).unwrap();
        let t0 = Instant::now();
        self.fwd = Some(
            lab.start_forwarder_with(&["--config", cfg.to_str().unwrap(), "--pin-dir", bpf.arg()])
                .expect("the daemon starts"),
        );
        self.bpf = Some(bpf);
        t0.elapsed()
    }

    fn add(&mut self, lab: &Lab, port: u16) -> (Duration, String) {
        let spec = format!("tcp:{port}=192.168.1.50:80");
        let (took, text) = Self::cli(lab, &["rule", "add", &spec, "--json"]);
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        let handle = answer["handle"].as_u64().unwrap_or_else(|| panic!("no handle in {text}"));
        self.note_change();
        (took, handle.to_string())
    }

    fn del(&mut self, lab: &Lab, _: u16, handle: &str) -> Duration {
        let took = Self::cli(lab, &["rule", "del", handle]).0;
        self.note_change();
        took
    }

    fn reload(&mut self, _: &Lab) -> Duration {
        let fwd = self.fwd.as_ref().unwrap();
        let before = fwd.log.lock().unwrap().len();
        let t0 = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(fwd.proc.pid().cast_signed(), libc::SIGHUP) };
        loop {
            let line = fwd.log.lock().unwrap()[before..]
                .iter()
                .find(|l| l.contains("SIGHUP: reload"))
                .cloned();
            if let Some(line) = line {
                let took = t0.elapsed();
                assert!(line.contains("SIGHUP: reloaded"), "the reload failed: {line}");
                self.logged.push(logged_ms(&line).expect("the reload's time in its log line"));
                return took;
            }
            assert!(t0.elapsed() < Duration::from_mins(2), "no reload within 2 minutes");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn unload(&mut self, lab: &Lab) {
        let log = self.fwd.take().unwrap().stop().unwrap_or_else(|e| format!("{e:#}"));
        assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
        self.bpf = None;
        let _ = std::fs::remove_file(lab.dir.join("forwarder.toml"));
    }
}

/// `… in N ms …` of a log line (the first ` in ` a number follows).
fn logged_ms(line: &str) -> Option<Duration> {
    line.match_indices(" in ").find_map(|(at, _)| {
        let ms: f64 = line[at + 4..].split(" ms").next()?.parse().ok()?;
        Some(Duration::from_secs_f64(ms / 1e3))
    })
}

/// The netfilter recipe of the same rules: a DNAT rule per rule (a port
/// range as a range, a source list as `-s`/`ip saddr`), a stateful
/// FORWARD accept and MASQUERADE towards the backends.
struct Netfilter {
    rules: Vec<Rule>,
    nft: bool,
}

impl Netfilter {
    /// The DNAT rule of `r`, as iptables arguments after `-A PREROUTING`
    /// or as an nftables rule.
    fn dnat(&self, r: &Rule) -> String {
        let proto = match r.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let b = &r.backends[0];
        let to =
            if b.ports == r.ports { b.addr.to_string() } else { format!("{}:{}", b.addr, b.ports) };
        let sources: Vec<String> = r.sources.iter().map(ToString::to_string).collect();
        let (lo, hi) = (r.ports.lo, r.ports.hi);
        if self.nft {
            let ports = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
            let src = if sources.is_empty() {
                String::new()
            } else {
                format!("ip saddr {{ {} }} ", sources.join(", "))
            };
            format!("iifname \"{GW_PUBLIC_IF}\" {src}{proto} dport {ports} dnat to {to}")
        } else {
            let ports = if lo == hi { lo.to_string() } else { format!("{lo}:{hi}") };
            let src = if sources.is_empty() {
                String::new()
            } else {
                format!("-s {} ", sources.join(","))
            };
            format!(
                "-p {proto} -i {GW_PUBLIC_IF} {src}--dport {ports} -j DNAT --to-destination {to}"
            )
        }
    }

    /// The whole ruleset, as `iptables-restore` or `nft -f` reads it.
    fn ruleset(&self) -> String {
        let mut s = String::new();
        if self.nft {
            s.push_str("flush ruleset\ntable ip fwdbench {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n");
            for r in &self.rules {
                let _ = writeln!(s, "    {}", self.dnat(r));
            }
            let _ = write!(
                s,
                "  }}\n  chain forward {{\n    type filter hook forward priority filter;\n    ct state new,established,related accept\n  }}\n  \
                 chain postrouting {{\n    type nat hook postrouting priority srcnat;\n    oifname \"{GW_INTERNAL_IF}\" masquerade\n  }}\n}}\n"
            );
        } else {
            s.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
            for r in &self.rules {
                let _ = writeln!(s, "-A PREROUTING {}", self.dnat(r));
            }
            let _ = write!(
                s,
                "-A POSTROUTING -o {GW_INTERNAL_IF} -j MASQUERADE\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                 -A FORWARD -m state --state NEW,ESTABLISHED,RELATED -j ACCEPT\nCOMMIT\n"
            );
        }
        s
    }

    fn added(port: u16) -> Rule {
        Rule::parse_spec(&format!("tcp:{port}=192.168.1.50:80")).unwrap()
    }
}

impl System for Netfilter {
    fn load(&mut self, lab: &Lab) -> Duration {
        self.reload(lab)
    }

    fn add(&mut self, lab: &Lab, port: u16) -> (Duration, String) {
        let rule = self.dnat(&Self::added(port));
        if self.nft {
            let cmd = format!("add rule ip fwdbench prerouting {rule}");
            let (took, echo) = in_gateway(lab, "nft", &["-e", "-a", &cmd]);
            let handle = echo
                .split_once("# handle ")
                .and_then(|(_, h)| h.split_whitespace().next())
                .filter(|h| h.parse::<u32>().is_ok())
                .unwrap_or_else(|| panic!("no handle in {echo:?}"));
            (took, handle.to_string())
        } else {
            let mut args = vec!["-t", "nat", "-A", "PREROUTING"];
            args.extend(rule.split(' '));
            (in_gateway(lab, "iptables", &args).0, String::new())
        }
    }

    fn del(&mut self, lab: &Lab, port: u16, handle: &str) -> Duration {
        if self.nft {
            in_gateway(
                lab,
                "nft",
                &["delete", "rule", "ip", "fwdbench", "prerouting", "handle", handle],
            )
            .0
        } else {
            let rule = self.dnat(&Self::added(port));
            let mut args = vec!["-t", "nat", "-D", "PREROUTING"];
            args.extend(rule.split(' '));
            in_gateway(lab, "iptables", &args).0
        }
    }

    fn reload(&mut self, lab: &Lab) -> Duration {
        let path = lab.dir.join(if self.nft { "rules.nft" } else { "rules.v4" });
        std::fs::write(&path, self.ruleset()).unwrap();
        let path = path.to_str().unwrap().to_string();
        if self.nft {
            in_gateway(lab, "nft", &["-f", &path]).0
        } else {
            in_gateway(lab, "iptables-restore", &[&path]).0
        }
    }

    fn unload(&mut self, lab: &Lab) {
        if self.nft {
            in_gateway(lab, "nft", &["flush", "ruleset"]);
        } else {
            for table in ["nat", "filter"] {
                in_gateway(lab, "iptables", &["-t", table, "-F"]);
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median and the largest of `v`, in ms.
fn summary(v: &[Duration]) -> serde_json::Value {
    let mut s: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
    s.sort_by(f64::total_cmp);
    json!({"median_ms": s[s.len() / 2], "max_ms": s[s.len() - 1], "samples_ms": s})
}

/// Runs the part with `settings`' rules and the echo rule, `changes`
/// rule additions and removals and `reloads` reloads per system; prints
/// a table and returns it as JSON (`lossless`: no system lost a
/// datagram).
pub fn run(lab: &Lab, mut settings: Settings, changes: usize, reloads: usize) -> serde_json::Value {
    settings.rules.push(Rule::parse_spec(&format!("udp:{ECHO}=192.168.1.50:{ECHO}")).unwrap());
    settings.assign_handles(None).unwrap();
    settings.conntrack.max_connections = 1 << 16;
    let all = settings.rules.len();
    let rules = settings.rules.clone();
    let mut daemon =
        Daemon { settings, bpf: None, fwd: None, logged: vec![], changes_logged: vec![] };
    let fwd = measure(lab, &mut daemon, changes, reloads);
    let ipt = measure(lab, &mut Netfilter { rules: rules.clone(), nft: false }, changes, reloads);
    let nft = measure(lab, &mut Netfilter { rules, nft: true }, changes, reloads);
    println!(
        "\nrule changes with {all} rules (one of them the probe's UDP echo); ms, median (largest)"
    );
    println!(
        "{:<24} {:>10} {:>16} {:>16} {:>16} {:>24}",
        "", "load", "add a rule", "remove it", "reload all", "probe: sent, lost"
    );
    let mut json = serde_json::Map::new();
    let mut lossless = true;
    for (name, c) in [("forwarder", &fwd), ("iptables (nf_tables)", &ipt), ("nftables", &nft)] {
        let cell = |v: &[Duration]| {
            let j = summary(v);
            format!(
                "{:.0} ({:.0})",
                j["median_ms"].as_f64().unwrap(),
                j["max_ms"].as_f64().unwrap()
            )
        };
        println!(
            "{name:<24} {:>10.0} {:>16} {:>16} {:>16} {:>24}",
            ms(c.load),
            cell(&c.adds),
            cell(&c.dels),
            cell(&c.reloads),
            format!("{}, {}", c.sent, c.lost.len())
        );
        if !c.lost.is_empty() {
            println!("  {name} lost datagrams {:?}: FAILED", &c.lost[..c.lost.len().min(20)]);
        }
        lossless &= c.lost.is_empty();
        json.insert(
            name.into(),
            json!({
                "load_ms": ms(c.load), "rule_add": summary(&c.adds), "rule_del": summary(&c.dels),
                "reload": summary(&c.reloads),
                "probe": {"interval_ms": ms(EVERY), "sent": c.sent, "lost": c.lost.len()},
            }),
        );
    }
    println!(
        "forwarder reload as the daemon times it: {} (the rest is the signal's and the log's way)",
        summary(&daemon.logged)["median_ms"]
            .as_f64()
            .map_or_else(String::new, |m| format!("{m:.0} ms median"))
    );
    json.insert("forwarder_reload_as_logged".into(), summary(&daemon.logged));
    println!(
        "forwarder rule changes made in the running tables: {} of {}, {} as the daemon times them (the rest is the CLI's start and the control socket's way)",
        daemon.changes_logged.len(),
        fwd.adds.len() + fwd.dels.len(),
        summary(&daemon.changes_logged)["median_ms"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |m| format!("{m:.1} ms median"))
    );
    json.insert("forwarder_change_as_logged".into(), summary(&daemon.changes_logged));
    json.insert("rules".into(), json!(all));
    json.insert("lossless".into(), json!(lossless));
    serde_json::Value::Object(json)
}
