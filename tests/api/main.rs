//! The gRPC API at the boundary its users see: a server started with `vigil::api::serve` on
//! port 0, called through the generated client (and the standard health and reflection
//! clients), with the shipped model and rows of the shipped sample history.
//!
//! - [`score`]: Score and ScoreBatch against the in-process scorer, validation, dry runs,
//!   retries, deadlines and message limits.
//! - [`alerts`]: the alert stream (both scoring paths, filters, slow subscribers, shutdown).
//! - [`introspection`]: GetModel, health and reflection.
//! - [`security`]: bearer tokens and TLS.

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod introspection;
mod score;
mod security;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::transport::Endpoint;

use vigil::api::client::{Client, ClientOptions};
use vigil::api::{self, ApiSettings, CoreSlot};
use vigil::proto::{self as pb, codec};
use vigil::record::Transaction;
use vigil::scoring::{ScoringCore, DEFAULT_ALERT_BUFFER};

use support::model;

/// The event time of the hand-written transactions.
const T0: i64 = 1_600_000_000_000;

fn core(partitions: u32) -> Arc<ScoringCore> {
    Arc::new(ScoringCore::new(model(), partitions, DEFAULT_ALERT_BUFFER))
}

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), api::ApiError>>,
}

impl TestServer {
    async fn start(slot: CoreSlot, settings: ApiSettings) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(slot, settings, listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn options(&self) -> ClientOptions {
        ClientOptions {
            addr: self.addr.to_string(),
            ..ClientOptions::default()
        }
    }

    async fn client(&self) -> Client {
        self.options().connect().await.expect("client connects")
    }

    async fn channel(&self) -> tonic::transport::Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("url")
            .connect()
            .await
            .expect("connects")
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within its grace period")
            .expect("server task")
            .expect("server ends cleanly");
    }
}

fn score_req(tx: &Transaction) -> pb::ScoreRequest {
    pb::ScoreRequest {
        transaction: Some(codec::transaction_to_pb(tx)),
        dry_run: false,
        include_features: true,
    }
}

fn events(core: &ScoringCore) -> u64 {
    (0..core.partitions())
        .map(|p| {
            let s = core.stats(p);
            s.events_in_order + s.events_late + s.events_too_late + s.events_duplicate
        })
        .sum()
}
