//! `forwarder backend list|drain|undrain|weight`: the backends of the
//! running daemon's balanced rules.

use std::{net::SocketAddrV4, path::PathBuf};

use clap::{Args, Subcommand};

use super::client::{answer, ask};
use crate::control::{DEFAULT_SOCKET, Request};

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Every backend of a rule with several (or a health check): weight,
    /// state (up, down, pending, draining), last check and its latency,
    /// live connections.
    List,
    /// No new connections to ADDR:PORT; established ones continue until
    /// they end (`list` shows how many are left).
    Drain {
        backend: SocketAddrV4,
        /// Only in the rule with this handle (default: every rule that has
        /// it).
        #[arg(long, value_name = "HANDLE")]
        rule: Option<u32>,
    },
    /// New connections to ADDR:PORT again.
    Undrain {
        backend: SocketAddrV4,
        /// Only in the rule with this handle.
        #[arg(long, value_name = "HANDLE")]
        rule: Option<u32>,
    },
    /// ADDR:PORT's share of new connections (0 = none); `forwarder save`
    /// keeps it.
    Weight {
        backend: SocketAddrV4,
        weight: u32,
        /// Only in the rule with this handle.
        #[arg(long, value_name = "HANDLE")]
        rule: Option<u32>,
    },
}

#[derive(Args, Debug)]
pub struct BackendArgs {
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH", global = true)]
    pub control: PathBuf,
    /// Machine-readable output (the daemon's answer as JSON).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: BackendCmd,
}

pub fn run(args: &BackendArgs) -> anyhow::Result<()> {
    let (req, done) = match &args.cmd {
        BackendCmd::List => {
            let v = ask(&args.control, &Request::Backends)?;
            if args.json {
                println!("{v}");
                return Ok(());
            }
            println!(
                "{:>4}  {:<21} {:>6}  {:<8} {:>7} {:>10} {:>10} {:>10}  last check",
                "rule", "backend", "weight", "state", "conns", "pkts in", "pkts out", "latency"
            );
            // (JSON numbers as numbers: a `Value` ignores widths.)
            let n = |b: &serde_json::Value, k: &str| b[k].as_u64().unwrap_or(0);
            for b in v.as_array().into_iter().flatten() {
                let latency = b["latency_us"].as_u64().map_or_else(
                    || "-".into(),
                    |us| format!("{}.{} ms", us / 1000, us % 1000 / 100),
                );
                println!(
                    "{:>4}  {:<21} {:>6}  {:<8} {:>7} {:>10} {:>10} {:>10}  {}",
                    n(b, "rule"),
                    b["backend"].as_str().unwrap_or(""),
                    n(b, "weight"),
                    b["state"].as_str().unwrap_or(""),
                    n(b, "connections"),
                    n(b, "packets_in"),
                    n(b, "packets_out"),
                    latency,
                    b["check"].as_str().unwrap_or("-"),
                );
            }
            return Ok(());
        }
        BackendCmd::Drain { backend, rule } | BackendCmd::Undrain { backend, rule } => {
            let on = matches!(args.cmd, BackendCmd::Drain { .. });
            let req = Request::Drain { addr: *backend.ip(), port: backend.port(), rule: *rule, on };
            (req, if on { format!("draining {backend}") } else { format!("undrained {backend}") })
        }
        BackendCmd::Weight { backend, weight, rule } => (
            Request::Weight {
                addr: *backend.ip(),
                port: backend.port(),
                rule: *rule,
                weight: *weight,
            },
            format!("{backend}: weight {weight}"),
        ),
    };
    let v = ask(&args.control, &req)?;
    answer(args.json, &v, |v| format!("{done} ({} rule(s))", v["changed"]));
    Ok(())
}
