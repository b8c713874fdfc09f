//! Producing a history to a topic: `vigil replay`, the demo's producer and the load generator.
//!
//! Records are transactions (JSON, [`super::wire::encode_transaction`], or protobuf) keyed by card id and
//! partitioned with librdkafka's `murmur2_random`, Kafka's Java default, so a card lands in the
//! partition [`crate::scoring::ScoringCore::partition_of`] routes it to. Record timestamps are
//! the time of sending (not the event time: brokers apply retention to record timestamps).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::record::Transaction;
use crate::shutdown::Shutdown;

use super::wire::{encode_label, InputFormat};
use super::StreamError;

/// Options of one replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub brokers: String,
    pub topic: String,
    /// Also produce each labelled row's label here (known at `label_time` or
    /// `timestamp + label_latency`), in known-at order among the transactions.
    pub labels_topic: Option<String>,
    pub label_latency_ms: i64,
    /// Records per second; `None` = as fast as the producer goes.
    pub rate: Option<f64>,
    /// Extra librdkafka producer properties.
    pub producer: Vec<(String, String)>,
    /// Encoding of the transactions (labels are always JSON).
    pub format: InputFormat,
}

/// Counts of a replay.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ReplaySummary {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub labels: u64,
    pub seconds: f64,
}

#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Acks>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!("replay: a record was not acknowledged: {e}");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Producer settings of `vigil replay`.
pub fn producer_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// Produces `history` (in the order given: event-time order for a sorted history) to
/// `opts.topic`, calling `progress(sent)` about 8 times a second, until done or `shutdown`.
/// Waits for every acknowledgement before returning.
pub fn replay(
    history: &[Transaction],
    opts: &ReplayOptions,
    shutdown: &Shutdown,
    mut progress: impl FnMut(u64),
) -> Result<ReplaySummary, StreamError> {
    let acks = Arc::new(Acks::default());
    let producer: ThreadedProducer<Ctx> = producer_config(&opts.brokers, &opts.producer)
        .create_with_context(Ctx(Arc::clone(&acks)))
        .map_err(|e| StreamError::Client(format!("replay producer: {e}")))?;
    let mut labels = crate::features::LabelSchedule::new(opts.label_latency_ms);
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut summary = ReplaySummary::default();
    for (i, tx) in history.iter().enumerate() {
        if shutdown.is_triggered() {
            break;
        }
        if let Some(rate) = opts.rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        if let Some(topic) = &opts.labels_topic {
            let due: Vec<_> = labels.due(tx.timestamp_ms).collect();
            for label in due {
                send(
                    &producer,
                    topic,
                    label.transaction_id.as_bytes(),
                    &encode_label(&label),
                )?;
                summary.labels += 1;
            }
            labels.push(tx);
        }
        send(
            &producer,
            &opts.topic,
            tx.card_id.as_bytes(),
            &opts.format.encode(tx),
        )?;
        summary.sent += 1;
        if last_progress.elapsed() >= Duration::from_millis(125) {
            last_progress = Instant::now();
            progress(summary.sent);
        }
    }
    if let Some(topic) = &opts.labels_topic {
        let rest: Vec<_> = labels.drain_all().collect();
        for label in rest {
            send(
                &producer,
                topic,
                label.transaction_id.as_bytes(),
                &encode_label(&label),
            )?;
            summary.labels += 1;
        }
    }
    progress(summary.sent);
    let _ = producer.flush(Duration::from_secs(60));
    summary.acknowledged = acks.ok.load(Ordering::Relaxed);
    summary.failed = acks.failed.load(Ordering::Relaxed);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn send(
    producer: &ThreadedProducer<Ctx>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<(), StreamError> {
    let record = BaseRecord::to(topic).key(key).payload(payload);
    super::kafka::send_waiting(producer, record)
        .map_err(|e| StreamError::Delivery(format!("replay to {topic}: {e}")))
}
