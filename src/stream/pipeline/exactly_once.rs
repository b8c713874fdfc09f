//! Exactly-once: the reader thread scores each record itself and produces its outputs inside a
//! Kafka transaction that also carries the consumed offsets, so the verdicts and the offsets
//! become visible together, or not at all.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;

use crate::shutdown::Shutdown;
use crate::stream::{StreamError, Summary};
use crate::telemetry;

use super::batch::Batch;
use super::emit::{Producer_, Scratch};
use super::prepare::prepare_assigned;
use super::rebalance::{Guarantee, ReaderContext, Shared};
use super::{tpl_of, Clients};

/// Exactly-once's state shared with the rebalance callbacks: the open transaction, which a
/// revocation commits.
#[derive(Default)]
pub(super) struct ExactlyOnce {
    txn: Mutex<Txn>,
}

/// An open Kafka transaction.
#[derive(Default)]
struct Txn {
    open: bool,
    records: usize,
    opened: Option<Instant>,
    /// Next offset to consume, per partition, for the offsets sent with the transaction.
    offsets: HashMap<i32, i64>,
}

impl ExactlyOnce {
    fn lock(&self) -> MutexGuard<'_, Txn> {
        self.txn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Guarantee for ExactlyOnce {
    const TRANSACTIONAL: bool = true;

    /// The reader holds nothing back: every record it read is in the open transaction.
    fn hand_over(&self) {}

    /// Commits the open transaction (all partitions', with their offsets).
    fn commit_finished(
        shared: &Shared<Self>,
        consumer: &BaseConsumer<ReaderContext<Self>>,
        parts: &[i32],
    ) -> Result<Vec<(i32, i64)>, StreamError> {
        let mut txn = shared.guarantee.lock();
        let points: Vec<(i32, i64)> = parts
            .iter()
            .filter_map(|p| Some((*p, *txn.offsets.get(p)?)))
            .collect();
        commit_transaction(
            &shared.producer,
            consumer,
            &mut txn,
            &shared.cfg.kafka.transactions_topic,
        )?;
        Ok(points)
    }
}

/// The reader loop: poll, score each record inline inside the open transaction (beginning one
/// if none is open), commit it every `transaction_records` records or `transaction_interval`;
/// on shutdown, flush and commit the last one.
pub(super) fn run(
    clients: Clients<ExactlyOnce>,
    shutdown: &Shutdown,
) -> Result<Summary, StreamError> {
    let (consumer, shared) = (&clients.consumer, &*clients.shared);
    let (cfg, tracker, producer) = (&shared.cfg, &shared.tracker, &shared.producer);
    let topic = &cfg.kafka.transactions_topic;
    // No tracker: the tokens carry no slots, and the transaction, not the tracker, commits.
    let emitter = clients.emitter(None);
    // One-record batch: the reader scores inline.
    let mut single = Batch::default();
    let mut scratch = Scratch::default();

    let mut records = 0;
    let mut fatal: Option<StreamError> = None;
    while !shutdown.is_triggered() {
        let msg = consumer.poll(Duration::from_millis(100));
        if let Err(e) = prepare_assigned(&clients.shared, consumer) {
            fatal = Some(e);
            break;
        }
        match msg {
            None => {}
            Some(Err(e)) => {
                // Transient broker errors are retried by librdkafka; they are reported here.
                tracing::warn!("consumer: {e}");
            }
            Some(Ok(m)) => {
                let partition = m.partition();
                if shared.core.is_rebuilding(partition as u32) {
                    // Fetched before its pause took hold: the seek on resume reads it again.
                    continue;
                }
                let slot = match tracker.begin(partition, m.offset()) {
                    Ok(slot) => slot,
                    Err(skip) => {
                        super::skipped(partition, m.offset(), skip);
                        continue;
                    }
                };
                records += 1;
                let broker_ms = m.timestamp().to_millis().unwrap_or(-1);
                {
                    let mut t = shared.guarantee.lock();
                    if !t.open {
                        if let Err(e) = producer.begin_transaction() {
                            fatal = Some(StreamError::Transaction(format!("begin: {e}")));
                            break;
                        }
                        t.open = true;
                        t.opened = Some(Instant::now());
                    }
                }
                single.clear();
                single.push(slot, m.key(), m.payload(), broker_ms);
                if let Err(e) = emitter.emit_batch(&single, &mut scratch) {
                    fatal = Some(e);
                    break;
                }
                // Exactly-once has no tracker-driven commits: forget the record.
                tracker.expect(slot, 0);
                let mut t = shared.guarantee.lock();
                t.offsets.insert(partition, slot.offset + 1);
                t.records += 1;
            }
        }
        let mut t = shared.guarantee.lock();
        let due = t.records >= cfg.pipeline.transaction_records
            || t.opened
                .is_some_and(|o| o.elapsed() >= cfg.transaction_interval());
        if t.open && due {
            if let Err(e) = commit_transaction(producer, consumer, &mut t, topic) {
                fatal = Some(e);
                break;
            }
        }
        drop(t);
        if let Some(why) = tracker.failure() {
            fatal = Some(StreamError::Delivery(why));
            break;
        }
    }

    // Stop: no more records are read. Flush, commit the open transaction, leave the group.
    tracing::info!("stopping: finishing in-flight records");
    shared.stop_rebuilds();
    let _ = producer.flush(cfg.shutdown_timeout());
    // After a fatal error nothing more is committed: the open transaction is left to be
    // aborted (fenced by the next run's `transactional.id`), which scores its records again.
    if fatal.is_none() {
        if let Err(e) = shared.finish_partitions(consumer, &shared.assigned()) {
            fatal = Some(e);
        }
    }
    clients.close(records, fatal)
}

/// Commits the open transaction with its consumed offsets.
fn commit_transaction(
    producer: &Producer_,
    consumer: &BaseConsumer<ReaderContext<ExactlyOnce>>,
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
