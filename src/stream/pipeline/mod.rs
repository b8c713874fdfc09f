//! The consume -> score -> produce loop.
//!
//! ```text
//!            poll                 bounded queue (per worker)           send (+ token)
//! transactions ──> reader thread ──────────────────────────> worker ───────────────> producer
//!                  (rebalances,      partition % workers      decode, score,          │
//!                   rebuild,                                  verdict / dead letter   │ delivery
//!                   commits)  <──── OffsetTracker <──────────────────────────────────┘ reports
//! ```
//!
//! **At-least-once** (default). The reader thread polls the consumer, registers each record with
//! the [`OffsetTracker`] and hands it to the worker that owns its partition (so a partition's
//! records are scored in offset order). A worker decodes, scores with the shared
//! [`ScoringCore`], tells the tracker how many messages the record causes and sends them with a
//! token; the producer's delivery callback acknowledges each token. Every `commit_interval` the
//! reader commits, per partition, one past the longest prefix of records whose outputs are all
//! acknowledged. Nothing ever waits for a flush on the hot path. Queues are bounded: a slow
//! producer (its queue full) blocks the worker, whose full queue blocks the reader, which stops
//! polling, so librdkafka's bounded prefetch stops fetching.
//!
//! **Exactly-once** (`kafka.exactly_once`). The reader scores inline and produces inside a Kafka
//! transaction that also carries the consumed offsets (`send_offsets_to_transaction`); a
//! transaction commits every `transaction_records` records or `transaction_interval`. A crash
//! leaves the open transaction to be aborted (fenced by the same `transactional.id` on restart),
//! so read_committed subscribers see each verdict once.
//!
//! **Rebalances.** On revocation the reader waits until the revoked partitions' records are
//! finished, commits them synchronously (or commits the open transaction) and remembers up to
//! which offset its state for them is exact. On assignment a partition is paused; one whose
//! committed offset is not that offset has its state rebuilt (restored from a snapshot plus the
//! tail, or replayed: [`super::rebuild`]) on a thread of its own while the reader goes on
//! polling and scoring the others, and is resumed at its committed offset when ready (see
//! `prepare`). No record of a partition is scored before its state is ready.
//!
//! **Failures.** An output the broker finally refuses (after librdkafka's retries, within
//! `message.timeout.ms`) stops the pipeline with an error: its record is never committed, so the
//! next run scores it again. Test hook: `VIGIL_FAILPOINT_ABORT_AFTER` = N aborts the process
//! (no commit, no flush, no clean-up) after N records have been scored, for crash tests.
//!
//! **Invariants.** Every channel is bounded (the worker queues, librdkafka's producer queue and
//! prefetch). A partition's records are scored in offset order by one thread. Offsets are
//! committed only up to the finished prefix (at-least-once) or with the transaction that holds
//! their outputs (exactly-once). Nothing waits for a flush on the hot path. Nothing panics on a
//! record's content: a record that does not decode becomes a dead letter.
//!
//! The files: [`Clients`] (here) is the setup both modes share; `at_least_once` and
//! `exactly_once` are the two loops, each read top to bottom; `batch` carries records from the
//! reader to the workers; `emit` turns a record into messages and sends them; `rebalance` holds
//! the consumer's callbacks and what the reader shares with them; `prepare` what an assigned
//! partition goes through before it scores.

mod at_least_once;
mod batch;
mod emit;
mod exactly_once;
mod prepare;
mod rebalance;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::Gauge;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::stream::config::StreamConfig;
use crate::telemetry::{self, StreamMetrics};

use super::kafka;
use super::offsets::OffsetTracker;
use super::{Status, StreamError, Summary};
use at_least_once::AtLeastOnce;
use emit::{DeliveryContext, Emitter, Producer_};
use exactly_once::ExactlyOnce;
use rebalance::{Guarantee, ReaderContext, Shared};

/// What the pipeline does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decode, score, publish the verdict (what `vigil serve` does).
    Score,
    /// Copy each record unchanged to the verdicts topic: the benchmark baseline, with the same
    /// clients, threads, queues, batches and commits as `Score` and no decoding or scoring.
    PassThrough,
}

/// Runs the pipeline until `shutdown` is triggered (then drains, flushes and commits) or a
/// fatal error. `core` must be sized with the partition count of the transactions topic.
pub fn run(
    cfg: &StreamConfig,
    core: Arc<ScoringCore>,
    shutdown: Shutdown,
    status: Arc<Status>,
) -> Result<Summary, StreamError> {
    run_mode(cfg, core, shutdown, status, Mode::Score)
}

/// [`run`] in a given [`Mode`] (the benchmark runs both).
pub fn run_mode(
    cfg: &StreamConfig,
    core: Arc<ScoringCore>,
    shutdown: Shutdown,
    status: Arc<Status>,
    mode: Mode,
) -> Result<Summary, StreamError> {
    if cfg.kafka.exactly_once {
        let clients = Clients::connect(cfg, core, status, &shutdown, mode, ExactlyOnce::default())?;
        exactly_once::run(clients, &shutdown)
    } else {
        let clients = Clients::connect(cfg, core, status, &shutdown, mode, AtLeastOnce::default())?;
        at_least_once::run(clients, &shutdown)
    }
}

/// What both loops start from: the producer (whose delivery callback acknowledges outputs to
/// the tracker), the consumer subscribed to the transactions topic (whose context holds the
/// rebalance callbacks) and the state the reader shares with those callbacks.
struct Clients<G: Guarantee> {
    /// Also holds the configuration, the core, the tracker and the producer.
    shared: Arc<Shared<G>>,
    /// Writes the periodic snapshots.
    keeper: Keeper,
    consumer: BaseConsumer<ReaderContext<G>>,
    metrics: StreamMetrics,
    /// Records turned into a verdict or a dead letter, counted by whoever scores them.
    scored: Arc<AtomicU64>,
    /// Records read and not finished, set at each at-least-once commit (exactly-once tracks no
    /// outputs, so it stays at zero).
    in_flight: Gauge,
    mode: Mode,
}

impl<G: Guarantee> Clients<G> {
    /// Creates the producer (warmed up with the output topics' metadata; transactions
    /// initialised if `G` is transactional), then the consumer, subscribed.
    fn connect(
        cfg: &StreamConfig,
        core: Arc<ScoringCore>,
        status: Arc<Status>,
        shutdown: &Shutdown,
        mode: Mode,
        guarantee: G,
    ) -> Result<Clients<G>, StreamError> {
        let k = &cfg.kafka;
        let tracker = Arc::new(OffsetTracker::new());
        let metrics = StreamMetrics::new();
        let transactional_id = G::TRANSACTIONAL.then(|| cfg.transactional_id());
        let producer: Producer_ = kafka::producer_config(cfg, transactional_id.as_deref())
            .create_with_context(DeliveryContext {
                tracker: Arc::clone(&tracker),
                metrics: metrics.clone(),
            })
            .map_err(|e| StreamError::Client(format!("producer: {e}")))?;
        let producer = Arc::new(producer);
        let outputs: Vec<&str> = [Some(k.alerts_topic.as_str()), cfg.verdicts_topic()]
            .into_iter()
            .flatten()
            .chain([k.dlq_topic.as_str()])
            .collect();
        kafka::warm_producer(&producer, &outputs, Duration::from_secs(5));
        if G::TRANSACTIONAL {
            producer
                .init_transactions(Duration::from_secs(30))
                .map_err(|e| StreamError::Transaction(format!("init_transactions: {e}")))?;
        }
        let shared = Arc::new(Shared::new(
            cfg.clone(),
            core,
            tracker,
            producer,
            status,
            shutdown.clone(),
            guarantee,
        )?);
        let consumer: BaseConsumer<ReaderContext<G>> = kafka::consumer_config(cfg, Some(&k.group))
            .create_with_context(ReaderContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| StreamError::Client(format!("consumer: {e}")))?;
        consumer.subscribe(&[&k.transactions_topic]).map_err(|e| {
            StreamError::Client(format!("subscribing to {}: {e}", k.transactions_topic))
        })?;
        let keeper = Keeper::start(&shared)?;
        Ok(Clients {
            keeper,
            shared,
            consumer,
            metrics,
            scored: Arc::new(AtomicU64::new(0)),
            in_flight: telemetry::in_flight(0),
            mode,
        })
    }

    /// An emitter sending with this producer; `tracker` (at-least-once) is told how many
    /// messages each record causes, and the tokens carry the records' slots.
    fn emitter(&self, tracker: Option<Arc<OffsetTracker>>) -> Emitter {
        Emitter::new(
            &self.shared.cfg,
            Arc::clone(&self.shared.core),
            Arc::clone(&self.shared.producer),
            tracker,
            self.metrics.clone(),
            Arc::clone(&self.scored),
            self.mode,
        )
    }

    /// After the loop has finished and committed what it could: leaves the group and reports
    /// the run (`records` read) or the error that stopped it.
    fn close(self, records: u64, fatal: Option<StreamError>) -> Result<Summary, StreamError> {
        self.keeper.stop();
        self.consumer.unsubscribe();
        drop(self.consumer);
        let summary = Summary {
            records,
            scored: self.scored.load(Ordering::Relaxed),
        };
        self.shared.status.assigned.store(false, Ordering::Release);
        match fatal {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

/// The thread that snapshots every assigned partition each `[state] interval` (those whose
/// state moved). Encoding pauses only that partition's scoring; writing pauses nothing.
struct Keeper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Keeper {
    fn start<G: Guarantee>(shared: &Arc<Shared<G>>) -> Result<Keeper, StreamError> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if shared.snapshots.is_none() {
            return Ok(Keeper { stop, thread: None });
        }
        let (shared, flag) = (Arc::clone(shared), Arc::clone(&stop));
        let every = shared.cfg.state.interval();
        let thread = std::thread::Builder::new()
            .name("vigil-snapshots".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                while !flag.load(Ordering::Acquire) && !shared.shutdown.is_triggered() {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() < every {
                        continue;
                    }
                    last = std::time::Instant::now();
                    for p in shared.assigned() {
                        if flag.load(Ordering::Acquire) {
                            break;
                        }
                        shared.snapshot(p);
                    }
                }
            })
            .map_err(|e| StreamError::Client(format!("starting the snapshot thread: {e}")))?;
        Ok(Keeper {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (a snapshot being written is finished first).
    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pipeline that ends without [`Clients::close`] (an error while starting) still stops its
/// snapshot thread.
impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A record the reader does not process ([`OffsetTracker::begin`] said why): logged, and a
/// record delivered again is counted (`vigil_redelivered_records_total`).
fn skipped(partition: i32, offset: i64, skip: super::offsets::Skip) {
    match skip {
        super::offsets::Skip::NotAssigned => {
            tracing::warn!(
                partition,
                offset,
                "record from a partition not assigned here; skipped"
            );
        }
        super::offsets::Skip::Again { last } => {
            telemetry::redelivered(partition);
            tracing::debug!(partition, offset, last, "record delivered again; skipped");
        }
    }
}

/// A partition list of `topic` with the given next offsets.
fn tpl_of(topic: &str, points: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &(p, next) in points {
        // Adding a partition to a fresh list with a valid offset cannot fail.
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(next));
    }
    tpl
}
