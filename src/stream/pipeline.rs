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
//! which offset its state for them is exact. On assignment, a partition whose committed offset
//! is not that offset has its state rebuilt (see [`super::rebuild`]) before any of its records
//! is scored.
//!
//! **Failures.** An output the broker finally refuses (after librdkafka's retries, within
//! `message.timeout.ms`) stops the pipeline with an error: its record is never committed, so the
//! next run scores it again. Test hook: `VIGIL_FAILPOINT_ABORT_AFTER` = N aborts the process
//! (no commit, no flush, no clean-up) after N records have been scored, for crash tests.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::config::StreamConfig;
use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, ScoringPath, StreamMetrics};

use super::kafka;
use super::offsets::{OffsetTracker, Slot};
use super::rebuild;
use super::wire::{self, decode_transaction_as, encode_verdict_into, InputFormat};
use super::{Status, StreamError, Summary};

/// What the delivery callback needs to acknowledge one output message.
#[derive(Debug)]
struct Token {
    slot: Option<Slot>,
    /// The input record's broker timestamp and event time (epoch ms; -1 unknown).
    broker_ms: i64,
    event_ms: i64,
    /// Whether this output's acknowledgement is the record's end-to-end latency sample.
    primary: bool,
}

struct DeliveryContext {
    tracker: Arc<OffsetTracker>,
    metrics: StreamMetrics,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Token>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<Token>) {
        match result {
            Ok(_) => {
                if token.primary {
                    self.metrics
                        .acknowledged(wire::now_ms(), token.broker_ms, token.event_ms);
                }
                if let Some(slot) = token.slot {
                    self.tracker.ack(slot);
                }
            }
            Err((e, msg)) => {
                self.metrics.delivery_error();
                let why = format!(
                    "the broker did not acknowledge a message to {} (for input partition {:?}): {e}",
                    msg.topic(),
                    token.slot.map(|s| (s.partition, s.offset))
                );
                tracing::error!("{why}");
                self.tracker.fail(why);
            }
        }
    }
}

type Producer_ = ThreadedProducer<DeliveryContext>;

/// An open Kafka transaction (exactly-once mode).
#[derive(Default)]
struct Txn {
    open: bool,
    records: usize,
    opened: Option<Instant>,
    /// Next offset to consume, per partition, for the offsets sent with the transaction.
    offsets: HashMap<i32, i64>,
}

/// State shared by the reader thread and the consumer's rebalance callbacks.
struct Shared {
    cfg: StreamConfig,
    core: Arc<ScoringCore>,
    tracker: Arc<OffsetTracker>,
    producer: Arc<Producer_>,
    /// Partitions assigned by a rebalance and not yet rebuilt by the reader.
    newly_assigned: Mutex<Vec<i32>>,
    /// Per partition, the next offset up to which the core's state is exact (set on
    /// revocation after everything before it finished).
    exact_upto: Mutex<HashMap<i32, i64>>,
    assigned: Mutex<Vec<i32>>,
    txn: Option<Mutex<Txn>>,
    status: Arc<Status>,
    /// Batches on their way to the workers (at-least-once; `None` until they start).
    pending: Mutex<Option<Pending>>,
}

struct ReaderContext {
    shared: Arc<Shared>,
}

impl ClientContext for ReaderContext {
    fn stats(&self, stats: Statistics) {
        let topic = &self.shared.cfg.kafka.transactions_topic;
        if let Some(t) = stats.topics.get(topic) {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    telemetry::consumer_lag(*p, s.consumer_lag);
                }
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for ReaderContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let s = &self.shared;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = partitions_of(tpl, &s.cfg.kafka.transactions_topic);
                tracing::info!(partitions = ?parts, "partitions revoked");
                s.lock_newly().retain(|p| !parts.contains(p));
                // What was read is handed to the workers first, or waiting for it to finish
                // could not end.
                if let Some(pending) = s.lock_pending().as_mut() {
                    if pending.flush_all().is_err() {
                        tracing::error!("a scoring thread stopped; revoked records not finished");
                    }
                }
                if let Err(e) = s.finish_partitions(consumer, &parts) {
                    tracing::error!("finishing revoked partitions {parts:?}: {e}");
                }
                for p in &parts {
                    s.tracker.revoke(*p);
                }
                let mut assigned = s.assigned.lock().unwrap_or_else(|e| e.into_inner());
                assigned.retain(|p| !parts.contains(p));
                telemetry::assigned_partitions(assigned.len());
                if assigned.is_empty() {
                    s.status.assigned.store(false, Ordering::Release);
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::error!("rebalance error: {e}"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions_of(tpl, &self.shared.cfg.kafka.transactions_topic);
            tracing::info!(partitions = ?parts, "partitions assigned");
            self.shared.lock_newly().extend(parts);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = &result {
            tracing::warn!("offset commit failed: {e}");
        }
        telemetry::offset_commit(result.is_ok());
    }
}

impl Shared {
    fn lock_newly(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.newly_assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finishes the work of `parts` before they are revoked (or before shutdown): waits for
    /// their outputs and commits their offsets synchronously (at-least-once), or commits the
    /// open transaction (exactly-once). Records up to where their state is exact.
    fn finish_partitions(
        &self,
        consumer: &BaseConsumer<ReaderContext>,
        parts: &[i32],
    ) -> Result<(), StreamError> {
        let topic = &self.cfg.kafka.transactions_topic;
        let points = if let Some(txn) = &self.txn {
            let mut txn = txn.lock().unwrap_or_else(|e| e.into_inner());
            let points: Vec<(i32, i64)> = parts
                .iter()
                .filter_map(|p| Some((*p, *txn.offsets.get(p)?)))
                .collect();
            commit_transaction(&self.producer, consumer, &mut txn, topic)?;
            points
        } else {
            if !self
                .tracker
                .wait_finished(Some(parts), self.cfg.shutdown_timeout())
            {
                return Err(StreamError::Delivery(
                    self.tracker.failure().unwrap_or_else(|| {
                        format!("outputs of partitions {parts:?} not acknowledged in time")
                    }),
                ));
            }
            let points = self.tracker.commit_points(parts);
            if !points.is_empty() {
                let tpl = tpl_of(topic, &points);
                let r = consumer.commit(&tpl, CommitMode::Sync);
                telemetry::offset_commit(r.is_ok());
                r.map_err(|e| StreamError::Client(format!("committing offsets: {e}")))?;
            }
            points
        };
        let mut exact = self.exact_upto.lock().unwrap_or_else(|e| e.into_inner());
        for (p, next) in points {
            exact.insert(p, next);
        }
        Ok(())
    }
}

fn tpl_of(topic: &str, points: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &(p, next) in points {
        // Adding a partition to a fresh list with a valid offset cannot fail.
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(next));
    }
    tpl
}

/// Commits the open transaction with its consumed offsets.
fn commit_transaction(
    producer: &Producer_,
    consumer: &BaseConsumer<ReaderContext>,
    txn: &mut Txn,
    topic: &str,
) -> Result<(), StreamError> {
    if !txn.open {
        return Ok(());
    }
    let timeout = Duration::from_secs(30);
    let points: Vec<(i32, i64)> = txn.offsets.iter().map(|(p, o)| (*p, *o)).collect();
    let result = (|| -> KafkaResult<()> {
        if !points.is_empty() {
            let metadata = consumer
                .group_metadata()
                .ok_or(KafkaError::MessageProduction(RDKafkaErrorCode::State))?;
            producer.send_offsets_to_transaction(&tpl_of(topic, &points), &metadata, timeout)?;
        }
        producer.commit_transaction(timeout)
    })();
    txn.open = false;
    txn.records = 0;
    txn.opened = None;
    telemetry::offset_commit(result.is_ok());
    match result {
        Ok(()) => {
            // The offsets are already committed with the transaction (authoritative on Kafka).
            // The same offsets are committed once more by the consumer, after the transaction
            // is durable, for brokers that accept TxnOffsetCommit without storing it
            // (librdkafka's mock cluster): never ahead of committed verdicts.
            if !points.is_empty() {
                if let Err(e) = consumer.commit(&tpl_of(topic, &points), CommitMode::Sync) {
                    tracing::warn!("offset commit after the transaction: {e}");
                }
            }
            Ok(())
        }
        Err(e) => {
            // Whatever was produced in it is discarded; the state already holds those records,
            // so the safe way on is a restart (which rebuilds from the committed offsets).
            let _ = producer.abort_transaction(timeout);
            Err(StreamError::Transaction(e.to_string()))
        }
    }
}

/// Most records handed from the reader to a worker at once. The reader hands over a partial
/// batch as soon as the consumer has nothing more ready, so batching adds no waiting; under load
/// it turns one thread wake-up, one allocation and one tracker lock per record into one per
/// batch.
const MAX_BATCH: usize = 256;

/// Longest a record waits in a partial batch while the consumer keeps returning records of other
/// partitions.
const MAX_BATCH_DELAY: Duration = Duration::from_millis(2);

/// One record handed from the reader to a worker; its bytes live in its [`Batch`].
struct Job {
    slot: Slot,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    broker_ms: i64,
}

/// Records handed from the reader to a worker together, their keys and payloads in one buffer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    jobs: Vec<Job>,
}

impl Batch {
    fn push(&mut self, slot: Slot, key: Option<&[u8]>, payload: Option<&[u8]>, broker_ms: i64) {
        let key = key.map(|k| append(&mut self.bytes, k));
        let payload = payload.map(|p| append(&mut self.bytes, p));
        self.jobs.push(Job {
            slot,
            key,
            payload,
            broker_ms,
        });
    }

    fn key(&self, job: &Job) -> Option<&[u8]> {
        job.key.clone().and_then(|r| self.bytes.get(r))
    }

    fn payload(&self, job: &Job) -> Option<&[u8]> {
        job.payload.clone().and_then(|r| self.bytes.get(r))
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }
}

fn append(buf: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = buf.len();
    buf.extend_from_slice(bytes);
    start..buf.len()
}

/// The reader's batches on their way to the workers. Lives in [`Shared`] because a revocation
/// (inside `poll`) must hand over what is pending before it waits for the revoked partitions.
struct Pending {
    batches: Vec<Batch>,
    senders: Vec<SyncSender<Batch>>,
}

impl Pending {
    /// Queues a record for the worker that owns its partition; hands the batch over when full.
    fn push(
        &mut self,
        slot: Slot,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        broker_ms: i64,
    ) -> Result<(), ()> {
        let w = (slot.partition.unsigned_abs() as usize) % self.senders.len();
        self.batches[w].push(slot, key, payload, broker_ms);
        if self.batches[w].len() >= MAX_BATCH {
            self.flush(w)?;
        }
        Ok(())
    }

    fn flush(&mut self, w: usize) -> Result<(), ()> {
        if self.batches[w].jobs.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batches[w]);
        // Blocks while the worker's queue is full: backpressure reaches the consumer.
        self.senders[w].send(batch).map_err(|_| ())
    }

    fn flush_all(&mut self) -> Result<(), ()> {
        let mut result = Ok(());
        for w in 0..self.batches.len() {
            if self.flush(w).is_err() {
                result = Err(());
            }
        }
        result
    }

    fn is_empty(&self) -> bool {
        self.batches.iter().all(|b| b.jobs.is_empty())
    }
}

/// Everything a worker (or the exactly-once reader) needs to turn a record into messages.
struct Emitter {
    core: Arc<ScoringCore>,
    producer: Arc<Producer_>,
    tracker: Option<Arc<OffsetTracker>>,
    metrics: StreamMetrics,
    alerts: String,
    verdicts: Option<String>,
    dlq: String,
    source_topic: String,
    format: InputFormat,
    scored: Arc<AtomicU64>,
    abort_after: Option<u64>,
    mode: Mode,
}

/// What the pipeline does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decode, score, publish the verdict (what `vigil serve` does).
    Score,
    /// Copy each record unchanged to the verdicts topic: the benchmark baseline, with the same
    /// clients, threads, queues, batches and commits as `Score` and no decoding or scoring.
    PassThrough,
}

/// The messages one record causes, decided before any is sent.
enum Output {
    /// A verdict (JSON in the scratch buffer) for the verdicts topic and/or the alerts topic.
    Verdict {
        card: Range<usize>,
        json: Range<usize>,
        event_ms: i64,
        to_verdicts: bool,
        to_alerts: bool,
    },
    /// The record to the dead-letter topic.
    Dead(wire::Rejected),
    /// The record copied unchanged (pass-through mode).
    Copy,
}

/// A worker's reusable buffers.
#[derive(Default)]
struct Scratch {
    bytes: Vec<u8>,
    outputs: Vec<Output>,
    expects: Vec<(Slot, u32)>,
}

impl Emitter {
    /// Turns a batch of records into messages: decides every record's outputs, tells the tracker
    /// how many to expect (one lock for the batch, before any is sent, so no acknowledgement
    /// can arrive for an output it does not know), then sends them.
    fn emit_batch(&self, batch: &Batch, scratch: &mut Scratch) -> Result<(), StreamError> {
        scratch.bytes.clear();
        scratch.outputs.clear();
        scratch.expects.clear();
        let now = wire::now_ms();
        for job in &batch.jobs {
            self.metrics.record_in();
            let (output, count) = match self.mode {
                Mode::PassThrough => (Output::Copy, 1),
                Mode::Score => self.decide(batch, job, now, &mut scratch.bytes),
            };
            if count == 0 {
                if let Output::Verdict { event_ms, .. } = output {
                    self.metrics.acknowledged(now, job.broker_ms, event_ms);
                }
            }
            scratch.expects.push((job.slot, count));
            scratch.outputs.push(output);
        }
        if let Some(t) = &self.tracker {
            t.expect_many(&scratch.expects);
        }
        for (job, output) in batch.jobs.iter().zip(&scratch.outputs) {
            self.send_outputs(batch, job, output, &scratch.bytes)?;
            let n = self.scored.fetch_add(1, Ordering::Relaxed) + 1;
            if self.abort_after.is_some_and(|limit| n >= limit) {
                tracing::error!("VIGIL_FAILPOINT_ABORT_AFTER reached after {n} records: aborting");
                std::process::abort();
            }
        }
        Ok(())
    }

    /// Decodes and scores one record: its output and how many messages that output is.
    fn decide(&self, batch: &Batch, job: &Job, now: i64, bytes: &mut Vec<u8>) -> (Output, u32) {
        let slot = job.slot;
        match decode_transaction_as(self.format, batch.key(job), batch.payload(job)) {
            Ok(tx) => {
                let scored = self
                    .core
                    .score_in(ScoringPath::Kafka, slot.partition as u32, &tx);
                let v = &scored.verdict;
                let to_alerts = scored.is_alert();
                let to_verdicts = self.verdicts.is_some();
                let card = append(bytes, tx.card_id.as_bytes());
                let start = bytes.len();
                encode_verdict_into(bytes, v, now, slot.partition, slot.offset);
                let output = Output::Verdict {
                    card,
                    json: start..bytes.len(),
                    event_ms: tx.timestamp_ms,
                    to_verdicts,
                    to_alerts,
                };
                (output, u32::from(to_alerts) + u32::from(to_verdicts))
            }
            Err(rejected) => {
                self.metrics.dead_letter(rejected.reason.as_str());
                tracing::debug!(
                    partition = slot.partition,
                    offset = slot.offset,
                    reason = rejected.reason.as_str(),
                    "dead letter: {}",
                    rejected.message
                );
                (Output::Dead(rejected), 1)
            }
        }
    }

    fn send_outputs(
        &self,
        batch: &Batch,
        job: &Job,
        output: &Output,
        bytes: &[u8],
    ) -> Result<(), StreamError> {
        let (slot, broker_ms) = (job.slot, job.broker_ms);
        let ts = broker_ms.to_string();
        let source_ts = || {
            OwnedHeaders::new_with_capacity(1).insert(Header {
                key: wire::HDR_SOURCE_TS,
                value: Some(ts.as_bytes()),
            })
        };
        let empty: &[u8] = &[];
        match output {
            Output::Verdict {
                card,
                json,
                event_ms,
                to_verdicts,
                to_alerts,
            } => {
                let card = bytes.get(card.clone()).unwrap_or(empty);
                let json = bytes.get(json.clone()).unwrap_or(empty);
                let mut primary = true;
                let topics = [
                    self.verdicts.as_deref().filter(|_| *to_verdicts),
                    Some(self.alerts.as_str()).filter(|_| *to_alerts),
                ];
                for topic in topics.into_iter().flatten() {
                    let token = self.token(slot, broker_ms, *event_ms, primary);
                    primary = false;
                    let record = BaseRecord::with_opaque_to(topic, token)
                        .key(card)
                        .payload(json)
                        .headers(source_ts());
                    send(&self.producer, record)?;
                }
            }
            Output::Dead(rejected) => {
                let (partition, offset) = (slot.partition.to_string(), slot.offset.to_string());
                let headers = OwnedHeaders::new_with_capacity(6)
                    .insert(Header {
                        key: wire::HDR_REASON,
                        value: Some(rejected.reason.as_str()),
                    })
                    .insert(Header {
                        key: wire::HDR_ERROR,
                        value: Some(&rejected.message),
                    })
                    .insert(Header {
                        key: wire::HDR_TOPIC,
                        value: Some(&self.source_topic),
                    })
                    .insert(Header {
                        key: wire::HDR_PARTITION,
                        value: Some(&partition),
                    })
                    .insert(Header {
                        key: wire::HDR_OFFSET,
                        value: Some(&offset),
                    })
                    .insert(Header {
                        key: wire::HDR_SOURCE_TS,
                        value: Some(&ts),
                    });
                let token = self.token(slot, broker_ms, -1, true);
                let mut record = BaseRecord::with_opaque_to(&self.dlq, token)
                    .payload(batch.payload(job).unwrap_or(empty))
                    .headers(headers);
                if let Some(k) = batch.key(job) {
                    record = record.key(k);
                }
                send(&self.producer, record)?;
            }
            Output::Copy => {
                let topic = self.verdicts.as_deref().unwrap_or(&self.alerts);
                let token = self.token(slot, broker_ms, -1, true);
                let mut record = BaseRecord::with_opaque_to(topic, token)
                    .payload(batch.payload(job).unwrap_or(empty))
                    .headers(source_ts());
                if let Some(k) = batch.key(job) {
                    record = record.key(k);
                }
                send(&self.producer, record)?;
            }
        }
        Ok(())
    }

    fn token(&self, slot: Slot, broker_ms: i64, event_ms: i64, primary: bool) -> Box<Token> {
        Box::new(Token {
            slot: self.tracker.as_ref().map(|_| slot),
            broker_ms,
            event_ms,
            primary,
        })
    }
}

/// Sends, waiting while the producer's queue is full (backpressure, never dropping).
fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    producer: &Producer_,
    record: BaseRecord<'_, K, P, Box<Token>>,
) -> Result<(), StreamError> {
    let topic = record.topic;
    kafka::send_waiting(producer, record)
        .map_err(|e| StreamError::Delivery(format!("cannot send to {topic}: {e}")))
}

fn abort_after() -> Option<u64> {
    std::env::var("VIGIL_FAILPOINT_ABORT_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
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
    let k = &cfg.kafka;
    let tracker = Arc::new(OffsetTracker::new());
    let metrics = StreamMetrics::new();
    let eos = k.exactly_once;
    let transactional_id = eos.then(|| cfg.transactional_id());
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
    if eos {
        producer
            .init_transactions(Duration::from_secs(30))
            .map_err(|e| StreamError::Transaction(format!("init_transactions: {e}")))?;
    }
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        core: Arc::clone(&core),
        tracker: Arc::clone(&tracker),
        producer: Arc::clone(&producer),
        newly_assigned: Mutex::new(Vec::new()),
        exact_upto: Mutex::new(HashMap::new()),
        assigned: Mutex::new(Vec::new()),
        txn: eos.then(|| Mutex::new(Txn::default())),
        status: Arc::clone(&status),
        pending: Mutex::new(None),
    });
    let consumer: BaseConsumer<ReaderContext> = kafka::consumer_config(cfg, Some(&k.group))
        .create_with_context(ReaderContext {
            shared: Arc::clone(&shared),
        })
        .map_err(|e| StreamError::Client(format!("consumer: {e}")))?;
    consumer.subscribe(&[&k.transactions_topic]).map_err(|e| {
        StreamError::Client(format!("subscribing to {}: {e}", k.transactions_topic))
    })?;

    let scored = Arc::new(AtomicU64::new(0));
    let emitter = |tracker: Option<Arc<OffsetTracker>>| Emitter {
        core: Arc::clone(&core),
        producer: Arc::clone(&producer),
        tracker,
        metrics: metrics.clone(),
        alerts: k.alerts_topic.clone(),
        verdicts: cfg.verdicts_topic().map(str::to_string),
        dlq: k.dlq_topic.clone(),
        source_topic: k.transactions_topic.clone(),
        format: cfg.input_format(),
        scored: Arc::clone(&scored),
        abort_after: abort_after(),
        mode,
    };

    // Scoring threads (at-least-once only).
    let worker_failed = Arc::new(AtomicBool::new(false));
    let mut senders: Vec<SyncSender<Batch>> = Vec::new();
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let inline = if eos {
        Some(emitter(None))
    } else {
        // The queue bound is in records; it holds whole batches.
        let queue_batches = (cfg.pipeline.queue_capacity / MAX_BATCH).max(1);
        for i in 0..cfg.workers() {
            let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(queue_batches);
            let em = emitter(Some(Arc::clone(&tracker)));
            let failed = Arc::clone(&worker_failed);
            let tracker = Arc::clone(&tracker);
            let handle = std::thread::Builder::new()
                .name(format!("vigil-score-{i}"))
                .spawn(move || {
                    let mut scratch = Scratch::default();
                    for batch in rx {
                        if let Err(e) = em.emit_batch(&batch, &mut scratch) {
                            tracker.fail(e.to_string());
                            failed.store(true, Ordering::Release);
                            return;
                        }
                    }
                })
                .map_err(|e| StreamError::Client(format!("starting a scoring thread: {e}")))?;
            senders.push(tx);
            workers.push(handle);
        }
        *shared.lock_pending() = Some(Pending {
            batches: (0..senders.len()).map(|_| Batch::default()).collect(),
            senders,
        });
        None
    };
    let stopped_worker = || {
        StreamError::Delivery(
            tracker
                .failure()
                .unwrap_or_else(|| "a scoring thread stopped".into()),
        )
    };
    // One-record batch for the exactly-once path, which scores inline.
    let mut single = Batch::default();
    let mut scratch = Scratch::default();

    let mut summary = Summary::default();
    let mut last_flush = Instant::now();
    let mut last_commit = Instant::now();
    let commit_every = cfg.commit_interval();
    let in_flight = telemetry::in_flight(0);
    let mut fatal: Option<StreamError> = None;
    while !shutdown.is_triggered() {
        // With records pending for the workers, only take what is already there: when nothing
        // is, the partial batches go out at once (batching never waits for more records).
        let have_pending = shared
            .lock_pending()
            .as_ref()
            .is_some_and(|p| !p.is_empty());
        let wait = if have_pending {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        let msg = consumer.poll(wait);
        // A steady stream keeps `poll` busy; a partition with few records still gets its
        // partial batch handed over within MAX_BATCH_DELAY.
        let msg_was_none = msg.is_none();
        let flush_due = have_pending && last_flush.elapsed() >= MAX_BATCH_DELAY;
        if msg.is_none() || flush_due {
            last_flush = Instant::now();
        }
        // Rebalances happen inside poll: rebuild what was just assigned before scoring from it.
        let newly: Vec<i32> = std::mem::take(&mut *shared.lock_newly());
        if !newly.is_empty() {
            if let Err(e) = on_assigned(&shared, &consumer, &newly) {
                fatal = Some(e);
                break;
            }
        }
        match msg {
            None => {}
            Some(Err(e)) => {
                // Transient broker errors are retried by librdkafka; they are reported here.
                tracing::warn!("consumer: {e}");
            }
            Some(Ok(m)) => {
                let partition = m.partition();
                let Some(slot) = tracker.begin(partition, m.offset()) else {
                    tracing::warn!(
                        partition,
                        "record from a partition not assigned here; skipped"
                    );
                    continue;
                };
                summary.records += 1;
                let broker_ms = m.timestamp().to_millis().unwrap_or(-1);
                if let Some(em) = &inline {
                    let txn = shared.txn.as_ref();
                    if let Some(txn) = txn {
                        let mut t = txn.lock().unwrap_or_else(|e| e.into_inner());
                        if !t.open {
                            if let Err(e) = producer.begin_transaction() {
                                fatal = Some(StreamError::Transaction(format!("begin: {e}")));
                                break;
                            }
                            t.open = true;
                            t.opened = Some(Instant::now());
                        }
                    }
                    single.bytes.clear();
                    single.jobs.clear();
                    single.push(slot, m.key(), m.payload(), broker_ms);
                    if let Err(e) = em.emit_batch(&single, &mut scratch) {
                        fatal = Some(e);
                        break;
                    }
                    // Exactly-once has no tracker-driven commits: forget the record.
                    tracker.expect(slot, 0);
                    if let Some(txn) = txn {
                        let mut t = txn.lock().unwrap_or_else(|e| e.into_inner());
                        t.offsets.insert(partition, slot.offset + 1);
                        t.records += 1;
                    }
                } else {
                    let sent = shared
                        .lock_pending()
                        .as_mut()
                        .map(|p| p.push(slot, m.key(), m.payload(), broker_ms));
                    if sent != Some(Ok(())) {
                        fatal = Some(stopped_worker());
                        break;
                    }
                }
            }
        }
        if have_pending && (msg_was_none || flush_due) {
            if let Some(p) = shared.lock_pending().as_mut() {
                if p.flush_all().is_err() {
                    fatal = Some(stopped_worker());
                    break;
                }
            }
        }
        if let Some(txn) = &shared.txn {
            let mut t = txn.lock().unwrap_or_else(|e| e.into_inner());
            let due = t.records >= cfg.pipeline.transaction_records
                || t.opened
                    .is_some_and(|o| o.elapsed() >= cfg.transaction_interval());
            if t.open && due {
                if let Err(e) =
                    commit_transaction(&producer, &consumer, &mut t, &k.transactions_topic)
                {
                    fatal = Some(e);
                    break;
                }
            }
        } else if last_commit.elapsed() >= commit_every {
            last_commit = Instant::now();
            commit_now(&consumer, &tracker, &k.transactions_topic);
            in_flight.set(tracker.in_flight() as f64);
        }
        if let Some(why) = tracker.failure() {
            fatal = Some(StreamError::Delivery(why));
            break;
        }
    }

    // Stop: no more records are read. Finish what was read, flush, commit, leave the group.
    tracing::info!("stopping: finishing in-flight records");
    if let Some(mut p) = shared.lock_pending().take() {
        if fatal.is_none() && p.flush_all().is_err() {
            fatal = Some(stopped_worker());
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let _ = producer.flush(cfg.shutdown_timeout());
    let assigned: Vec<i32> = shared
        .assigned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if fatal.is_none() {
        if let Err(e) = shared.finish_partitions(&consumer, &assigned) {
            fatal = Some(e);
        }
    } else if !eos {
        // Still commit what is finished: only acknowledged prefixes are ever committed.
        commit_now(&consumer, &tracker, &k.transactions_topic);
    }
    consumer.unsubscribe();
    drop(consumer);
    summary.scored = scored.load(Ordering::Relaxed);
    status.assigned.store(false, Ordering::Release);
    match fatal {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

fn commit_now(consumer: &BaseConsumer<ReaderContext>, tracker: &OffsetTracker, topic: &str) {
    let commits = tracker.take_commits();
    if !commits.is_empty() {
        if let Err(e) = consumer.commit(&tpl_of(topic, &commits), CommitMode::Async) {
            tracing::warn!("offset commit: {e}");
        }
    }
}

/// Prepares newly assigned partitions: tracking, and window state rebuilt unless the state held
/// is already exact at the committed offset.
fn on_assigned(
    shared: &Shared,
    consumer: &BaseConsumer<ReaderContext>,
    parts: &[i32],
) -> Result<(), StreamError> {
    let cfg = &shared.cfg;
    let topic = &cfg.kafka.transactions_topic;
    let mut query = TopicPartitionList::new();
    for &p in parts {
        query.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(query, Duration::from_secs(30))
        .map_err(|e| StreamError::Client(format!("reading committed offsets: {e}")))?;
    for &p in parts {
        if p as u32 >= shared.core.partitions() {
            return Err(StreamError::Client(format!(
                "partition {p} of {topic} is beyond the {} partitions vigil was started with \
                 (partitions were added): restart to size the state for them",
                shared.core.partitions()
            )));
        }
        shared.tracker.assign(p);
        let at = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let exact = shared
            .exact_upto
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        match at {
            _ if !cfg.pipeline.rebuild => shared.core.reset_partition(p as u32),
            Some(c) if exact == Some(c) => {
                tracing::info!(partition = p, offset = c, "state still exact, no rebuild")
            }
            Some(c) => {
                shared.core.reset_partition(p as u32);
                let n = rebuild::rebuild_partition(cfg, &shared.core, p, c)?;
                tracing::info!(partition = p, offset = c, records = n, "state rebuilt");
            }
            None => shared.core.reset_partition(p as u32),
        }
    }
    let mut assigned = shared.assigned.lock().unwrap_or_else(|e| e.into_inner());
    for &p in parts {
        if !assigned.contains(&p) {
            assigned.push(p);
        }
    }
    telemetry::assigned_partitions(assigned.len());
    shared.status.assigned.store(true, Ordering::Release);
    Ok(())
}
