//! The helpers the others are made of: the connect bound, the public
//! address, a backend's listener, the CLI against the lab's daemon.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use forwarder_testkit::Lab;

/// How long a connection may take to be set up: under a second, so that
/// a first SYN lost (and retransmitted after one) fails the test.
pub const CONNECT: Duration = Duration::from_millis(900);

/// Deepens a listener's accept queue to 4096 (the namespace's
/// `somaxconn`; std listens with 128): a burst of connections set up
/// faster than the test's thread accepts them must not cost a SYN the
/// server drops, which a tight connect bound would blame on the gateway.
pub fn deep_backlog(l: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) again on a listening socket we own only changes
    // its backlog.
    assert_eq!(
        unsafe { libc::listen(l.as_raw_fd(), 4096) },
        0,
        "listen: {}",
        std::io::Error::last_os_error()
    );
}

/// A TCP listener at `at` in the server namespace, its accept queue
/// deep ([`deep_backlog`]).
pub fn server_listener(lab: &Lab, at: SocketAddr) -> TcpListener {
    let l = lab
        .server
        .enter(move || TcpListener::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}")))
        .unwrap()
        .join()
        .unwrap();
    deep_backlog(&l);
    l
}

pub fn public(port: u16) -> SocketAddr {
    SocketAddr::from((forwarder_testkit::ADDRS.gw_public, port))
}

/// Runs the `forwarder` CLI against the lab's daemon (its control
/// socket): whether it succeeded, and stdout + stderr.
pub fn cli(lab: &Lab, args: &[&str]) -> (bool, String) {
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let out = std::process::Command::new(&bin)
        .args(args)
        .arg("--control")
        .arg(lab.dir.join("control.sock"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
