//! `vigil serve` as a library call: load the model, size the scoring core from the topic, run
//! the Kafka pipeline, the labels feed, the model watcher, the HTTP endpoints and any extra
//! server (the gRPC API) until one shutdown signal stops them all.
//!
//! ```text
//!  signals ──(SIGTERM/SIGINT)──> Shutdown <── pipeline ends (error or done)
//!     └─(SIGHUP)──> model watcher ──replace_model──> ScoringCore <── pipeline (Kafka)
//!                                                          ^  <── extra tasks (gRPC)
//!                                                          └── labels feed
//!  HTTP: /metrics (Prometheus), /healthz (alive), /readyz (model loaded, partitions assigned)
//! ```
//!
//! Extra servers are [`ExtraTask`]s: given the core and the shutdown signal, they return a future
//! that runs on the serve runtime and must finish soon after the signal fires (e.g. tonic's
//! `serve_with_shutdown(addr, shutdown.wait())`).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::model::{self, Model};
use crate::service::{ScoringCore, DEFAULT_ALERT_BUFFER};
use crate::shutdown::Shutdown;
use crate::stream::{self, Status};
use crate::telemetry;

/// A server started next to the Kafka pipeline (e.g. the gRPC API).
pub type ExtraTask = Box<
    dyn FnOnce(Arc<ScoringCore>, Shutdown) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>
        + Send,
>;

/// How `vigil serve` runs.
pub struct ServeOptions {
    /// Run the Kafka pipeline (false: serve only the extra tasks, e.g. `--no-kafka`).
    pub kafka: bool,
    /// Partitions of the state without Kafka (with Kafka: the topic's partition count).
    pub partitions_without_kafka: u32,
    /// Servers to run next to the pipeline on the same shutdown signal.
    pub extra: Vec<ExtraTask>,
    /// Handle SIGTERM/SIGINT (shutdown) and SIGHUP (model reload).
    pub signals: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            kafka: true,
            partitions_without_kafka: 1,
            extra: Vec::new(),
            signals: true,
        }
    }
}

/// Live state the HTTP endpoints report.
struct Health {
    status: Arc<Status>,
    kafka: bool,
}

impl Health {
    fn ready(&self) -> bool {
        !self.kafka || self.status.assigned.load(Ordering::Acquire)
    }
}

/// Loads the model a serving process starts with (the file is checked completely).
pub fn load_model(path: &Path) -> Result<Arc<Model>> {
    let m =
        model::load(path, None).with_context(|| format!("cannot use model {}", path.display()))?;
    Ok(Arc::new(m))
}

/// Runs until `shutdown` fires (signals, or any part failing) and everything has stopped.
/// Returns the pipeline's error, if it stopped on one.
pub fn run(cfg: Config, opts: ServeOptions, shutdown: Shutdown) -> Result<()> {
    let model = load_model(&cfg.model.path)?;
    tracing::info!(model = %model.name(), "model loaded");
    let partitions = if opts.kafka {
        if cfg.kafka.create_topics {
            let mut topics = vec![
                cfg.kafka.transactions_topic.as_str(),
                cfg.kafka.alerts_topic.as_str(),
                cfg.kafka.dlq_topic.as_str(),
            ];
            topics.extend(cfg.verdicts_topic());
            topics.extend(cfg.labels_topic());
            stream::kafka::ensure_topics(&cfg.kafka.brokers, &topics, cfg.kafka.create_partitions)?;
        }
        stream::kafka::topic_partitions(
            &cfg,
            &cfg.kafka.transactions_topic,
            Duration::from_secs(30),
        )?
    } else {
        opts.partitions_without_kafka.max(1)
    };
    let core = Arc::new(ScoringCore::new(
        Arc::clone(&model),
        partitions,
        DEFAULT_ALERT_BUFFER,
    ));
    telemetry::model_serving(&model.header.model_id, &model.header.version, None);
    warn_on_partition_mismatch(&model, partitions);
    tracing::info!(partitions, "scoring core ready");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vigil-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = Arc::new(Status::default());
    let health = Arc::new(Health {
        status: Arc::clone(&status),
        kafka: opts.kafka,
    });

    if let Some(addr) = cfg.metrics_addr() {
        let handle = match telemetry::install_prometheus() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(
                    "metrics recorder not installed (already one in this process?): {e}"
                );
                None
            }
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot listen on http.metrics_addr {addr}"))?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        runtime.spawn(http_server(
            listener,
            handle,
            Arc::clone(&health),
            shutdown.clone(),
        ));
    }

    telemetry::model_serving(&model.header.model_id, &model.header.version, None);
    let (reload_tx, reload_rx) = sync_channel::<()>(1);
    if opts.signals {
        runtime.spawn(signals(shutdown.clone(), reload_tx.clone()));
    }
    let watcher = {
        let (core, path, shutdown) = (Arc::clone(&core), cfg.model.path.clone(), shutdown.clone());
        let every = cfg.model_poll_interval();
        let watch = cfg.model.watch;
        std::thread::Builder::new()
            .name("vigil-model".into())
            .spawn(move || watch_model(&core, &path, watch, every, &reload_rx, &shutdown))
            .context("starting the model watcher")?
    };

    let mut extra = Vec::new();
    for task in opts.extra {
        let fut = task(Arc::clone(&core), shutdown.clone());
        let stop = shutdown.clone();
        extra.push(runtime.spawn(async move {
            let r = fut.await;
            if let Err(e) = &r {
                tracing::error!("server task failed: {e:#}");
                stop.trigger();
            }
            r
        }));
    }

    let labels = match (opts.kafka, cfg.labels_topic()) {
        (true, Some(topic)) => {
            let (cfg, topic, core, shutdown) = (
                cfg.clone(),
                topic.to_string(),
                Arc::clone(&core),
                shutdown.clone(),
            );
            Some(
                std::thread::Builder::new()
                    .name("vigil-labels".into())
                    .spawn(move || {
                        let r = stream::labels::run(&cfg, &topic, core, shutdown.clone());
                        if let Err(e) = &r {
                            tracing::error!("labels feed stopped: {e}");
                            shutdown.trigger();
                        }
                        r
                    })
                    .context("starting the labels feed")?,
            )
        }
        _ => None,
    };

    let result = if opts.kafka {
        let r = stream::run(
            &cfg,
            Arc::clone(&core),
            shutdown.clone(),
            Arc::clone(&status),
        );
        match &r {
            Ok(s) => tracing::info!(records = s.records, scored = s.scored, "pipeline stopped"),
            Err(e) => tracing::error!("pipeline stopped: {e}"),
        }
        r.map(|_| ()).map_err(|e| anyhow!(e))
    } else {
        runtime.block_on(shutdown.wait());
        Ok(())
    };
    shutdown.trigger();
    drop(reload_tx);
    let _ = watcher.join();
    if let Some(l) = labels {
        let _ = l.join();
    }
    for task in extra {
        match runtime.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("server task: {e:#}"),
            Err(e) => tracing::error!("server task panicked: {e}"),
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn signals(shutdown: Shutdown, reload: SyncSender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); shutdown.trigger(); }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); shutdown.trigger(); }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the model");
                let _ = reload.try_send(());
            }
            _ = shutdown.wait() => return,
        }
    }
}

/// What identifies a version of the model file on disk.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

fn watch_model(
    core: &ScoringCore,
    path: &Path,
    watch: bool,
    every: Duration,
    forced: &Receiver<()>,
    shutdown: &Shutdown,
) {
    let mut last = stamp(path);
    while !shutdown.is_triggered() {
        let force = match forced.recv_timeout(every) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = stamp(path);
        if force || (watch && now.is_some() && now != last) {
            last = now;
            match reload_model(core, path) {
                Ok(Some(name)) => tracing::info!(model = %name, "model reloaded"),
                Ok(None) => tracing::info!("model file unchanged in content; nothing to do"),
                Err(e) => tracing::error!("{e:#}"),
            }
        }
    }
}

/// Says so when `model` was trained with window state split into another number of partitions
/// than it is served with: its merchant windows then see other transactions than in training
/// (card windows are unaffected). Not an error: the model still scores, with that skew.
pub fn warn_on_partition_mismatch(model: &Model, partitions: u32) {
    let trained = model.header.state_partitions;
    if trained != partitions {
        tracing::warn!(
            model = %model.name(),
            trained_with = trained,
            serving_with = partitions,
            "the model was trained with window state in {trained} partition(s) and is served \
             with {partitions}: merchant windows differ from training; retrain with \
             `vigil train --partitions {partitions}` (or serve from a topic with {trained})"
        );
    }
}

/// Loads `path` and makes it the serving model. `Ok(None)` when it is the serving model
/// already. A file that fails its checks or reads different features is refused and the
/// serving model stays.
pub fn reload_model(core: &ScoringCore, path: &Path) -> Result<Option<String>> {
    let new = match model::load(path, None) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            telemetry::model_reload("invalid");
            return Err(anyhow!(
                "model reload refused, {} keeps serving: {}: {e}",
                core.model().name(),
                path.display()
            ));
        }
    };
    let current = core.model();
    if current.header.version == new.header.version
        && current.header.model_id == new.header.model_id
    {
        return Ok(None);
    }
    match core.replace_model(Arc::clone(&new)) {
        Ok(old) => {
            warn_on_partition_mismatch(&new, core.partitions());
            telemetry::model_reload("ok");
            telemetry::model_serving(
                &new.header.model_id,
                &new.header.version,
                Some((&old.header.model_id, &old.header.version)),
            );
            Ok(Some(new.name()))
        }
        Err(e) => {
            telemetry::model_reload("spec_mismatch");
            Err(anyhow!(
                "model reload refused, {} keeps serving: {}: {e}",
                current.name(),
                path.display()
            ))
        }
    }
}

/// A deliberately small HTTP/1.1 server for three GET endpoints (one request per connection).
async fn http_server(
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
                "/readyz" if health.ready() => ("200 OK", "ready\n".to_string()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "not ready: no partition assigned and rebuilt yet\n".to_string(),
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn default_model_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.vgm")
    }

    #[test]
    fn reload_refuses_bad_files_and_keeps_serving() {
        let model = load_model(&default_model_path()).expect("shipped model");
        let core = ScoringCore::new(Arc::clone(&model), 2, 16);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.vgm");

        // Truncated file: refused, named, old model still serving.
        let bytes = std::fs::read(default_model_path()).expect("bytes");
        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
        let e = reload_model(&core, &path)
            .expect_err("truncated")
            .to_string();
        assert!(e.contains("refused") && e.contains(&model.name()), "{e}");
        assert_eq!(core.model().header.version, model.header.version);

        // Same model again: nothing to do.
        std::fs::write(&path, &bytes).expect("write");
        assert!(reload_model(&core, &path).expect("valid").is_none());

        // (A model reading other features is refused by `ScoringCore::replace_model`; its
        // test is in `service`.)

        // A real new version: swapped in.
        let mut next = model.header.clone();
        next.thresholds = crate::decision::Thresholds::new(0.2, 0.4).expect("thresholds");
        next.version = crate::model::format::content_version(&next, &model.forest);
        crate::model::save(&path, &next, &model.forest).expect("save");
        let name = reload_model(&core, &path).expect("valid").expect("swapped");
        assert!(name.ends_with(&next.version));
        assert_eq!(core.model().header.version, next.version);
    }
}
