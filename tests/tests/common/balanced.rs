//! Helpers of the tests of balanced rules: a backend that says which it
//! is and echoes, a connection that learns which one it reached, the
//! daemon's backend list and waiting for a backend's state.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use forwarder_testkit::Lab;

use super::base::{CONNECT, cli, public, server_listener};

/// A backend server on `192.168.1.B:80` in the server namespace: each
/// connection reads one byte, answers `B`, then echoes everything. Stops
/// (its listener closed: connects get RST) when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Its connections that ended with a reset from the client's side.
    pub resets: Arc<AtomicUsize>,
}

impl Server {
    pub fn start(lab: &Lab, b: u8) -> Self {
        let l = server_listener(lab, SocketAddr::from((Ipv4Addr::new(192, 168, 1, b), 80)));
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let resets = Arc::new(AtomicUsize::new(0));
        let counted = resets.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let counted = counted.clone();
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    let mut first = [0u8; 1];
                    if s.read_exact(&mut first).is_err() || s.write_all(&[b]).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) if s.write_all(&buf[..n]).is_ok() => {}
                            Ok(_) => return,
                            Err(e) => {
                                if e.kind() == std::io::ErrorKind::ConnectionReset {
                                    counted.fetch_add(1, Ordering::Relaxed);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { stop, thread: Some(thread), resets }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection through port 8080 from the client: the backend that
/// answered and the stream, or the error.
pub fn connect() -> Result<(u8, TcpStream), String> {
    let mut s = TcpStream::connect_timeout(&public(8080), CONNECT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"x").map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(|e| e.to_string())?;
    Ok((b[0], s))
}

/// The daemon's `backend list --json`.
pub fn backends(lab: &Lab) -> Vec<serde_json::Value> {
    let (ok, out) = cli(lab, &["backend", "list", "--json"]);
    assert!(ok, "{out}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

pub fn state_of(lab: &Lab, backend: &str) -> String {
    backends(lab)
        .iter()
        .find(|b| b["backend"] == backend)
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Waits (at most `secs`) until every listed backend is in `state`.
pub fn wait_state(lab: &Lab, which: &[&str], state: &str, secs: u64) -> Duration {
    let t0 = Instant::now();
    while !which.iter().all(|b| state_of(lab, b) == state) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "not {state} in {secs} s: {:?}",
            backends(lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// The file whose presence makes backend `192.168.1.B` pass its check in
/// a [`flag_checked`] rule.
pub fn flag(lab: &Lab, b: u8) -> std::path::PathBuf {
    lab.dir.join(format!("up-192.168.1.{b}"))
}

/// A config file (its path) with one rule `proto` `port` over backends
/// `192.168.1.B:to_port`, each up while its [`flag`] file exists (an exec
/// check every second, up after 1 success, down after 1 failure), `extra`
/// lines added to `[rule.health]`. The flag files are created: all up.
pub fn flag_checked(
    lab: &Lab,
    (proto, port): (&str, u16),
    backends: &[u8],
    to_port: u16,
    extra: &str,
) -> std::path::PathBuf {
    let list: Vec<String> =
        backends.iter().map(|b| format!("{{ to = \"192.168.1.{b}:{to_port}\" }}")).collect();
    for b in backends {
        std::fs::write(flag(lab, *b), "").unwrap();
    }
    let cfg = lab.dir.join(format!("{proto}-{port}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[rule]]\nproto = \"{proto}\"\nport = {port}\nbackends = [{}]\n[rule.health]\ncheck = \"exec\"\ncommand = \"test -e {}/up-%a\"\ninterval = 1\nrise = 1\nfall = 1\n{extra}",
            list.join(", "),
            lab.dir.display()
        ),
    )
    .unwrap();
    cfg
}
