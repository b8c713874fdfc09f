//! At-least-once: the reader thread hands records to one scoring thread per partition group,
//! and commits, per partition, one past the longest prefix of records whose outputs the broker
//! has all acknowledged (the [`OffsetTracker`] keeps that prefix).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;

use crate::shutdown::Shutdown;
use crate::stream::offsets::OffsetTracker;
use crate::stream::{StreamError, Summary};
use crate::telemetry;

use super::batch::{Batch, Pending, MAX_BATCH, MAX_BATCH_DELAY};
use super::emit::Scratch;
use super::prepare::prepare_assigned;
use super::rebalance::{Guarantee, ReaderContext, Shared};
use super::{tpl_of, Clients};

/// At-least-once's state shared with the rebalance callbacks.
#[derive(Default)]
pub(super) struct AtLeastOnce {
    /// Batches on their way to the workers (`None` until they start, and again once the reader
    /// has handed over its last batches at shutdown, which ends the workers).
    pending: Mutex<Option<Pending>>,
}

impl AtLeastOnce {
    fn lock_pending(&self) -> MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Guarantee for AtLeastOnce {
    const TRANSACTIONAL: bool = false;

    fn hand_over(&self) {
        if let Some(pending) = self.lock_pending().as_mut() {
            if pending.flush_all().is_err() {
                tracing::error!("a scoring thread stopped; revoked records not finished");
            }
        }
    }

    /// Waits for the outputs of `parts` and commits their offsets synchronously.
    fn commit_finished(
        shared: &Shared<Self>,
        consumer: &BaseConsumer<ReaderContext<Self>>,
        parts: &[i32],
    ) -> Result<Vec<(i32, i64)>, StreamError> {
        let tracker = &shared.tracker;
        if !tracker.wait_finished(Some(parts), shared.cfg.shutdown_timeout()) {
            return Err(StreamError::Delivery(tracker.failure().unwrap_or_else(
                || {
                    format!(
                        "outputs of partitions {parts:?} not acknowledged in time ({})",
                        tracker.unfinished(Some(parts))
                    )
                },
            )));
        }
        let points = tracker.commit_points(parts);
        if !points.is_empty() {
            let tpl = tpl_of(&shared.cfg.kafka.transactions_topic, &points);
            let r = consumer.commit(&tpl, CommitMode::Sync);
            telemetry::offset_commit(r.is_ok());
            r.map_err(|e| StreamError::Client(format!("committing offsets: {e}")))?;
        }
        Ok(points)
    }
}

/// The reader loop: poll, hand each record to its partition's worker, commit finished prefixes
/// every `commit_interval`; on shutdown, finish what was read, flush, commit.
pub(super) fn run(
    clients: Clients<AtLeastOnce>,
    shutdown: &Shutdown,
) -> Result<Summary, StreamError> {
    let workers = start_workers(&clients)?;
    let (consumer, shared) = (&clients.consumer, &*clients.shared);
    let (cfg, tracker) = (&shared.cfg, &shared.tracker);
    let topic = &cfg.kafka.transactions_topic;
    let stopped_worker = || {
        StreamError::Delivery(
            tracker
                .failure()
                .unwrap_or_else(|| "a scoring thread stopped".into()),
        )
    };

    let mut records = 0;
    let mut last_flush = Instant::now();
    let mut last_commit = Instant::now();
    let commit_every = cfg.commit_interval();
    let mut fatal: Option<StreamError> = None;
    while !shutdown.is_triggered() {
        // With records pending for the workers, only take what is already there: when nothing
        // is, the partial batches go out at once (batching never waits for more records).
        let have_pending = shared
            .guarantee
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
                let sent = shared
                    .guarantee
                    .lock_pending()
                    .as_mut()
                    .map(|p| p.push(slot, m.key(), m.payload(), broker_ms));
                if sent != Some(Ok(())) {
                    fatal = Some(stopped_worker());
                    break;
                }
            }
        }
        if have_pending && (msg_was_none || flush_due) {
            if let Some(p) = shared.guarantee.lock_pending().as_mut() {
                if p.flush_all().is_err() {
                    fatal = Some(stopped_worker());
                    break;
                }
            }
        }
        if last_commit.elapsed() >= commit_every {
            last_commit = Instant::now();
            commit_now(consumer, tracker, topic);
            clients.in_flight.set(tracker.in_flight() as f64);
        }
        if let Some(why) = tracker.failure() {
            fatal = Some(StreamError::Delivery(why));
            break;
        }
    }

    // Stop: no more records are read. Finish what was read, flush, commit, leave the group.
    tracing::info!("stopping: finishing in-flight records");
    shared.stop_rebuilds();
    // Taking the batches drops the queues' senders: each worker ends after its last batch.
    if let Some(mut p) = shared.guarantee.lock_pending().take() {
        if fatal.is_none() && p.flush_all().is_err() {
            fatal = Some(stopped_worker());
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let _ = shared.producer.flush(cfg.shutdown_timeout());
    if fatal.is_none() {
        if let Err(e) = shared.finish_partitions(consumer, &shared.assigned()) {
            fatal = Some(e);
        }
    } else {
        // Still commit what is finished: only acknowledged prefixes are ever committed.
        commit_now(consumer, tracker, topic);
    }
    clients.close(records, fatal)
}

/// Starts the scoring threads, each behind its bounded queue, and gives the reader their queues.
fn start_workers(clients: &Clients<AtLeastOnce>) -> Result<Vec<JoinHandle<()>>, StreamError> {
    let shared = &clients.shared;
    let cfg = &shared.cfg;
    let mut senders: Vec<SyncSender<Batch>> = Vec::new();
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    // The queue bound is in records; it holds whole batches.
    let queue_batches = (cfg.pipeline.queue_capacity / MAX_BATCH).max(1);
    for i in 0..cfg.workers() {
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(queue_batches);
        let em = clients.emitter(Some(Arc::clone(&shared.tracker)));
        let tracker = Arc::clone(&shared.tracker);
        let handle = std::thread::Builder::new()
            .name(format!("vigil-score-{i}"))
            .spawn(move || {
                let mut scratch = Scratch::default();
                for batch in rx {
                    if let Err(e) = em.emit_batch(&batch, &mut scratch) {
                        // The reader sees the failure and stops the pipeline.
                        tracker.fail(e.to_string());
                        return;
                    }
                }
            })
            .map_err(|e| StreamError::Client(format!("starting a scoring thread: {e}")))?;
        senders.push(tx);
        workers.push(handle);
    }
    *shared.guarantee.lock_pending() = Some(Pending::new(senders));
    Ok(workers)
}

/// Commits, without waiting, what the tracker says is finished since the last commit.
fn commit_now(
    consumer: &BaseConsumer<ReaderContext<AtLeastOnce>>,
    tracker: &OffsetTracker,
    topic: &str,
) {
    let commits = tracker.take_commits();
    if !commits.is_empty() {
        if let Err(e) = consumer.commit(&tpl_of(topic, &commits), CommitMode::Async) {
            tracing::warn!("offset commit: {e}");
        }
    }
}
