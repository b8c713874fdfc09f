//! The state the reader thread shares with the consumer's callbacks, and what happens when
//! partitions move: on revocation the revoked partitions' records are finished and committed
//! (and the offset up to which their state is exact remembered); on assignment a partition's
//! state is rebuilt, or kept when it is still exact at the committed offset.
//!
//! The callbacks run inside `poll`, on the reader thread, so they never race the loop; they
//! share its state through [`Shared`] only because rdkafka hands them the consumer's context.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::state::Snapshots;
use crate::stream::config::StreamConfig;
use crate::stream::offsets::OffsetTracker;
use crate::stream::rebuild;
use crate::stream::{Status, StreamError};
use crate::telemetry;

use super::emit::Producer_;

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
    /// Partitions assigned by a rebalance and not yet rebuilt by the reader.
    newly_assigned: Mutex<Vec<i32>>,
    /// Per partition, the next offset up to which the core's state is exact (set on
    /// revocation after everything before it finished).
    exact_upto: Mutex<HashMap<i32, i64>>,
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
            exact_upto: Mutex::new(HashMap::new()),
            assigned: Mutex::new(Vec::new()),
            status,
            guarantee,
        })
    }

    fn lock_newly(&self) -> MutexGuard<'_, Vec<i32>> {
        self.newly_assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The partitions assigned now (rebuilt and tracked).
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
                // What was read is handed over first, or waiting for it to finish could not end.
                s.guarantee.hand_over();
                if let Err(e) = s.finish_partitions(consumer, &parts) {
                    tracing::error!("finishing revoked partitions {parts:?}: {e}");
                }
                for p in &parts {
                    s.tracker.revoke(*p);
                    s.status.remove_partition(*p);
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

/// Restores `partition` from its newest usable snapshot at or before `committed`: returns the
/// snapshot's offset (the tail to replay starts there), or `None` when there is none (the
/// caller replays the whole window). A snapshot that is refused (another spec or partition
/// count, damaged) is logged with the reason and the next older one is tried.
fn restore<G: Guarantee>(shared: &Shared<G>, partition: i32, committed: i64) -> Option<i64> {
    let snapshots = shared.snapshots.as_ref()?;
    let p = partition as u32;
    let candidates = match snapshots.candidates(p, committed) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(partition, "listing snapshots: {e}; replaying instead");
            return None;
        }
    };
    if candidates.is_empty() {
        tracing::info!(partition, committed, store = %snapshots.describe(), "no snapshot at or before the committed offset");
    }
    for stored in candidates {
        let bytes = match snapshots.load(&stored) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(partition, snapshot = %stored.name, "reading a snapshot: {e}");
                continue;
            }
        };
        let started = Instant::now();
        shared
            .status
            .set_partition(partition, format!("loading the snapshot {}", stored.name));
        match shared.core.restore_partition(p, &bytes) {
            Ok(info) => {
                tracing::info!(
                    partition,
                    snapshot = %stored.name,
                    offset = info.offset,
                    entities = info.entities,
                    events = info.events,
                    bytes = bytes.len(),
                    decode_seconds = started.elapsed().as_secs_f64(),
                    "state loaded from a snapshot"
                );
                return Some(info.offset);
            }
            Err(e) => {
                telemetry::restored("refused_snapshot", started.elapsed());
                tracing::warn!(partition, snapshot = %stored.name, "snapshot refused: {e}");
            }
        }
    }
    None
}

/// What the reader does after [`prepare_assigned`].
pub(super) enum Prepared {
    /// Go on: every assigned partition is ready to score.
    Ready,
    /// Stop: the shutdown cut a rebuild short. Not a failure: that partition has scored
    /// nothing, so nothing of it is committed, and its next owner rebuilds it.
    Stopping,
}

/// Rebalances happen inside `poll`: after each poll the reader prepares what was just assigned,
/// before it scores any record from it.
pub(super) fn prepare_assigned<G: Guarantee>(
    shared: &Shared<G>,
    consumer: &BaseConsumer<ReaderContext<G>>,
) -> Result<Prepared, StreamError> {
    let newly: Vec<i32> = std::mem::take(&mut *shared.lock_newly());
    if newly.is_empty() {
        return Ok(Prepared::Ready);
    }
    match on_assigned(shared, consumer, &newly) {
        Ok(()) => Ok(Prepared::Ready),
        Err(e) if shared.shutdown.is_triggered() => {
            tracing::info!("stopping during a state rebuild: {e}");
            Ok(Prepared::Stopping)
        }
        Err(e) => Err(e),
    }
}

/// Prepares newly assigned partitions: tracking, and window state rebuilt unless the state held
/// is already exact at the committed offset.
fn on_assigned<G: Guarantee>(
    shared: &Shared<G>,
    consumer: &BaseConsumer<ReaderContext<G>>,
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
        let started = Instant::now();
        let status = &shared.status;
        status.set_partition(p, "preparing its state");
        let ready = match at {
            _ if !cfg.pipeline.rebuild => {
                shared.core.reset_partition(p as u32);
                telemetry::restored("fresh", started.elapsed());
                "scoring (fresh state: pipeline.rebuild is off)".to_string()
            }
            Some(c) if exact == Some(c) => {
                tracing::info!(partition = p, offset = c, "state still exact, no rebuild");
                telemetry::restored("exact", started.elapsed());
                format!("scoring (state kept, exact at offset {c})")
            }
            Some(c) => match restore(shared, p, c) {
                Some(from) => {
                    let n = rebuild::replay_tail(
                        cfg,
                        &shared.core,
                        p,
                        from,
                        c,
                        &shared.shutdown,
                        &shared.status,
                    )?;
                    shared.core.set_offset(p as u32, c);
                    let took = started.elapsed();
                    telemetry::restored("snapshot", took);
                    tracing::info!(
                        partition = p,
                        snapshot_offset = from,
                        offset = c,
                        tail_records = n,
                        seconds = took.as_secs_f64(),
                        "state restored from a snapshot and its tail replayed"
                    );
                    format!(
                        "scoring (restored from the snapshot at offset {from} + {n} records \
                         replayed, {:.1} s)",
                        took.as_secs_f64()
                    )
                }
                None => {
                    shared.core.reset_partition(p as u32);
                    let n = rebuild::rebuild_partition(
                        cfg,
                        &shared.core,
                        p,
                        c,
                        &shared.shutdown,
                        &shared.status,
                    )?;
                    shared.core.set_offset(p as u32, c);
                    let took = started.elapsed();
                    telemetry::restored("replay", took);
                    tracing::info!(
                        partition = p,
                        offset = c,
                        records = n,
                        seconds = took.as_secs_f64(),
                        "state rebuilt by a full replay (no usable snapshot)"
                    );
                    format!(
                        "scoring (state rebuilt by a full replay of {n} records, {:.1} s)",
                        took.as_secs_f64()
                    )
                }
            },
            None => {
                shared.core.reset_partition(p as u32);
                telemetry::restored("fresh", started.elapsed());
                "scoring (fresh state: no committed offset)".to_string()
            }
        };
        status.set_partition(p, ready);
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
