//! Processes a lab starts: killed by PID on drop.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A child process, SIGTERM'd (then SIGKILL'd) and reaped on drop.
pub struct Spawned {
    pub child: Child,
    pub what: String,
}

impl Spawned {
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self { child, what: what.to_string() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL. Returns whether it
    /// exited successfully.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(st)) = self.child.try_wait() {
            return st.success();
        }
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The forwarder binary: `$FORWARDER_BIN`, or the newest of
/// `target/{release,debug}/forwarder` in the workspace.
pub fn forwarder_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FORWARDER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ws.join("target"), PathBuf::from);
    let mut found: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("forwarder"))
        .filter(|p| p.is_file())
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().context(
        "forwarder binary not built: run `cargo build -p forwarder-user` or set FORWARDER_BIN",
    )
}

/// A running `forwarder run`, with its stats file and captured log.
pub struct Forwarder {
    pub proc: Spawned,
    pub stats_file: PathBuf,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Starts `cmd` (a `forwarder run …` command line) with stdout and
    /// stderr into one pipe, so its lines are read in the order it wrote
    /// them, and waits until it says it is running (everything it logged
    /// before is in [`Forwarder::log_text`] then), or fails with its log.
    pub fn start(mut cmd: Command, stats_file: PathBuf) -> Result<Self> {
        let (out, into) = std::io::pipe().context("pipe for the forwarder's output")?;
        cmd.stdout(into.try_clone().context("pipe")?).stderr(into).stdin(Stdio::null());
        // (`cmd`, and with it our copy of the pipe's writing end, is
        // dropped by spawn: the reader sees the end when the process goes.)
        let mut proc = Spawned::spawn(cmd, "forwarder")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        let readers = vec![std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let running = line.contains("forwarder: running");
                log2.lock().expect("log").push(line);
                if running {
                    let _ = tx.send(());
                }
            }
        })];
        let t0 = Instant::now();
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(Self { proc, stats_file, log, readers });
            }
            if let Ok(Some(st)) = proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "forwarder exited ({st}) before running:\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "forwarder did not start within 10 s:\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Stops it (SIGTERM) and returns the final stats JSON.
    pub fn stop(&mut self) -> Result<String> {
        let t0 = Instant::now();
        // Detaching and freeing the maps takes well under a second; a
        // daemon that needs more is hanging.
        let clean = self.proc.stop(Duration::from_secs(10));
        let status = self.proc.child.try_wait().ok().flatten();
        // The process is gone: its pipes close, the readers finish.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if !clean {
            bail!(
                "forwarder did not exit cleanly ({status:?} after {:.1} s):\n{}",
                t0.elapsed().as_secs_f64(),
                self.log_text()
            );
        }
        std::fs::read_to_string(&self.stats_file)
            .with_context(|| format!("reading {}", self.stats_file.display()))
    }

    /// The current stats JSON (refreshed every second by the forwarder;
    /// right after the start, the first one is waited for, up to 3 s).
    pub fn stats(&self) -> Result<String> {
        let t0 = Instant::now();
        loop {
            match std::fs::read_to_string(&self.stats_file) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && t0.elapsed() < Duration::from_secs(3) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r.with_context(|| format!("reading {}", self.stats_file.display())),
            }
        }
    }
}
