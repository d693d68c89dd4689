//! Logging and metrics shared by the programs: `tracing` to stderr as text or JSON, filtered
//! by `RUST_LOG` (default `info`, with sqlx's per-statement notices at `warn`); Prometheus
//! metrics on `--metrics-addr` ([`serve_metrics`]), including librdkafka's statistics
//! (published by [`crate::kafka::statistics`] through the same `metrics` facade), with `GET /health` (the process serves) and `GET /ready`
//! (it does its work: [`set_ready`]) beside `GET /metrics`.

use crate::config::LogFormat;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless (the second call keeps the
/// first subscriber), which keeps tests that start programs in-process simple.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.metrics_addr: cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    pub addr: std::net::SocketAddr,
    pub reason: String,
}

/// Readiness as `/ready` reports it: a program that never calls [`set_ready`] is ready
/// while it serves; one that does is ready only between `set_ready(true)` and
/// `set_ready(false)`.
static READINESS: AtomicU8 = AtomicU8::new(READINESS_UNMANAGED);
const READINESS_UNMANAGED: u8 = 0;
const READINESS_NOT_READY: u8 = 1;
const READINESS_READY: u8 = 2;

/// Says whether the program can do its work now (server_kafka: every consumer has its
/// partitions and the state is prepared). `GET /ready` answers 200 or 503 accordingly.
pub fn set_ready(ready: bool) {
    let state = if ready {
        READINESS_READY
    } else {
        READINESS_NOT_READY
    };
    READINESS.store(state, Ordering::SeqCst);
}

/// Whether `/ready` answers 200 now.
pub fn is_ready() -> bool {
    READINESS.load(Ordering::SeqCst) != READINESS_NOT_READY
}

/// Serves, from a task of the current tokio runtime: `GET /metrics` (the `metrics` facade
/// as Prometheus text), `GET /health` (200 while the process serves) and `GET /ready` (200
/// when [`is_ready`], else 503). Call once, inside the runtime.
pub fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), MetricsError> {
    let error = |reason: String| MetricsError { addr, reason };
    // Bind here so that a taken port is reported at start, not logged by a task.
    let listener = std::net::TcpListener::bind(addr).map_err(|e| error(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| error(e.to_string()))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| error(e.to_string()))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| error(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms are drained into their summaries here (the exporter's own listener
        // would do it; this server replaces that listener).
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            ticker.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = answer(stream, &handle).await;
            });
        }
    });
    Ok(())
}

/// Reads one request (its head only) and answers it, then closes the connection.
async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics") | (b"GET", b"/") => ("200 OK", handle.render()),
        (b"GET", b"/health") => ("200 OK", "ok\n".to_string()),
        (b"GET", b"/ready") if is_ready() => ("200 OK", "ready\n".to_string()),
        (b"GET", b"/ready") => ("503 Service Unavailable", "not ready\n".to_string()),
        (b"GET", _) => (
            "404 Not Found",
            "not found: try /metrics, /health or /ready\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", String::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
