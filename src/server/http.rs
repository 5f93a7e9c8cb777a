//! The operations endpoint: Prometheus metrics and health probes over a
//! minimal HTTP/1.1 server (GET only, one request per connection).
//!
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /ready`: 200 once the node serves (every hosted group has a
//!   leader and its clock is synchronized), 503 before that, while its
//!   clock is out of bounds, while stopping, and after a storage fault (the
//!   body says which; after a fault the process exits right after, see
//!   [`super::EXIT_STORAGE_FAULT`]).
//! - `GET /health`: 200 while the process runs.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::node::{Node, Readiness};

/// A request line and headers larger than this are refused.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, node: Arc<Node>, prometheus: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = Arc::clone(&node);
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &node, &prometheus).await {
                tracing::debug!(error = %e, "http request");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    node: &Node,
    prometheus: &PrometheusHandle,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_REQUEST_BYTES {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(head, Ok(Ok(()))) {
        return Ok(());
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", prometheus.render()),
        ("GET", "/ready") => match node.readiness() {
            Readiness::Ready => ("200 OK", "text/plain", "ready\n".into()),
            Readiness::Starting => (
                "503 Service Unavailable",
                "text/plain",
                "not ready: not every hosted group has a leader yet\n".into(),
            ),
            Readiness::Stopping => (
                "503 Service Unavailable",
                "text/plain",
                "not ready: stopping\n".into(),
            ),
            Readiness::Unsynchronized(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
            Readiness::Failed(fault) => (
                "503 Service Unavailable",
                "text/plain",
                format!("storage fault: {fault}\n"),
            ),
        },
        ("GET", "/health") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
