//! The HTTP endpoints of a serving process: `/metrics` (Prometheus), `/healthz` (the process
//! runs), `/readyz` (it can score: the model is loaded and, with Kafka, partitions are assigned
//! and their state rebuilt).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::shutdown::Shutdown;
use crate::stream::Status;

/// What `/readyz` reports.
pub struct Health {
    /// The scoring core exists (model loaded, state sized).
    pub core: AtomicBool,
    /// The Kafka pipeline's status, when there is one.
    pub kafka: Option<Arc<Status>>,
}

impl Health {
    /// Ready to score: the core exists and, with Kafka, a partition is assigned and rebuilt.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.core.load(Ordering::Acquire) {
            return Err("not ready: the scoring core is not started yet");
        }
        match &self.kafka {
            Some(s) if !s.assigned.load(Ordering::Acquire) => {
                Err("not ready: no partition assigned and rebuilt yet")
            }
            _ => Ok(()),
        }
    }
}

/// A deliberately small HTTP/1.1 server for three GET endpoints (one request per connection),
/// until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    health: Arc<Health>,
    shutdown: Shutdown,
) {
    // Bounded: at most this many connections are served at once.
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => return,
        };
        let Ok((mut conn, _)) = accepted else {
            continue;
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (metrics, health) = (metrics.clone(), Arc::clone(&health));
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = vec![0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/metrics" => (
                    "200 OK",
                    metrics.as_ref().map_or_else(String::new, |m| m.render()),
                ),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" => match health.ready() {
                    Ok(()) => ("200 OK", "ready\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("{why}\n")),
                },
                _ => (
                    "404 Not Found",
                    "try /metrics, /healthz or /readyz\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
