//! A serving process (`vigil serve`, `vigil demo`) as a library call: one [`run`] whatever the
//! mode, where the Kafka pipeline and the gRPC API are each optional (`kafka.enabled`,
//! `grpc.enabled`) and everything else is always there: the scoring core, the model watcher
//! (file changes and SIGHUP), the HTTP endpoints, the labels feed with Kafka.
//!
//! ```text
//!  signals ──(SIGTERM/SIGINT)──> Shutdown <── any part failing, or the pipeline ending
//!     └─(SIGHUP)──> model watcher ──replace_model──> ScoringCore <── Kafka pipeline (optional)
//!                                                     ^   ^  └──── gRPC API (optional)
//!                                      labels feed ───┘   └─ alert fan-out ─> StreamAlerts
//!  HTTP: /metrics (Prometheus), /healthz (alive), /readyz (core ready; with Kafka, partitions
//!        assigned and rebuilt)
//! ```
//!
//! [`Server::bind`] does everything that can fail on a bad configuration before anything runs
//! (loads and checks the model, reads the gRPC TLS material and tokens, binds both listeners),
//! so a busy port or a missing file stops the command at once; [`Server::run`] then runs until
//! the [`Shutdown`] fires. Start order inside `run`: metrics recorder (metric handles bind to
//! the recorder present when they are made), HTTP, the core (sized from the transactions topic
//! with Kafka, from the configuration without), the gRPC API on it (clients that connected
//! earlier wait in the bound listener's backlog), the model watcher and labels feed, then the
//! pipeline on the calling thread.

pub mod config;
mod http;
mod signals;
pub mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::api::{self, ApiSettings, CoreSlot};
use crate::model::{self, Model};
use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::stream::{self, Status};
use crate::telemetry;

pub use config::Config;
pub use watch::{reload_model, warn_on_partition_mismatch};

/// Loads the model a serving process starts with (the file is checked completely). A missing
/// file is named, and the default path says that it is the default.
pub fn load_model(path: &Path) -> Result<Arc<Model>> {
    match model::load(path, None) {
        Ok(m) => Ok(Arc::new(m)),
        Err(e) => {
            let default = Path::new(config::DEFAULT_MODEL);
            let hint = if path == default && !path.exists() {
                format!(
                    " ({} is the default model path, relative to the working directory: run \
                     from the vigil repository, or name a model with --model / model.path)",
                    default.display()
                )
            } else {
                String::new()
            };
            Err(anyhow!(e).context(format!("cannot use model {}{hint}", path.display())))
        }
    }
}

/// Which listener could not be bound (the CLI words the error with its own flag names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `grpc.addr`
    Grpc,
    /// `http.metrics_addr`
    Http,
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{}: {addr}: cannot listen: {source}{}", self.key(), self.hint())]
pub struct BindError {
    pub listener: Listener,
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

impl BindError {
    /// The configuration key of the address.
    pub fn key(&self) -> &'static str {
        match self.listener {
            Listener::Grpc => "grpc.addr",
            Listener::Http => "http.metrics_addr",
        }
    }

    fn hint(&self) -> &'static str {
        if self.source.kind() == std::io::ErrorKind::AddrInUse {
            " (is another vigil serving there?)"
        } else {
            ""
        }
    }
}

fn bind(listener: Listener, addr: &str) -> Result<std::net::TcpListener, BindError> {
    let err = |source| BindError {
        listener,
        addr: addr.to_string(),
        source,
    };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    // Handed to the tokio runtime later, which needs it non-blocking.
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// A serving process whose model is loaded and whose listeners are bound, not yet running.
pub struct Server {
    cfg: Config,
    model: Arc<Model>,
    grpc: Option<(std::net::TcpListener, ApiSettings)>,
    http: Option<std::net::TcpListener>,
    signals: bool,
}

impl Server {
    /// Loads the model, checks the gRPC settings (reading TLS files and tokens) and binds the
    /// enabled listeners. Errors name the configuration key at fault ([`BindError`] for a
    /// listener).
    pub fn bind(cfg: Config) -> Result<Server> {
        // An `api::ConfigError` (it names its key in `[grpc]`), for the CLI to word with a flag.
        let settings = if cfg.grpc.enabled {
            Some(cfg.grpc.check()?)
        } else {
            None
        };
        let model = load_model(&cfg.model.path)?;
        let grpc = match settings {
            Some(s) => Some((bind(Listener::Grpc, cfg.grpc.addr.trim())?, s)),
            None => None,
        };
        let http = match cfg.http.addr() {
            Some(addr) => Some(bind(Listener::Http, &addr.to_string())?),
            None => None,
        };
        Ok(Server {
            cfg,
            model,
            grpc,
            http,
            signals: true,
        })
    }

    /// Whether SIGTERM/SIGINT shut the process down and SIGHUP reloads the model (default on;
    /// tests and embedders that run several servers in one process turn it off).
    pub fn handle_signals(mut self, on: bool) -> Server {
        self.signals = on;
        self
    }

    /// The address the gRPC API listens on (port 0 resolved), if it is on.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// `TLS, 2 bearer token(s)`, `plaintext, no authentication`: how the gRPC API is secured.
    pub fn grpc_security(&self) -> Option<String> {
        self.grpc.as_ref().map(|(_, s)| {
            let tls = if s.tls.is_some() { "TLS" } else { "plaintext" };
            let auth = if s.tokens.is_empty() {
                "no authentication".to_string()
            } else {
                format!("{} bearer token(s)", s.tokens.len())
            };
            format!("{tls}, {auth}")
        })
    }

    /// The address of `/metrics`, `/healthz`, `/readyz`, if they are on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The model it will start serving.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Runs until `shutdown` fires (a signal, or any part failing) and everything has stopped.
    /// Returns the first error that stopped it.
    pub fn run(self, shutdown: Shutdown) -> Result<()> {
        let Server {
            cfg,
            model,
            grpc,
            http,
            signals,
        } = self;
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if cfg.grpc.threads > 0 {
            runtime.worker_threads(cfg.grpc.threads);
        }
        let runtime = runtime
            .thread_name("vigil-io")
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        // Listeners join the runtime's reactor inside its context; the guard is dropped before
        // `serve_core`, whose Kafka admin calls run runtimes of their own.
        let guard = runtime.enter();

        // The recorder first: metric handles bind to the recorder present when they are made.
        let metrics = http
            .as_ref()
            .and_then(|_| match telemetry::install_prometheus() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(
                        "metrics recorder not installed (already one in this process?): {e}"
                    );
                    None
                }
            });
        let status = Arc::new(Status::default());
        let health = Arc::new(http::Health {
            core: Default::default(),
            kafka: cfg.kafka.enabled.then(|| Arc::clone(&status)),
        });
        let mut tasks = Vec::new();
        if let Some(listener) = http {
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("HTTP listener: cannot hand it to the runtime")?;
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
            }
            let task = http::serve(listener, metrics, Arc::clone(&health), shutdown.clone());
            tasks.push((
                "HTTP endpoints",
                runtime.spawn(async move {
                    task.await;
                    Ok(())
                }),
            ));
        }
        // Bound already: a client connecting now waits in the listen backlog until the API
        // serves, which it does once the core exists.
        let grpc = match grpc {
            Some((listener, settings)) => Some((
                tokio::net::TcpListener::from_std(listener)
                    .context("gRPC listener: cannot hand it to the runtime")?,
                settings,
            )),
            None => None,
        };
        let (reload_tx, reload_rx) = sync_channel::<()>(1);
        if signals {
            runtime.spawn(signals::handle(shutdown.clone(), reload_tx.clone()));
        }
        drop(guard);

        let result = core_for(&cfg, model).and_then(|core| {
            if let Some((listener, settings)) = grpc {
                tasks.push((
                    "gRPC API",
                    spawn_grpc(&runtime, &core, listener, settings, &shutdown)?,
                ));
            }
            health.core.store(true, Ordering::Release);
            serve_core(&cfg, &runtime, core, &status, reload_rx, &shutdown)
        });
        if let Err(e) = &result {
            tracing::error!("{e:#}");
        }
        shutdown.trigger();
        drop(reload_tx);
        let mut first_error = result.err();
        for (name, task) in tasks {
            let r = match runtime.block_on(task) {
                Ok(r) => r,
                Err(e) => Err(anyhow!("{name} panicked: {e}")),
            };
            if let Err(e) = r {
                tracing::error!("{name}: {e:#}");
                first_error.get_or_insert(e);
            }
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
        first_error.map_or(Ok(()), Err)
    }
}

/// Binds and runs: [`Server::bind`] then [`Server::run`].
pub fn run(cfg: Config, shutdown: Shutdown) -> Result<()> {
    Server::bind(cfg)?.run(shutdown)
}

/// The scoring core: the model, state for as many partitions as the transactions topic has
/// (created first with `kafka.create_topics`), or as configured without Kafka.
fn core_for(cfg: &Config, model: Arc<Model>) -> Result<Arc<ScoringCore>> {
    let stream_cfg = cfg.stream();
    let partitions = if cfg.kafka.enabled {
        let k = &cfg.kafka;
        if k.create_topics {
            let mut topics = vec![
                k.transactions_topic.as_str(),
                k.alerts_topic.as_str(),
                k.dlq_topic.as_str(),
            ];
            topics.extend(stream_cfg.verdicts_topic());
            topics.extend(stream_cfg.labels_topic());
            stream::kafka::ensure_topics(&k.brokers, &topics, k.create_partitions)?;
        }
        stream::kafka::topic_partitions(
            &stream_cfg,
            &k.transactions_topic,
            Duration::from_secs(30),
        )?
    } else {
        match cfg.scoring.partitions {
            0 => model.header.state_partitions.max(1),
            n => n,
        }
    };
    warn_on_partition_mismatch(&model, partitions);
    let core = Arc::new(
        ScoringCore::new(Arc::clone(&model), partitions, cfg.scoring.alert_buffer)
            .with_max_future_skew(cfg.scoring.max_future_skew_ms()),
    );
    telemetry::model_serving(&model.header.model_id, &model.header.version, None);
    tracing::info!(
        "serving model {} with {partitions} partition(s) of state",
        model.name()
    );
    Ok(core)
}

/// The gRPC API on `core` until `shutdown`.
fn spawn_grpc(
    runtime: &tokio::runtime::Runtime,
    core: &Arc<ScoringCore>,
    listener: tokio::net::TcpListener,
    settings: ApiSettings,
    shutdown: &Shutdown,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let local = listener
        .local_addr()
        .context("the gRPC listener has no address")?;
    if settings.tokens.is_empty() && !local.ip().is_loopback() {
        tracing::warn!("the gRPC API accepts calls from the network without authentication");
    }
    tracing::info!(addr = %local, "gRPC API serving");
    let (slot, stop) = (CoreSlot::with(Arc::clone(core)), shutdown.clone());
    Ok(runtime.spawn(async move {
        let r = api::serve(slot, settings, listener, async move { stop.wait().await })
            .await
            .context("gRPC server stopped");
        tracing::info!("gRPC API stopped");
        r
    }))
}

/// The part of [`Server::run`] once the core exists: the model watcher, the labels feed and
/// the pipeline (or, without Kafka, waiting for the shutdown).
fn serve_core(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    core: Arc<ScoringCore>,
    status: &Arc<Status>,
    reload: std::sync::mpsc::Receiver<()>,
    shutdown: &Shutdown,
) -> Result<()> {
    let stream_cfg = cfg.stream();
    let watcher = {
        let (core, path, shutdown) = (Arc::clone(&core), cfg.model.path.clone(), shutdown.clone());
        let (watch, every) = (cfg.model.watch, cfg.model.poll_interval());
        std::thread::Builder::new()
            .name("vigil-model".into())
            .spawn(move || watch::run(&core, &path, watch, every, &reload, &shutdown))
            .context("starting the model watcher")?
    };
    let labels = match (cfg.kafka.enabled, stream_cfg.labels_topic()) {
        (true, Some(topic)) => {
            let (cfg, topic, core, shutdown) = (
                stream_cfg.clone(),
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

    let result = if cfg.kafka.enabled {
        let r = stream::run(
            &stream_cfg,
            Arc::clone(&core),
            shutdown.clone(),
            Arc::clone(status),
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
    let _ = watcher.join();
    if let Some(l) = labels {
        let _ = l.join();
    }
    result
}
