//! The checks: a TCP connect, an HTTP status, or a command's exit code,
//! each bounded by the check's timeout.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Outcome;
use crate::settings::Check;

/// Runs `check` against `addr:port`, within `timeout`.
pub async fn run(check: &Check, addr: Ipv4Addr, port: u16, timeout: Duration) -> Outcome {
    let t0 = Instant::now();
    let r = tokio::time::timeout(timeout, attempt(check, addr, port)).await;
    let latency = t0.elapsed();
    match r {
        Ok(Ok(what)) => Outcome { ok: true, what, latency },
        Ok(Err(why)) => Outcome { ok: false, what: why, latency },
        Err(_) => Outcome {
            ok: false,
            what: format!("no answer within {}", duration_text(timeout)),
            latency,
        },
    }
}

/// `d` for people: `200 ms`, `1 s`, `2.5 s`.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1000 => format!("{ms} ms"),
        _ if ms.is_multiple_of(1000) => format!("{} s", ms / 1000),
        _ => format!("{:.1} s", d.as_secs_f64()),
    }
}

async fn attempt(check: &Check, addr: Ipv4Addr, port: u16) -> Result<String, String> {
    let to = SocketAddr::from((addr, port));
    match check {
        Check::Tcp => {
            tokio::net::TcpStream::connect(to).await.map_err(|e| format!("connect: {e}"))?;
            Ok("connected".into())
        }
        Check::Http { path, status } => {
            let mut s =
                tokio::net::TcpStream::connect(to).await.map_err(|e| format!("connect: {e}"))?;
            let req = format!(
                "GET {path} HTTP/1.0\r\nHost: {to}\r\nUser-Agent: forwarder-health\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.contains(&b'\n') && head.len() < 4096 {
                let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let got = status_of(&head).ok_or_else(|| "no HTTP status line".to_string())?;
            if got == *status {
                Ok(format!("status {got}"))
            } else {
                Err(format!("status {got}, want {status}"))
            }
        }
        Check::Exec { command } => {
            let line = command.replace("%a", &addr.to_string()).replace("%p", &port.to_string());
            let st = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&line)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("running `{line}`: {e}"))?;
            match st.code() {
                Some(0) => Ok("exit 0".into()),
                Some(c) => Err(format!("exit {c}")),
                None => Err("killed by a signal".into()),
            }
        }
    }
}

/// The status code of an HTTP response's first line (`HTTP/1.x NNN …`).
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut w = line.split_whitespace();
    w.next().filter(|v| v.starts_with("HTTP/"))?;
    w.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\nX: y"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b""), None);
    }

    #[tokio::test]
    async fn checks_against_local_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let lo = Ipv4Addr::LOCALHOST;
        let t = Duration::from_secs(1);
        // One bare connect (the TCP check), then an HTTP answer with the
        // wrong status, then the right one.
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            drop(l.accept().unwrap());
            for status in ["500 Oops", "200 OK"] {
                let (mut s, _) = l.accept().unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).unwrap();
                write!(s, "HTTP/1.0 {status}\r\n\r\n").unwrap();
            }
        });
        assert!(run(&Check::Tcp, lo, port, t).await.ok);
        let http = Check::Http { path: "/healthz".into(), status: 200 };
        let first = run(&http, lo, port, t).await;
        assert!(!first.ok && first.what.contains("status 500"), "{first:?}");
        assert!(run(&http, lo, port, t).await.ok);
        server.join().unwrap();
        // Nobody listens any more.
        let gone = run(&Check::Tcp, lo, port, t).await;
        assert!(!gone.ok && gone.what.contains("connect"), "{gone:?}");
        let exec = |c: &str| Check::Exec { command: c.into() };
        assert!(run(&exec("test %a = 127.0.0.1 && test %p = 9"), lo, 9, t).await.ok);
        assert_eq!(run(&exec("exit 3"), lo, 9, t).await.what, "exit 3");
        let slow = run(&exec("sleep 5"), lo, 9, Duration::from_millis(200)).await;
        assert_eq!((slow.ok, slow.what.as_str()), (false, "no answer within 200 ms"));
        assert_eq!(duration_text(Duration::from_secs(2)), "2 s");
        assert_eq!(duration_text(Duration::from_millis(2500)), "2.5 s");
    }
}
