//! The soak run (`cargo xtask soak [--minutes N]`, default 5; not part of
//! CI): the forwarder as users get it (default mode, on a lab at the
//! kernel's defaults unless `--tuned`), under everything at once for N
//! minutes:
//!
//! - TCP clients, each connection a transfer of a random size whose
//!   SHA-256 the backend sends back, and a few long-lived connections that
//!   exchange checked chunks the whole time;
//! - UDP clients whose datagrams come back echoed, checked byte for byte;
//! - a rule added or removed every second (`forwarder rule add|del`), the
//!   added one used at once;
//! - the daemon killed with SIGKILL every minute and started again on the
//!   same pins (it adopts the connection table);
//! - a burst of 3000 spoofed SYNs every 20 s.
//!
//! At the end it checks: every transfer's hash matched and none failed;
//! the conntrack table is back to its baseline once the (short) timeouts
//! have passed; no daemon's RSS grew by more than 10 % after its warm-up;
//! no drop counter that must stay 0 grew. It prints a summary and exits
//! non-zero on any failed check.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use forwarder_testkit::{
    BpfFs, Forwarder, Lab,
    flood::{Rng, Sources, syn_flood},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use traffic::{Tally, backend, long_lived, public, transfer, udp_client};

mod traffic;

/// Counters that must not grow under this load: every one of them is a
/// packet of a real client lost, or a fault.
const MUST_STAY_ZERO: [&str; 11] = [
    "drop_rewrite_failed",
    "drop_ttl",
    "drop_snat_exhausted",
    "drop_no_src_addr",
    "drop_redirect_failed",
    "drop_src_denied",
    "table_full_refused",
    "drop_too_big",
    "drop_new_conn_rate",
    "pass_malformed",
    "audit_ring_full",
];

struct Daemon {
    fwd: Forwarder,
    started: Instant,
    /// RSS (kB) after warm-up, and the latest.
    rss_warm: Option<u64>,
    rss_last: u64,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn cli(lab: &Lab, args: &[&str]) -> Result<String> {
    let bin = forwarder_testkit::proc::forwarder_bin()?;
    let out = std::process::Command::new(&bin)
        .args(args)
        .arg("--control")
        .arg(lab.dir.join("control.sock"))
        .output()?;
    ensure!(
        out.status.success(),
        "forwarder {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[expect(clippy::too_many_lines, reason = "the soak's one timeline, read top to bottom")]
fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let minutes: u64 = argv
        .iter()
        .position(|a| a == "--minutes")
        .and_then(|i| argv.get(i + 1))
        .map_or(Ok(5), |m| m.parse())
        .context("--minutes N")?;
    let tuned = argv.iter().any(|a| a == "--tuned");
    let run_for = Duration::from_secs(minutes * 60);
    let lab = Lab::with_tuning(tuned)?;
    let pins = BpfFs::mount(lab.dir.join("bpf"))?;
    let pin = pins.arg().to_string();
    // Short timeouts, so that the table is back to its baseline soon
    // after the load stops.
    let run_args: Vec<String> = [
        "--public",
        "pub0",
        "--internal",
        "int0",
        "--rule",
        "tcp:8080=192.168.1.50:80",
        "--rule",
        "udp:5353=192.168.1.50:53",
        "--pin-dir",
        &pin,
        "--conntrack-max",
        "20000",
        "--ct-timeout",
        "tcp_syn=10",
        "--ct-timeout",
        "tcp_syn_recv=5",
        "--ct-timeout",
        "tcp_fin=5",
        "--ct-timeout",
        "tcp_close=3",
        "--ct-timeout",
        "udp=5",
        "--ct-timeout",
        "udp_stream=10",
        "--audit-rate",
        "100",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let start = || -> Result<Daemon> {
        let a: Vec<&str> = run_args.iter().map(String::as_str).collect();
        let fwd = lab.start_forwarder_with(&a)?;
        Ok(Daemon { fwd, started: Instant::now(), rss_warm: None, rss_last: 0 })
    };
    let mut daemon = start()?;
    let stop = Arc::new(AtomicBool::new(false));
    // The backend stops only after the clients have (else their last
    // transfers meet a closed listener).
    let backend_stop = Arc::new(AtomicBool::new(false));
    backend(&lab, backend_stop.clone())?;
    let baseline = {
        let v: Value = serde_json::from_str(&cli(&lab, &["stats", "--json"])?)?;
        v["connections"].as_u64().unwrap_or(0) * 2
    };
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let (t, stop) = (tally.clone(), stop.clone());
        workers.push(lab.client.enter(move || {
            let mut rng = Rng(0x50a6 + w);
            while !stop.load(Ordering::Relaxed) {
                transfer(&mut rng, &t);
            }
        })?);
    }
    for w in 0..2u64 {
        let (t, stop) = (tally.clone(), stop.clone());
        workers.push(lab.client.enter(move || {
            let mut rng = Rng(0x0d9 + w);
            while !stop.load(Ordering::Relaxed) {
                udp_client(&mut rng, &t);
            }
        })?);
    }
    for w in 0..3u64 {
        let (t, stop) = (tally.clone(), stop.clone());
        workers.push(lab.client.enter(move || long_lived(0x1099 + w, &t, &stop))?);
    }
    let t0 = Instant::now();
    *tally.t0.lock().expect("t0") = Some(t0);
    let mut rss: Vec<(u64, u64)> = Vec::new();
    let mut added = false;
    let mut added_handle = 0u64;
    let (mut next_change, mut next_flood, mut next_restart) = (1.0, 20.0, 60.0);
    while t0.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(100));
        let now = t0.elapsed().as_secs_f64();
        // A rule change every second (or at once, when one took longer:
        // each change loads and verifies a whole datapath): add, use it,
        // remove.
        if now >= next_change {
            next_change = now + 1.0;
            tally.event(if added { "rule del" } else { "rule add" });
            let r = if added {
                cli(&lab, &["rule", "del", &added_handle.to_string()])
            } else {
                cli(&lab, &["rule", "add", "tcp:9090=192.168.1.50:80", "--json"])
            };
            match r {
                Ok(out) => {
                    if !added {
                        // The daemon answers `{"handle":N}`: the rule to delete next.
                        added_handle = serde_json::from_str::<Value>(&out)
                            .ok()
                            .and_then(|v| v["handle"].as_u64())
                            .unwrap_or(0);
                    }
                    tally.rule_changes.fetch_add(1, Ordering::Relaxed);
                    if !added {
                        let ok = lab
                            .client
                            .enter(|| {
                                TcpStream::connect_timeout(&public(9090), Duration::from_secs(2))
                                    .and_then(|mut s| {
                                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                                        s.write_all(&4u32.to_be_bytes())?;
                                        s.write_all(b"rule")?;
                                        let mut back = [0u8; 32];
                                        s.read_exact(&mut back)?;
                                        Ok(back[..] == Sha256::digest(b"rule")[..])
                                    })
                            })?
                            .join()
                            .map_err(|_| anyhow::anyhow!("rule check panicked"))?;
                        if !matches!(ok, Ok(true)) {
                            tally.rule_checks_failed.fetch_add(1, Ordering::Relaxed);
                            tally.error(format!(
                                "the rule just added did not carry a connection: {ok:?}"
                            ));
                        }
                    }
                    added = !added;
                }
                Err(e) => tally.error(format!("rule change: {e:#}")),
            }
        }
        // RSS: after 20 s of each daemon's life (warm-up), then the latest.
        let pid = daemon.fwd.proc.pid();
        daemon.rss_last = rss_kb(pid);
        if daemon.rss_warm.is_none() && daemon.started.elapsed() >= Duration::from_secs(20) {
            daemon.rss_warm = Some(daemon.rss_last);
        }
        if now >= next_flood {
            next_flood += 20.0;
            tally.event("SYN flood");
            syn_flood(
                &lab.client,
                3000,
                public(8080),
                Sources::Unroutable,
                tally.floods.load(Ordering::Relaxed) + 1,
            )?;
            tally.floods.fetch_add(1, Ordering::Relaxed);
        }
        // A SIGKILL and an adopting restart every minute.
        if now >= next_restart && now + 5.0 < run_for.as_secs_f64() {
            next_restart += 60.0;
            if let Some(w) = daemon.rss_warm {
                rss.push((w, daemon.rss_last));
            }
            tally.event("SIGKILL + restart");
            daemon.fwd.proc.child.kill()?;
            let _ = daemon.fwd.proc.child.wait();
            daemon = start()?;
            ensure!(
                daemon.fwd.log_text().contains("adopted the state maps"),
                "the restarted daemon did not adopt:\n{}",
                daemon.fwd.log_text()
            );
            tally.event("restarted");
            // The rule table is the configuration's again: 2 rules.
            added = false;
            tally.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }
    // The last daemon's RSS as the others': at the end of its load.
    if let Some(w) = daemon.rss_warm {
        rss.push((w, daemon.rss_last));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    backend_stop.store(true, Ordering::Relaxed);
    // Back to the baseline once the timeouts (at most 10 s) and a sweep
    // pass have gone by.
    let t1 = Instant::now();
    let entries = loop {
        let v: Value = serde_json::from_str(&cli(&lab, &["stats", "--json"])?)?;
        let e = v["connections"].as_u64().map_or(u64::MAX, |c| c * 2);
        if e <= baseline || t1.elapsed() > Duration::from_secs(40) {
            break e;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let settle = t1.elapsed();
    let stats: Value = serde_json::from_str(&cli(&lab, &["stats", "--json"])?)?;
    daemon.fwd.stop()?;
    let l = Ordering::Relaxed;
    println!(
        "soak: {minutes} min, {} lab, mode {}",
        if tuned { "tuned" } else { "untuned" },
        forwarder_testkit::test_mode()
    );
    println!(
        "  TCP transfers: {} ok ({} MB), {} failed, {} hash mismatches; long-lived: {} chunks echoed",
        tally.tcp_ok.load(l),
        tally.tcp_bytes.load(l) / 1_000_000,
        tally.tcp_failed.load(l),
        tally.hash_mismatch.load(l),
        tally.long_chunks.load(l)
    );
    println!(
        "  UDP datagrams: {} echoed intact, {} lost",
        tally.udp_ok.load(l),
        tally.udp_lost.load(l)
    );
    println!(
        "  rule changes: {} ({} added rules failed to carry a connection); SIGKILL + adopting restarts: {}; SYN floods: {} x 3000",
        tally.rule_changes.load(l),
        tally.rule_checks_failed.load(l),
        tally.restarts.load(l),
        tally.floods.load(l)
    );
    println!(
        "  conntrack entries: baseline {baseline}, after the load {entries} ({:.0} s after it stopped)",
        settle.as_secs_f64()
    );
    let rss_text: Vec<String> = rss.iter().map(|(w, e)| format!("{w}->{e} kB")).collect();
    println!("  daemon RSS (after warm-up -> at its end, per daemon): {}", rss_text.join(", "));
    let counters = &stats["counters"];
    let grown: Vec<String> = MUST_STAY_ZERO
        .iter()
        .filter(|c| counters[**c].as_u64().unwrap_or(0) > 0)
        .map(|c| format!("{c}={}", counters[*c]))
        .collect();
    let nonzero: Vec<String> = counters
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("  datapath counters: {}", nonzero.join(" "));
    println!("  daemon housekeeping failures: {}", stats["daemon_errors"]);
    let errors = tally.errors.lock().expect("errors");
    for e in errors.iter() {
        println!("  ! {e}");
    }
    if !errors.is_empty() {
        println!("  events: {}", tally.events.lock().expect("events").join(", "));
    }
    drop(errors);
    let mut failed = Vec::new();
    if tally.hash_mismatch.load(l) > 0 || tally.tcp_failed.load(l) > 0 {
        failed.push("TCP transfers failed or differed".to_string());
    }
    if tally.udp_lost.load(l) * 1000 > tally.udp_ok.load(l) {
        failed.push(format!("more than 0.1 % of UDP datagrams lost ({})", tally.udp_lost.load(l)));
    }
    if tally.rule_checks_failed.load(l) > 0 {
        failed.push("an added rule did not carry a connection".into());
    }
    if entries > baseline {
        failed.push(format!("conntrack not back to its baseline: {entries} > {baseline}"));
    }
    if let Some((w, e)) = rss.iter().find(|(w, e)| *e * 10 > *w * 11) {
        failed.push(format!("a daemon's RSS grew after warm-up: {w} -> {e} kB"));
    }
    if !grown.is_empty() {
        failed.push(format!("drop counters grew: {}", grown.join(" ")));
    }
    if tally.tcp_ok.load(l) < 100 || tally.restarts.load(l) + 1 < minutes {
        failed.push("too little happened to count".into());
    }
    if failed.is_empty() {
        println!("soak: all checks passed");
        Ok(())
    } else {
        bail!("soak failed: {}", failed.join("; "))
    }
}
