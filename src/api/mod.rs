//! The gRPC API: `vigil.v1.Scoring` (Score, ScoreBatch, StreamAlerts, GetModel) over the shared
//! [`ScoringCore`], next to the standard `grpc.health.v1.Health` service and server reflection.
//!
//! - [`serve`] runs the server on a listener until a shutdown future resolves, so `vigil serve`
//!   can run it next to the Kafka loop with one shutdown signal, and tests on port 0.
//! - [`CoreSlot`] holds the core being served, once there is one: health reports NOT_SERVING
//!   (and calls fail with UNAVAILABLE) until a core is set, SERVING after, NOT_SERVING again from
//!   the moment shutdown begins.
//! - [`config`]: [`ApiConfig`] as written (flags or a `[grpc]` TOML table) and the checked
//!   [`ApiSettings`] (TLS material, tokens, limits).
//! - [`handlers`] implements the service with domain types; [`convert`] turns requests into
//!   domain calls and results into responses (transactions and verdicts themselves through
//!   [`crate::proto::codec`]); [`auth`] checks bearer tokens; [`client`] connects a generated
//!   client (used by `vigil score` and the load generator); [`load`] is the load generator.
//!
//! # Semantics a caller can rely on
//!
//! - A scored transaction joins its card's and merchant's history (authorization-time scoring)
//!   in the partition its card id maps to, unless the request sets `dry_run`.
//! - Retries are safe: the feature engine keeps the ids of the transactions it holds, and a
//!   transaction id it already counted (a retried call, or the same transaction later on Kafka,
//!   which routes by the same card partitioner) is scored from the current state and reported as
//!   `PLACEMENT_DUPLICATE`, not added again.
//! - A request that fails validation is refused with INVALID_ARGUMENT naming the field, before
//!   any state is touched; in a batch, only the invalid items are refused.
//! - Deadlines (`grpc-timeout`) count from the request's arrival: a call still waiting for a
//!   concurrency slot when its deadline passes, or whose deadline has passed when its handler
//!   starts scoring, gets DEADLINE_EXCEEDED and changes nothing. A deadline that passes while
//!   the request is still being received is enforced by tonic's own server layer, which answers
//!   CANCELLED ("Timeout expired") and drops the call before it reaches the handler. Scoring one
//!   transaction is never interrupted half-way; a batch checks its deadline every 64
//!   transactions and stops there (what was scored stays scored; a retry is safe, see above).

pub mod auth;
pub mod client;
pub mod config;
pub mod convert;
pub mod handlers;
pub mod load;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::proto as pb;
use crate::scoring::ScoringCore;

pub use config::{ApiConfig, ApiSettings, ConfigError, Tokens};

/// The fully qualified name of the scoring service (as health checks and reflection name it).
pub const SERVICE_NAME: &str = "vigil.v1.Scoring";

/// How long a shutdown waits for in-flight calls (and clients still watching health) before the
/// server stops anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which alerts a StreamAlerts subscriber wants (from [`pb::AlertFilter`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertFilter {
    pub review: bool,
    pub decline: bool,
    pub min_score: f32,
}

/// The scoring core the API serves, once there is one. Cloning shares the slot.
#[derive(Clone)]
pub struct CoreSlot {
    tx: Arc<watch::Sender<Option<Arc<ScoringCore>>>>,
}

impl Default for CoreSlot {
    fn default() -> Self {
        Self::empty()
    }
}

impl CoreSlot {
    /// No core yet: health is NOT_SERVING and calls fail with UNAVAILABLE.
    pub fn empty() -> CoreSlot {
        CoreSlot {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// A slot serving `core` from the start.
    pub fn with(core: Arc<ScoringCore>) -> CoreSlot {
        let slot = CoreSlot::empty();
        slot.set(core);
        slot
    }

    /// Serves `core` from now on (health becomes SERVING).
    pub fn set(&self, core: Arc<ScoringCore>) {
        self.tx.send_replace(Some(core));
    }

    /// Stops serving (health becomes NOT_SERVING; calls fail with UNAVAILABLE).
    pub fn clear(&self) {
        self.tx.send_replace(None);
    }

    pub fn get(&self) -> Option<Arc<ScoringCore>> {
        self.tx.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Option<Arc<ScoringCore>>> {
        self.tx.subscribe()
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("TLS configuration refused: {0}")]
    Tls(tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(tonic::transport::Error),
}

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, reports
/// NOT_SERVING, ends alert streams and waits up to [`SHUTDOWN_GRACE`] for calls in flight.
pub async fn serve<F>(
    slot: CoreSlot,
    settings: ApiSettings,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), ApiError>
where
    F: Future<Output = ()> + Send,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    // Both reflection versions: grpcurl and others try v1, older tools only know v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let (stopping_tx, stopping) = watch::channel(false);
    let api = handlers::ScoringApi::new(slot.clone(), &settings, stopping);
    let scoring = pb::scoring_server::ScoringServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let auth = auth::Auth::new(settings.tokens.clone());

    let mut server = Server::builder()
        .timeout(settings.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some(tls) = &settings.tls {
        let mut cfg =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        if let Some(ca) = &tls.client_ca_pem {
            cfg = cfg.client_ca_root(Certificate::from_pem(ca));
        }
        server = server.tls_config(cfg).map_err(ApiError::Tls)?;
    }
    let router = server
        .add_service(InterceptedService::new(scoring, auth.clone()))
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth));

    // Health follows the slot until shutdown begins (started last: nothing above can fail
    // and leave it running).
    let follower = {
        let health = health.clone();
        let mut rx = slot.subscribe();
        tokio::spawn(async move {
            loop {
                let status = if rx.borrow_and_update().is_some() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                set_health(&health, status).await;
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
    };

    let follower_handle = follower.abort_handle();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (began_tx, began) = tokio::sync::oneshot::channel::<()>();
    let on_shutdown = {
        let health = health.clone();
        async move {
            shutdown.await;
            follower.abort();
            set_health(&health, ServingStatus::NotServing).await;
            stopping_tx.send_replace(true);
            let _ = began_tx.send(());
        }
    };
    let server = router.serve_with_incoming_shutdown(incoming, on_shutdown);
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r.map_err(ApiError::Transport),
        _ = async {
            // Resolves SHUTDOWN_GRACE after shutdown began (never, if it never begins).
            if began.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("gRPC calls still open {SHUTDOWN_GRACE:?} after shutdown began; stopping anyway");
            Ok(())
        }
    };
    follower_handle.abort();
    result
}
