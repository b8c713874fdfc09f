//! `vigil demo` as a library: the whole streaming path in one process, on librdkafka's
//! in-process mock cluster. A producer replays a history to `transactions` (and each label to
//! `labels` when it becomes known), the same [`Server`] `vigil serve` runs scores it (with the
//! gRPC API and the HTTP endpoints when asked for), and a watcher reads the `verdicts` topic back,
//! hands every verdict to the caller and stops the demo once every transaction has one.
//!
//! The mock cluster is for this demo and for fast tests only; the Kafka tests run against a real
//! broker.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::decision::Decision;
use crate::record::{format_timestamp, Transaction};
use crate::serve::{Config, Server};
use crate::shutdown::Shutdown;
use crate::stream::replay::{self, ReplayOptions, ReplaySummary};
use crate::stream::wire::VerdictRecord;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub model: PathBuf,
    /// Partitions of the demo's transactions topic (`None`: the model's, so it is served
    /// exactly the features it learned from).
    pub partitions: Option<u32>,
    /// `/metrics`, `/healthz`, `/readyz` (empty: off).
    pub metrics_addr: String,
    /// The gRPC API on the same scoring state (empty: off).
    pub grpc_addr: String,
}

/// Longest the demo waits for the last verdict.
const DEADLINE: Duration = Duration::from_secs(600);

/// The demo's cluster and server, ready to run.
pub struct Demo {
    /// Kept alive while the demo runs: dropping it stops the cluster.
    mock: MockCluster<'static, DefaultProducerContext>,
    brokers: String,
    server: Server,
}

/// What a demo run did.
#[derive(Debug, Default, Clone)]
pub struct DemoSummary {
    /// What the producer sent.
    pub sent: ReplaySummary,
    /// Transactions with a verdict, and how those were decided.
    pub verdicts: u64,
    pub review: u64,
    pub decline: u64,
    /// Labelled frauds among the transactions with a verdict, and how many were flagged.
    pub frauds: u64,
    pub caught: u64,
    pub seconds: f64,
}

impl Demo {
    /// Starts the mock cluster and binds the server (model loaded and checked, listeners bound:
    /// a busy port is a [`crate::serve::BindError`] before anything runs), then creates the topics.
    pub fn start(opts: &DemoOptions) -> Result<Demo> {
        let mock = MockCluster::new(1).context("starting the mock Kafka cluster")?;
        let brokers = mock.bootstrap_servers();
        let mut cfg = Config::default();
        cfg.kafka.brokers = brokers.clone();
        cfg.kafka.group = "vigil-demo".into();
        cfg.kafka.verdicts_topic = "verdicts".into();
        cfg.kafka.labels_topic = "labels".into();
        cfg.model.path = opts.model.clone();
        // The mock cluster lives as long as the demo: there is never a state to restore.
        cfg.state.snapshots = false;
        cfg.http.metrics_addr = opts.metrics_addr.trim().to_string();
        let grpc = opts.grpc_addr.trim();
        cfg.grpc.enabled = !grpc.is_empty();
        if !grpc.is_empty() {
            cfg.grpc.addr = grpc.to_string();
        }
        crate::config::Layered::validate(&cfg)
            .map_err(|e| anyhow!("demo configuration: {}: {}", e.key, e.message))?;
        let server = Server::bind(cfg)?;
        let partitions = opts
            .partitions
            .unwrap_or(server.model().header.state_partitions)
            .max(1);
        let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
        // librdkafka's mock cluster keeps at most 5 MB per partition and drops the oldest
        // records beyond that: the verdicts are spread over enough partitions that none is
        // dropped before the watcher reads it.
        for (topic, n) in [
            ("transactions", partitions),
            ("alerts", partitions),
            ("verdicts", partitions.max(16)),
            ("transactions.dlq", 1),
            ("labels", 2),
        ] {
            mock.create_topic(topic, n, 1)
                .with_context(|| format!("creating topic {topic} on the mock cluster"))?;
        }
        Ok(Demo {
            mock,
            brokers,
            server,
        })
    }

    /// The mock cluster's bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The server that will score (its model and listening addresses).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Replays `txs` (sorted by time) at `rate` records/s (`None`: as fast as possible) and
    /// scores them until every transaction has a verdict (or the demo's deadline passes, or a
    /// signal stops it). `on_verdict` sees every first verdict of a transaction as the watcher
    /// reads it, with the transaction it is for.
    pub fn run(
        self,
        txs: Arc<Vec<Transaction>>,
        rate: Option<f64>,
        on_verdict: impl FnMut(&VerdictRecord, Option<&Transaction>) + Send + 'static,
    ) -> Result<DemoSummary> {
        let Demo {
            mock,
            brokers,
            server,
        } = self;
        let shutdown = Shutdown::new();
        let producer = {
            let txs = Arc::clone(&txs);
            let opts = ReplayOptions {
                brokers: brokers.clone(),
                topic: "transactions".into(),
                labels_topic: Some("labels".into()),
                label_latency_ms: server.model().spec.label_latency_ms(),
                rate,
                producer: Vec::new(),
                format: Default::default(),
            };
            let shutdown = shutdown.clone();
            std::thread::spawn(move || replay::replay(&txs, &opts, &shutdown, |_| {}))
        };
        let watcher = {
            let (brokers, shutdown, txs) = (brokers.clone(), shutdown.clone(), Arc::clone(&txs));
            std::thread::spawn(move || watch_verdicts(&brokers, &txs, &shutdown, on_verdict))
        };
        let started = Instant::now();
        let served = server.run(shutdown.clone());
        shutdown.trigger();
        let sent = producer
            .join()
            .map_err(|_| anyhow!("the demo producer panicked"))??;
        let mut summary = watcher
            .join()
            .map_err(|_| anyhow!("the demo verdict watcher panicked"))??;
        drop(mock);
        served?;
        summary.sent = sent;
        summary.seconds = started.elapsed().as_secs_f64();
        if summary.verdicts < txs.len() as u64 {
            return Err(anyhow!(
                "only {} of {} transactions got a verdict",
                summary.verdicts,
                txs.len()
            ));
        }
        Ok(summary)
    }
}

/// Reads the verdicts topic, hands each transaction's first verdict to `on_verdict` and counts;
/// triggers `shutdown` once every transaction has a verdict (or after [`DEADLINE`]).
fn watch_verdicts(
    brokers: &str,
    txs: &[Transaction],
    shutdown: &Shutdown,
    mut on_verdict: impl FnMut(&VerdictRecord, Option<&Transaction>),
) -> Result<DemoSummary> {
    let by_id: HashMap<&str, &Transaction> =
        txs.iter().map(|t| (t.transaction_id.as_str(), t)).collect();
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "vigil-demo-watch")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("demo watcher consumer")?;
    consumer
        .subscribe(&["verdicts"])
        .context("subscribing to verdicts")?;
    let mut seen = DemoSummary::default();
    let mut ids: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + DEADLINE;
    while ids.len() < txs.len() && Instant::now() < deadline && !shutdown.is_triggered() {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<VerdictRecord>(p).ok())
        else {
            continue;
        };
        if !ids.insert(v.transaction_id.clone()) {
            continue;
        }
        seen.verdicts += 1;
        let tx = by_id.get(v.transaction_id.as_str()).copied();
        let fraud = tx.is_some_and(|t| t.label == Some(true));
        seen.frauds += u64::from(fraud);
        match v.decision {
            Decision::Approve => {}
            Decision::Review => seen.review += 1,
            Decision::Decline => seen.decline += 1,
        }
        seen.caught += u64::from(fraud && v.decision != Decision::Approve);
        on_verdict(&v, tx);
    }
    shutdown.trigger();
    Ok(seen)
}

/// A ready-to-paste `vigil score` call for the demo's API: the history's busiest card, a minute
/// after its last transaction before two thirds of the history's time span. From the time the
/// replay gets within a month of that moment until the end, the card's windows at that time hold
/// transactions, so the call shows state the Kafka path built. A dry run: scored from that
/// state, recorded nowhere (recorded, a transaction timed ahead of the replay would make its
/// partition's later records late).
pub fn score_example(addr: &str, txs: &[Transaction]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in txs {
        *counts.entry(t.card_id.as_str()).or_default() += 1;
    }
    let busiest = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(card, _)| card);
    let (first, end) = txs.iter().fold((i64::MAX, i64::MIN), |(lo, hi), t| {
        (lo.min(t.timestamp_ms), hi.max(t.timestamp_ms))
    });
    let at = first.saturating_add(end.saturating_sub(first) / 3 * 2);
    let last = busiest.and_then(|c| {
        let card = || txs.iter().filter(move |t| t.card_id == c);
        card()
            .filter(|t| t.timestamp_ms <= at)
            .max_by_key(|t| t.timestamp_ms)
            .or_else(|| card().min_by_key(|t| t.timestamp_ms))
    });
    // Written out field by field to keep the record's order (ids, time, amount, context).
    let text = |v: &str| serde_json::Value::from(v).to_string();
    let json = match last {
        Some(t) => format!(
            r#"{{"transaction_id":"demo-try-1","timestamp":{},"card_id":{},"merchant_id":{},"amount":950.0{}}}"#,
            text(&format_timestamp(t.timestamp_ms.saturating_add(60_000))),
            text(&t.card_id),
            text(&t.merchant_id),
            t.country
                .as_deref()
                .map_or(String::new(), |c| format!(r#","country":{}"#, text(c)))
        ),
        None => r#"{"transaction_id":"demo-try-1","timestamp":"2018-06-20T10:00:00Z","card_id":"c1","merchant_id":"m1","amount":950.0}"#.to_string(),
    };
    // Single-quoted for the shell: a quote inside ends the quoting, is escaped, and reopens it.
    let quoted = json.replace('\'', r"'\''");
    format!("vigil score --addr {addr} --dry-run --features '{quoted}'")
}
