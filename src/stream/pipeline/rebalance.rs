//! The state the reader thread shares with the consumer's callbacks, and what happens when
//! partitions move: on revocation the revoked partitions' records are finished and committed
//! (and the offset up to which their state is exact remembered), and their rebuilds, if any,
//! stopped; on assignment a partition is paused until [`super::prepare`] has its state ready.
//!
//! The callbacks run inside `poll`, on the reader thread, so they never race the loop; they
//! share its state through [`Shared`] only because rdkafka hands them the consumer's context.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::state::Snapshots;
use crate::stream::config::StreamConfig;
use crate::stream::offsets::OffsetTracker;
use crate::stream::{Status, StreamError};
use crate::telemetry;

use super::emit::Producer_;
use super::prepare::{rebuild_threads, Rebuilds};

/// What differs between the two modes when partitions are revoked: how the records read so far
/// are finished and made durable. Its value is the mode's own state shared with the callbacks.
pub(super) trait Guarantee: Send + Sync + Sized + 'static {
    /// Whether the producer is transactional (a `transactional.id`, transactions initialised).
    const TRANSACTIONAL: bool;

    /// Before waiting for revoked partitions: hands over what the reader still holds of them,
    /// or waiting for it could not end.
    fn hand_over(&self);

    /// Makes the records read from `parts` durable (their outputs and their offsets); returns,
    /// per partition, the next offset committed.
    fn commit_finished(
        shared: &Shared<Self>,
        consumer: &BaseConsumer<ReaderContext<Self>>,
        parts: &[i32],
    ) -> Result<Vec<(i32, i64)>, StreamError>;
}

/// State shared by the reader thread and the consumer's rebalance callbacks.
pub(super) struct Shared<G> {
    pub(super) cfg: StreamConfig,
    pub(super) core: Arc<ScoringCore>,
    pub(super) tracker: Arc<OffsetTracker>,
    pub(super) producer: Arc<Producer_>,
    /// Partitions assigned by a rebalance (and paused) and not yet prepared by the reader.
    newly_assigned: Mutex<Vec<i32>>,
    /// The partitions whose state is being rebuilt on threads of their own.
    pub(super) rebuilds: Rebuilds,
    /// Per partition, the next offset up to which the core's state is exact (set on
    /// revocation after everything before it finished).
    exact_upto: Mutex<HashMap<i32, i64>>,
    /// The partitions assigned and scoring (state ready).
    assigned: Mutex<Vec<i32>>,
    pub(super) status: Arc<Status>,
    /// The process's shutdown: a rebuild in progress stops when it is triggered.
    pub(super) shutdown: Shutdown,
    /// The mode's own state: batches on their way to the workers, or the open transaction.
    pub(super) guarantee: G,
    /// Where partition state is snapshotted and restored from (`None`: snapshots off).
    pub(super) snapshots: Option<Snapshots>,
}

impl<G: Guarantee> Shared<G> {
    pub(super) fn new(
        cfg: StreamConfig,
        core: Arc<ScoringCore>,
        tracker: Arc<OffsetTracker>,
        producer: Arc<Producer_>,
        status: Arc<Status>,
        shutdown: Shutdown,
        guarantee: G,
    ) -> Result<Shared<G>, StreamError> {
        let snapshots = cfg
            .state
            .open()
            .map_err(|e| StreamError::Client(format!("state store: {e}")))?
            .map(|store| {
                let k = &cfg.kafka;
                Snapshots::new(store, &k.group, &k.transactions_topic, cfg.state.keep)
            });
        if let Some(s) = &snapshots {
            tracing::info!(store = %s.describe(), every = %cfg.state.interval, "state snapshots on");
        }
        Ok(Shared {
            snapshots,
            shutdown,
            cfg,
            core,
            tracker,
            producer,
            newly_assigned: Mutex::new(Vec::new()),
            rebuilds: Rebuilds::new(rebuild_threads()),
            exact_upto: Mutex::new(HashMap::new()),
            assigned: Mutex::new(Vec::new()),
            status,
            guarantee,
        })
    }

    pub(super) fn lock_newly(&self) -> MutexGuard<'_, Vec<i32>> {
        self.newly_assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The offset up to which `partition`'s state was exact when it was last revoked, if it
    /// was (taken: it holds for the assignment that follows only).
    pub(super) fn take_exact_upto(&self, partition: i32) -> Option<i64> {
        self.exact_upto
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition)
    }

    /// `partition` is assigned, its state ready: it scores (and is snapshotted) from now on.
    pub(super) fn mark_ready(&self, partition: i32) {
        let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        if !assigned.contains(&partition) {
            assigned.push(partition);
        }
        telemetry::assigned_partitions(assigned.len());
        self.status.assigned.store(true, Ordering::Release);
    }

    /// Stops every rebuild in progress (at shutdown, before the last commits).
    pub(super) fn stop_rebuilds(&self) {
        self.rebuilds.stop(self, None);
    }

    /// The partitions assigned now and scoring (state ready, tracked).
    pub(super) fn assigned(&self) -> Vec<i32> {
        self.assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Finishes the work of `parts` before they are revoked (or before shutdown), as the mode
    /// does it ([`Guarantee::commit_finished`]). Records up to where their state is exact.
    pub(super) fn finish_partitions(
        &self,
        consumer: &BaseConsumer<ReaderContext<G>>,
        parts: &[i32],
    ) -> Result<(), StreamError> {
        let points = G::commit_finished(self, consumer, parts)?;
        {
            let mut exact = self.exact_upto.lock().unwrap_or_else(|e| e.into_inner());
            for &(p, next) in &points {
                exact.insert(p, next);
            }
        }
        // Whoever gets these partitions next (this process after a restart, or another member)
        // starts from their state at the committed offsets.
        for &p in parts {
            self.snapshot(p);
        }
        Ok(())
    }

    /// Writes a snapshot of `partition` if its state moved since the last one. Failures are
    /// logged and counted, never fatal: a restore falls back to an older snapshot or a replay.
    pub(super) fn snapshot(&self, partition: i32) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let p = partition as u32;
        let written = self.core.snapshot(p, true, |offset, bytes| {
            let started = Instant::now();
            let r = snapshots.save(p, offset, bytes);
            (offset, bytes.len(), started.elapsed(), r)
        });
        let Some((encode, (offset, size, write, result))) = written else {
            return;
        };
        match result {
            Ok(()) => {
                telemetry::snapshot_written(p, encode, Some(write), size);
                tracing::info!(
                    partition,
                    offset,
                    bytes = size,
                    encode_ms = encode.as_millis() as u64,
                    write_ms = write.as_millis() as u64,
                    "state snapshot written"
                );
            }
            Err(e) => {
                telemetry::snapshot_written(p, encode, None, size);
                tracing::warn!(partition, offset, "state snapshot not written: {e}");
            }
        }
    }
}

/// The consumer's context: rebalance callbacks, commit results and lag from the statistics.
pub(super) struct ReaderContext<G> {
    pub(super) shared: Arc<Shared<G>>,
}

impl<G: Guarantee> ClientContext for ReaderContext<G> {
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

impl<G: Guarantee> ConsumerContext for ReaderContext<G> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let s = &self.shared;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = partitions_of(tpl, &s.cfg.kafka.transactions_topic);
                tracing::info!(partitions = ?parts, "partitions revoked");
                s.lock_newly().retain(|p| !parts.contains(p));
                // A partition still rebuilding has scored nothing: nothing of it to finish.
                let stopped = s.rebuilds.stop(s, Some(&parts));
                let scoring: Vec<i32> = parts
                    .iter()
                    .copied()
                    .filter(|p| !stopped.contains(p))
                    .collect();
                // What was read is handed over first, or waiting for it to finish could not end.
                s.guarantee.hand_over();
                if let Err(e) = s.finish_partitions(consumer, &scoring) {
                    tracing::error!("finishing revoked partitions {scoring:?}: {e}");
                }
                for p in &parts {
                    s.tracker.revoke(*p);
                    s.status.remove_partition(*p);
                    if s.core.is_rebuilding(*p as u32) {
                        // Refused for a short history (kept paused): its next owner decides.
                        s.core.reset_partition(*p as u32);
                        s.core.set_rebuilding(*p as u32, false);
                    }
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let topic = &self.shared.cfg.kafka.transactions_topic;
            let parts = partitions_of(tpl, topic);
            tracing::info!(partitions = ?parts, "partitions assigned");
            // Paused before anything is fetched: each is resumed once its state is ready
            // (see `prepare`), so no record of it is scored before.
            let mut paused = TopicPartitionList::new();
            for &p in &parts {
                paused.add_partition(topic, p);
            }
            if let Err(e) = consumer.pause(&paused) {
                tracing::warn!(partitions = ?parts, "pausing assigned partitions: {e}");
            }
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
