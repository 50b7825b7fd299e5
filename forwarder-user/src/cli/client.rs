//! Commands that ask a running daemon over its control socket: `stats` and
//! `conntrack list|flush`.

use std::{
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::{
    control::{Conn, DEFAULT_SOCKET, Filter, Request},
    stats::Snapshot,
};

/// Prints the daemon's answer `v` as JSON with `json`, else as `human` says.
pub(super) fn answer(
    json: bool,
    v: &serde_json::Value,
    human: impl FnOnce(&serde_json::Value) -> String,
) {
    if json {
        println!("{v}");
    } else {
        println!("{}", human(v));
    }
}

/// Sends one request; the daemon's `data`, or its error.
pub fn ask(path: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&ask_raw(path, req)?)?)
}

/// The daemon's answer: `data` as the JSON text it sent, or its error.
#[derive(serde::Deserialize)]
struct Answer<'a> {
    ok: bool,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    error: Option<String>,
}

/// [`ask`], with `data` left as JSON text (a listing of a large table is
/// printed as it came, or read straight into its own type).
pub fn ask_raw(path: &Path, req: &Request) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            anyhow::anyhow!(
                "forwarder is not running (no daemon listens on {}; see --control)",
                path.display()
            )
        }
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {} (the control socket is root-only)",
            path.display()
        ),
        _ => anyhow::anyhow!("{}: {e}", path.display()),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).context("reading the daemon's answer")?;
    // The daemon's own envelope around data it wrote as text (a table
    // listing): taken out as it is, without parsing 50 MB only to print
    // them again.
    if let Some(data) =
        reply.trim_end().strip_prefix(r#"{"ok":true,"data":"#).and_then(|r| r.strip_suffix('}'))
    {
        return Ok(data.to_string());
    }
    let a: Answer = serde_json::from_str(&reply).with_context(|| {
        format!("bad answer `{}`", reply.chars().take(200).collect::<String>().trim())
    })?;
    match (a.ok, a.data) {
        (true, Some(d)) => Ok(d.get().to_string()),
        (true, None) => Ok("null".to_string()),
        (false, _) => bail!("{}", a.error.as_deref().unwrap_or("the daemon refused the request")),
    }
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub control: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds, with rates, until interrupted.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<u64>,
}

pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let mut last: Option<Snapshot> = None;
    loop {
        let snap: Snapshot = serde_json::from_value(ask(&args.control, &Request::Stats)?)?;
        if args.json {
            println!("{}", serde_json::to_string(&snap)?);
        } else {
            if args.watch.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            println!("{}", snap.table());
            if let (Some(prev), Some(secs)) = (&last, args.watch) {
                for (r, p) in snap.rules.iter().zip(&prev.rules) {
                    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
                    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs as f64;
                    println!(
                        "rate {:>3}: {:.0} pkt/s in, {:.0} pkt/s out, {:.1} conn/s",
                        r.handle,
                        rate(r.packets_in, p.packets_in),
                        rate(r.packets_out, p.packets_out),
                        rate(r.new_connections, p.new_connections)
                    );
                }
            }
        }
        let Some(secs) = args.watch else { return Ok(()) };
        last = Some(snap);
        std::thread::sleep(Duration::from_secs(secs.max(1)));
    }
}

#[derive(Subcommand, Debug)]
pub enum RuleCmd {
    /// The running rules: handle, rule, counters, where it came from.
    List,
    /// Add a rule (`PROTO:PORTS[@IFACE]=ADDR[:PORTS][,…]`), live at once;
    /// prints its handle. Needs the daemon's --pin-dir; `forwarder save`
    /// makes it permanent.
    #[command(after_long_help = crate::settings::help::RULES)]
    Add {
        /// The rule (see below).
        spec: String,
    },
    /// Remove the rule with handle HANDLE (the other rules keep theirs);
    /// its connections keep their translation until they end (flush them
    /// with `forwarder conntrack flush --rule HANDLE`).
    Del { handle: u32 },
}

#[derive(Args, Debug)]
pub struct RuleArgs {
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH", global = true)]
    pub control: PathBuf,
    /// Machine-readable output (the daemon's answer as JSON).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: RuleCmd,
}

pub fn rule(args: &RuleArgs) -> anyhow::Result<()> {
    match &args.cmd {
        RuleCmd::List => {
            let v = ask(&args.control, &Request::Rules)?;
            if args.json {
                println!("{v}");
                return Ok(());
            }
            println!(
                "{:>6}  {:<34} {:>10} {:>10} {:>8} {:>8}  origin",
                "handle", "rule", "pkts in", "pkts out", "conns", "denied"
            );
            for r in v.as_array().into_iter().flatten() {
                println!(
                    "{:>6}  {:<34} {:>10} {:>10} {:>8} {:>8}  {}",
                    r["handle"].as_u64().unwrap_or(0),
                    r["rule"].as_str().unwrap_or(""),
                    r["packets_in"].as_u64().unwrap_or(0),
                    r["packets_out"].as_u64().unwrap_or(0),
                    r["new_connections"].as_u64().unwrap_or(0),
                    r["denied"].as_u64().unwrap_or(0),
                    r["origin"].as_str().unwrap_or("")
                );
            }
        }
        RuleCmd::Add { spec } => {
            // Refuse a bad rule here already, naming the value.
            crate::settings::Rule::parse_spec(spec)?;
            let v = ask(&args.control, &Request::Add { spec: spec.clone() })?;
            answer(args.json, &v, |v| format!("added rule {}: {spec}", v["handle"]));
        }
        RuleCmd::Del { handle } => {
            let v = ask(&args.control, &Request::Del { handle: *handle })?;
            answer(args.json, &v, |v| {
                format!("removed rule {handle}: {}", v["removed"].as_str().unwrap_or("?"))
            });
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub control: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Where to write the running configuration (atomically).
    #[arg(default_value = "/etc/forwarder/forwarder.toml")]
    pub file: PathBuf,
}

pub fn save(args: &SaveArgs) -> anyhow::Result<()> {
    // The daemon writes the file: give it an absolute path.
    let file = std::path::absolute(&args.file)?;
    let v = ask(&args.control, &Request::Save { path: file })?;
    answer(args.json, &v, |v| {
        format!("saved the running configuration to {}", v["path"].as_str().unwrap_or("?"))
    });
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct FilterArgs {
    /// Only connections of the rule with this handle.
    #[arg(long, value_name = "HANDLE")]
    pub rule: Option<u32>,
    /// Only connections with this address (client, public, masquerade or backend).
    #[arg(long)]
    pub addr: Option<Ipv4Addr>,
    /// Only connections with this port (any side).
    #[arg(long)]
    pub port: Option<u16>,
}

#[derive(Subcommand, Debug)]
pub enum ConntrackCmd {
    /// List tracked connections.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove tracked connections (their next packet is a new connection).
    Flush {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ConntrackArgs {
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH", global = true)]
    pub control: PathBuf,
    #[command(subcommand)]
    pub cmd: ConntrackCmd,
}

fn filter(f: &FilterArgs) -> Filter {
    Filter { rule: f.rule, addr: f.addr, port: f.port }
}

pub fn conntrack(args: &ConntrackArgs) -> anyhow::Result<()> {
    match &args.cmd {
        ConntrackCmd::List { filter: f, json } => {
            let raw = ask_raw(&args.control, &Request::Conntrack { filter: filter(f) })?;
            if *json {
                println!("{raw}");
                return Ok(());
            }
            let conns: Vec<Conn> = serde_json::from_str(&raw)?;
            println!(
                "{:<5} {:>4} {:<12} {:<22} {:<22} {:<22} {:<22} {:>6}",
                "proto", "rule", "state", "client", "public", "masquerade", "backend", "idle"
            );
            for c in &conns {
                println!(
                    "{:<5} {:>4} {:<12} {:<22} {:<22} {:<22} {:<22} {:>5}s",
                    c.proto, c.rule, c.state, c.client, c.public, c.masquerade, c.backend, c.idle_s
                );
            }
            println!("{} connection(s)", conns.len());
        }
        ConntrackCmd::Flush { filter: f, json } => {
            let v = ask(&args.control, &Request::Flush { filter: filter(f) })?;
            answer(*json, &v, |v| format!("removed {} connection(s)", v["removed_connections"]));
        }
    }
    Ok(())
}
