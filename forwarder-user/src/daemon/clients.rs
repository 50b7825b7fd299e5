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
    Metrics(crate::metrics::Format, oneshot::Sender<anyhow::Result<String>>),
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

/// How long a metrics client may take to send a request's headers, and
/// how long a connection may stay open (keep-alive included).
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_mins(1);

/// Serves `/metrics` over HTTP/1 (hyper), each client from a task of its
/// own: a slow or silent client holds up only its task (and is cut off
/// after [`METRICS_HEADER_TIMEOUT`]); the loop only renders the body.
pub(super) async fn metrics_server(l: tokio::net::TcpListener, tx: mpsc::Sender<Ask>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| metrics_answer(req, tx.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(s), service);
            if let Ok(Err(e)) = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, conn).await {
                log::debug!("metrics client: {e}");
            }
        });
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// One metrics request: `GET`/`HEAD /metrics` is answered with the
/// counters (`OpenMetrics` when the `Accept` header asks for it, else the
/// Prometheus text format); any other path is 404, another method 405.
async fn metrics_answer(
    req: hyper::Request<hyper::body::Incoming>,
    tx: mpsc::Sender<Ask>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    use hyper::{Method, StatusCode, header};
    const TEXT: &str = "text/plain; charset=utf-8";
    let reply = |status: StatusCode, kind: &str, body: String| {
        let mut r = hyper::Response::new(Body::from(body));
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(kind) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: the metrics are at /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET or HEAD\n".into());
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let format = crate::metrics::Format::from_accept(
        req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or(""),
    );
    let (otx, orx) = oneshot::channel();
    let stopping =
        || reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "the daemon is stopping\n".into());
    if tx.send(Ask::Metrics(format, otx)).await.is_err() {
        return Ok(stopping());
    }
    let mut r = match tokio::time::timeout(METRICS_HEADER_TIMEOUT, orx).await {
        Ok(Ok(Ok(body))) => reply(StatusCode::OK, format.content_type(), body),
        Ok(Ok(Err(e))) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("the forwarder could not read its counters: {e:#}\n"),
        ),
        Ok(Err(_)) => stopping(),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "the daemon did not answer in time\n".into(),
        ),
    };
    if req.method() == Method::HEAD {
        let len =
            http_body_util::BodyExt::collect(r.body_mut()).await.map_or(0, |b| b.to_bytes().len());
        *r.body_mut() = Body::default();
        r.headers_mut().insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    }
    Ok(r)
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
