//! The control and metrics clients, each read and answered by a task of
//! its own: the loop only computes answers, so a slow or silent client
//! holds up nothing, and a bad request gets an error answer.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// An answer's data: a JSON value, or JSON text made straight from its
/// type (a listing of a large table: no value tree of a million nodes).
pub enum Data {
    Value(serde_json::Value),
    Text(String),
}

/// A request for the loop, from a client task.
pub(super) enum Ask {
    Control(crate::control::Request, oneshot::Sender<anyhow::Result<Data>>),
    Metrics(oneshot::Sender<anyhow::Result<String>>),
}

/// Accepts control clients; each is read and answered by a task of its own.
pub(super) async fn control_server(l: tokio::net::UnixListener, tx: mpsc::Sender<Ask>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (req, mut s) = read_request(s).await;
            let reply = match req {
                Ok(req) => {
                    let (otx, orx) = oneshot::channel();
                    if tx.send(Ask::Control(req, otx)).await.is_err() {
                        return;
                    }
                    orx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("the daemon is stopping")))
                }
                Err(e) => Err(e),
            };
            if let Err(e) = write_reply(&mut s, reply).await {
                log::debug!("control client: {e:#}");
            }
        });
    }
}

/// Serves `/metrics` (Prometheus text) to each client from a task of its
/// own; the loop only renders the body.
pub(super) async fn metrics_server(l: tokio::net::TcpListener, tx: mpsc::Sender<Ask>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut req)).await;
            let (otx, orx) = oneshot::channel();
            if tx.send(Ask::Metrics(otx)).await.is_err() {
                return;
            }
            let (status, body) = match orx.await {
                Ok(Ok(body)) => ("200 OK", body),
                Ok(Err(e)) => (
                    "500 Internal Server Error",
                    format!("# the forwarder could not read its counters: {e:#}\n"),
                ),
                Err(_) => return,
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

/// Reads one control request line.
async fn read_request(
    s: tokio::net::UnixStream,
) -> (anyhow::Result<crate::control::Request>, tokio::net::UnixStream) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let req = match tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await {
        Ok(Ok(_)) => serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("bad request `{}`: {e}", line.trim())),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("request timed out")),
    };
    (req, r.into_inner())
}

/// Answers one control request with a JSON line.
async fn write_reply(
    s: &mut tokio::net::UnixStream,
    reply: anyhow::Result<Data>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut out = match reply {
        Ok(Data::Value(data)) => {
            serde_json::to_vec(&serde_json::json!({"ok": true, "data": data}))?
        }
        Ok(Data::Text(data)) => format!("{{\"ok\":true,\"data\":{data}}}").into_bytes(),
        Err(e) => serde_json::to_vec(&serde_json::json!({"ok": false, "error": format!("{e:#}")}))?,
    };
    out.push(b'\n');
    s.write_all(&out).await?;
    Ok(())
}
