//! Turning a record into messages (a verdict for the verdicts and/or alerts topic, or a dead
//! letter) and sending them, each with a token the producer's delivery callback acknowledges.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

use crate::scoring::ScoringCore;
use crate::stream::config::StreamConfig;
use crate::stream::kafka;
use crate::stream::offsets::{OffsetTracker, Slot};
use crate::stream::wire::{
    self, decode_transaction_as, encode_verdict_into, DeadLetterReason, InputFormat, Rejected,
};
use crate::stream::StreamError;
use crate::telemetry::{ScoringPath, StreamMetrics};

use super::batch::{append, Batch, Job};
use super::Mode;

/// What the delivery callback needs to acknowledge one output message.
#[derive(Debug)]
pub(super) struct Token {
    slot: Option<Slot>,
    /// The input record's broker timestamp and event time (epoch ms; -1 unknown).
    broker_ms: i64,
    event_ms: i64,
    /// Whether this output's acknowledgement is the record's end-to-end latency sample.
    primary: bool,
}

/// The producer's context: acknowledges delivered outputs to the tracker, and stops the
/// pipeline (through the tracker's failure) on an output the broker refused for good.
pub(super) struct DeliveryContext {
    pub(super) tracker: Arc<OffsetTracker>,
    pub(super) metrics: StreamMetrics,
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

pub(super) type Producer_ = ThreadedProducer<DeliveryContext>;

/// Everything a worker (or the exactly-once reader) needs to turn a record into messages.
pub(super) struct Emitter {
    core: Arc<ScoringCore>,
    producer: Arc<Producer_>,
    /// At-least-once: told how many messages each record causes, and its slots go in the tokens.
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
pub(super) struct Scratch {
    bytes: Vec<u8>,
    outputs: Vec<Output>,
    expects: Vec<(Slot, u32)>,
}

impl Emitter {
    /// An emitter for `cfg`'s topics; `scored` counts the records it turns into messages.
    pub(super) fn new(
        cfg: &StreamConfig,
        core: Arc<ScoringCore>,
        producer: Arc<Producer_>,
        tracker: Option<Arc<OffsetTracker>>,
        metrics: StreamMetrics,
        scored: Arc<AtomicU64>,
        mode: Mode,
    ) -> Emitter {
        let k = &cfg.kafka;
        Emitter {
            core,
            producer,
            tracker,
            metrics,
            alerts: k.alerts_topic.clone(),
            verdicts: cfg.verdicts_topic().map(str::to_string),
            dlq: k.dlq_topic.clone(),
            source_topic: k.transactions_topic.clone(),
            format: cfg.input_format(),
            scored,
            abort_after: abort_after(),
            mode,
        }
    }

    /// Turns a batch of records into messages: decides every record's outputs, tells the tracker
    /// how many to expect (one lock for the batch, before any is sent, so no acknowledgement
    /// can arrive for an output it does not know), then sends them.
    pub(super) fn emit_batch(
        &self,
        batch: &Batch,
        scratch: &mut Scratch,
    ) -> Result<(), StreamError> {
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
        let received = if job.broker_ms >= 0 {
            job.broker_ms
        } else {
            now
        };
        let decoded = decode_transaction_as(self.format, batch.key(job), batch.payload(job))
            .and_then(|tx| {
                self.core
                    .check_time(ScoringPath::Kafka, &tx, received)
                    .map(|()| tx)
                    .map_err(|e| Rejected {
                        reason: DeadLetterReason::FutureTimestamp,
                        message: e.to_string(),
                    })
            });
        match decoded {
            Ok(tx) => {
                let scored =
                    self.core
                        .score_at(ScoringPath::Kafka, slot.partition as u32, slot.offset, &tx);
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

/// The failpoint for crash tests: `VIGIL_FAILPOINT_ABORT_AFTER` = N aborts the process after N
/// records have been scored.
fn abort_after() -> Option<u64> {
    std::env::var("VIGIL_FAILPOINT_ABORT_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
}
