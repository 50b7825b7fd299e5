//! `cargo xtask lab`: the demo. A client — gateway — server lab, a real
//! HTTP server (python3 -m http.server) on the server, the forwarder on the
//! gateway with the classic mapping (public :8080 → 192.168.1.50:80,
//! masquerade), real requests with curl from the client; prints what the
//! client got, which source address the server saw, and the rule counters.
//! Everything is removed at the end, on failure, and on Ctrl-C.

use std::{
    path::Path,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use forwarder_testkit::{GW_INTERNAL_IF, GW_PUBLIC_IF, Host, Lab};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(bin: &Path, requests: u32) -> Result<()> {
    // Ctrl-C: our children die of it, we do not, so the lab's Drop runs.
    // SAFETY: installing an async-signal-safe handler (an atomic store).
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
    // SAFETY: setenv before any thread is started here.
    unsafe { std::env::set_var("FORWARDER_BIN", bin) };
    let mut lab = Lab::new()?;
    let a = lab.addrs;
    println!("== lab {}", lab.id);
    println!("   client  {}            (netns {})", a.client, lab.client.name);
    println!(
        "   gateway {} | {}  (netns {}, {GW_PUBLIC_IF} | {GW_INTERNAL_IF})",
        a.gw_public, a.gw_internal, lab.gateway.name
    );
    println!(
        "   server  {}           (netns {}, no route back to the client)",
        a.server, lab.server.name
    );
    let result = demo(&mut lab, requests);
    println!("== cleaning up lab {}", lab.id);
    drop(lab);
    result
}

fn demo(lab: &mut Lab, requests: u32) -> Result<()> {
    let a = lab.addrs;
    let www = lab.dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), format!("hello from the backend {}\n", a.server))?;
    let http_log = lab.dir.join("http.log");
    let log = std::fs::File::create(&http_log)?;
    let mut cmd = lab.server.command("python3");
    cmd.args(["-m", "http.server", "80", "--bind", "0.0.0.0", "--directory"]).arg(&www);
    cmd.stdout(log.try_clone()?).stderr(log).stdin(Stdio::null());
    lab.spawn_command(cmd, "python3 http.server")?;
    wait_listening(lab, Host::Server, 80)?;
    println!("== server: python3 -m http.server 80 is up");
    check_interrupt()?;

    let rule = format!("tcp:8080={}:80", a.server);
    // XDP explicitly: the lab's far ends have GRO on, so XDP can transmit
    // into its veths (without flags, `auto` picks TC on veth).
    println!(
        "== gateway: forwarder run --public {GW_PUBLIC_IF} --internal {GW_INTERNAL_IF} --mode xdp --rule {rule}"
    );
    let mut fwd = lab.start_forwarder(&["--rule", &rule, "--mode", "xdp"])?;
    for line in fwd.log_text().lines() {
        println!("   | {line}");
    }
    check_interrupt()?;

    let url = format!("http://{}:8080/", a.gw_public);
    let mut ok = 0;
    for i in 1..=requests {
        check_interrupt()?;
        let out = lab
            .client
            .command("curl")
            .args([
                "-sS",
                "-m",
                "5",
                "-w",
                "\\n[%{http_code} from %{remote_ip}:%{remote_port}]",
                &url,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        println!("== client: curl {url} (#{i})");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            println!("   > {line}");
        }
        if out.status.success() && text.contains("[200 from") {
            ok += 1;
        } else {
            println!("   ! curl failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    println!("== server: what the HTTP server logged (the source it saw)");
    for line in std::fs::read_to_string(&http_log)?.lines().filter(|l| l.contains("GET")) {
        println!("   | {line}");
    }
    println!(
        "== gateway: netfilter conntrack entries for the forwarded port: {}",
        conntrack_count(lab)
    );
    println!(
        "== gateway: the forwarder's audit log (one event per new connection, from the kernel)"
    );
    for line in fwd.log_text().lines().filter(|l| l.contains(" audit]")) {
        println!("   | {line}");
    }
    let stats = fwd.stop().context("stopping the forwarder")?;
    println!("== gateway: forwarder stopped; its counters:");
    for line in fwd.log_text().lines().skip_while(|l| !l.contains("stopping")) {
        println!("   | {line}");
    }
    let conns = stats
        .split("\"new_connections\":")
        .nth(1)
        .and_then(|s| s.split([',', '\n']).next())
        .map_or("?", str::trim)
        .to_string();
    println!("== the rule counted {conns} new connections");
    if ok != requests {
        bail!("{} of {requests} requests failed", requests - ok);
    }
    let xdp = stats
        .split("\"xdp_redirected\":")
        .nth(1)
        .and_then(|s| s.split([',', '\n']).next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if xdp == 0 {
        bail!("XDP redirected nothing:\n{stats}");
    }
    println!(
        "== {ok}/{requests} requests forwarded by XDP; the server saw the gateway's internal address {}",
        a.gw_internal
    );
    Ok(())
}

fn conntrack_count(lab: &Lab) -> String {
    match lab.gateway.exec("conntrack", &["-L", "-p", "tcp", "--dport", "8080"]) {
        Ok(out) => out.lines().count().to_string(),
        Err(_) => "0 (netfilter conntrack inactive: nothing went through it)".into(),
    }
}

fn wait_listening(lab: &Lab, host: Host, port: u16) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        check_interrupt()?;
        let out = lab.ns(host).exec("ss", &["-Hltn", &format!("sport = :{port}")])?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on port {port} after 10 s")
}
