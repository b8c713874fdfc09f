//! The HTTP endpoints of a serving process: `/metrics` (Prometheus), `/healthz` (the process
//! runs), `/readyz` (it can score: the model is loaded and, with Kafka, partitions are assigned
//! and their state rebuilt; its body has a line per assigned partition saying what its state
//! is doing: loading a snapshot, replaying with its progress, or scoring and how it got ready).

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
    /// Ready to score: the core exists and, with Kafka, a partition is assigned and rebuilt,
    /// none is being rebuilt, and none is refused for a short history
    /// (`[state] on_short_history = "refuse"`).
    pub fn ready(&self) -> Result<(), String> {
        if !self.core.load(Ordering::Acquire) {
            return Err("not ready: the scoring core is not started yet".into());
        }
        let Some(s) = &self.kafka else {
            return Ok(());
        };
        let refused = s.refused();
        if !refused.is_empty() {
            return Err(format!(
                "not ready: partitions {refused:?} refused: the topic no longer holds the \
                 history their state needs (on_short_history = \"refuse\"; see below)"
            ));
        }
        let rebuilding = s.rebuilding();
        if rebuilding > 0 {
            return Err(format!(
                "not ready: {rebuilding} assigned partitions are rebuilding their state (the \
                 others score; see below)"
            ));
        }
        if !s.assigned.load(Ordering::Acquire) {
            return Err("not ready: no partition assigned and rebuilt yet".into());
        }
        Ok(())
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
            let Ok(Some(head)) =
                tokio::time::timeout(Duration::from_secs(5), read_head(&mut conn)).await
            else {
                return;
            };
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/metrics" => (
                    "200 OK",
                    metrics.as_ref().map_or_else(String::new, |m| m.render()),
                ),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" => {
                    let parts = health
                        .kafka
                        .as_ref()
                        .map_or_else(String::new, |s| s.partition_lines());
                    match health.ready() {
                        Ok(()) => ("200 OK", format!("ready\n{parts}")),
                        Err(why) => ("503 Service Unavailable", format!("{why}\n{parts}")),
                    }
                }
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

/// Reads a request's head: up to the blank line that ends it, however the client's writes were
/// split into segments (`None` if the connection closes first or the head exceeds 8 KiB).
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    const MAX_HEAD: usize = 8192;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request written in pieces (as `write!` on a raw socket does) is read whole.
    #[tokio::test]
    async fn a_request_split_across_writes_is_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(Health {
            core: AtomicBool::new(true),
            kafka: None,
        });
        let shutdown = Shutdown::new();
        let server = tokio::spawn(serve(listener, None, health, shutdown.clone()));
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.set_nodelay(true).expect("nodelay");
        for piece in ["GET ", "/readyz", " HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
            conn.write_all(piece.as_bytes()).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut response = String::new();
        conn.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("ready\n"), "{response}");
        shutdown.trigger();
        server.await.expect("the server stops");
    }
}
