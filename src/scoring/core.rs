//! The scoring core one `vigil serve` process shares between its front ends (the Kafka consumer
//! and the gRPC API): the serving model (hot-swappable), window state per partition of the
//! `transactions` topic, pending labels, and the live alert fan-out.
//!
//! # Why state is per partition
//!
//! Kafka assigns partitions, not cards, to the processes of a consumer group. Keeping one
//! [`Scorer`] (feature engine) per partition means state follows its partition on a rebalance,
//! and rebuilding it after a restart is a replay of that one partition in offset order, which is
//! deterministic: verdicts after a restart equal those of a process that never stopped. Card
//! windows are exact (the card is the record key, so all of a card's transactions are in one
//! partition); merchant windows see the merchant's transactions within the partition (see
//! [`crate::partition`] for how training reproduces that split).
//!
//! The gRPC path routes a transaction to its card's partition with the producers' partition
//! function ([`ScoringCore::partition_of`]), so a card scored over gRPC and later seen on Kafka
//! lands in the same state, and the engine's transaction-id de-duplication keeps it from being
//! counted twice.
//!
//! # Concurrency
//!
//! Each partition's state sits behind its own `std::sync::Mutex`, held for one transaction at a
//! time (a few microseconds, never across an await or I/O), so the Kafka loop and concurrent gRPC
//! calls interleave per transaction. The model is an `Arc` swapped under an `RwLock` and picked
//! up by each partition before its next transaction: a transaction is scored entirely by one
//! model, and the verdict names it.
//!
//! # Metrics
//!
//! Every verdict the core makes is counted and timed here, with the path that asked for it
//! (`vigil_verdicts_total{decision,path}`, `vigil_scoring_latency_seconds{path}`,
//! `vigil_score{path}`), so no front end can forget to. Dry runs decide nothing and are not
//! counted.
//!
//! # Alerts
//!
//! Alerts ([`Scored::is_alert`]: a non-approve verdict on a transaction that joined the state,
//! from either path) go to a bounded
//! `tokio::sync::broadcast` channel: a subscriber that falls behind loses the oldest alerts and
//! is told how many (`RecvError::Lagged(n)`); publishing never waits, so no subscriber can slow
//! scoring down.
//!
//! # Partitions being rebuilt
//!
//! While a front end restores or replays a partition's state
//! ([`set_rebuilding`](ScoringCore::set_rebuilding)), calls that would add to that state
//! ([`score_with`](ScoringCore::score_with), the gRPC path) are refused with [`Rebuilding`]
//! instead of writing into a state that is half built (the replay would then count them a
//! second time, or drop them when it resets the state); scoring resumes when it is ready.
//!
//! This module does no I/O and knows nothing of Kafka or protobuf.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::features::{snapshot, EngineStats, EventOutcome};
use crate::model::Model;
use crate::partition::partition_for;
use crate::record::{LabelEvent, Transaction};
use crate::telemetry::{ScoringMetrics, ScoringPath};

use super::scorer::{Scorer, SpecMismatch};
use super::verdict::{Scored, Verdict};

/// Default capacity of the alert fan-out, in alerts per subscriber.
pub const DEFAULT_ALERT_BUFFER: usize = 4096;

/// How many of the latest labels the core remembers to give a partition whose state is reset
/// and rebuilt (see [`ScoringCore::reset_partition`]).
pub const LABEL_MEMORY: usize = 1 << 20;

/// How [`ScoringCore::score_with`] treats one transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreOptions {
    /// Score from the current state without adding the transaction to it (and publish no
    /// alert).
    pub dry_run: bool,
    /// Return the feature row with the verdict.
    pub with_features: bool,
}

/// One partition: its scorer (window state and the labels waiting for their `known_at`, delivered
/// by [`crate::features::Shard`] exactly as the trainer's replay delivers them) and the model
/// generation it uses.
struct Partition {
    scorer: Scorer,
    /// The model generation `scorer` uses.
    generation: u64,
    /// The next offset of the partition's records not in the state, when known: the state is
    /// that of the records before it (plus any scored over gRPC). `None` for fresh state.
    offset: Option<i64>,
    /// The offset of the last snapshot taken of this state.
    snapshotted: Option<i64>,
}

/// A transaction refused because its card's partition is being rebuilt: retry shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the state of partition {partition} (this card's) is being rebuilt; retry shortly")]
pub struct Rebuilding {
    /// The partition being rebuilt.
    pub partition: u32,
}

/// The shared scoring core of a serving process. See the module docs.
pub struct ScoringCore {
    model: RwLock<Arc<Model>>,
    generation: AtomicU64,
    shards: Box<[Mutex<Partition>]>,
    /// Per partition: its state is being restored or replayed (see the module docs).
    rebuilding: Box<[AtomicBool]>,
    alerts: broadcast::Sender<Arc<Verdict>>,
    /// The latest labels (at most [`LABEL_MEMORY`]), queued again for a partition that is reset,
    /// so a rebuild replays its transactions with the labels it had.
    labels: Mutex<std::collections::VecDeque<LabelEvent>>,
    /// Most ms a transaction may be dated after it was received ([`ScoringCore::check_time`]).
    max_future_skew_ms: i64,
    /// The buffer snapshots are encoded into, reused (see [`ScoringCore::snapshot`]).
    snapshot_buf: Mutex<Vec<u8>>,
    /// Verdict metrics per [`ScoringPath`], indexed by `path as usize`.
    metrics: [ScoringMetrics; 2],
}

impl ScoringCore {
    /// A core serving `model`, with fresh state for `partitions` partitions (at least 1) and an
    /// alert fan-out of `alert_buffer` alerts per subscriber.
    pub fn new(model: Arc<Model>, partitions: u32, alert_buffer: usize) -> ScoringCore {
        let partitions = partitions.max(1);
        let shards = (0..partitions)
            .map(|_| Mutex::new(Self::fresh_partition(&model, 0)))
            .collect();
        let (alerts, _) = broadcast::channel(alert_buffer.max(1));
        ScoringCore {
            model: RwLock::new(model),
            generation: AtomicU64::new(0),
            shards,
            rebuilding: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
            alerts,
            labels: Mutex::new(std::collections::VecDeque::new()),
            snapshot_buf: Mutex::new(Vec::new()),
            max_future_skew_ms: crate::record::DEFAULT_MAX_FUTURE_SKEW_MS,
            metrics: ScoringPath::ALL.map(ScoringMetrics::new),
        }
    }

    /// Sets the future-timestamp bound ([`check_time`](Self::check_time)); 0 turns it off.
    pub fn with_max_future_skew(mut self, ms: i64) -> ScoringCore {
        self.max_future_skew_ms = ms;
        self
    }

    /// The event-time rule every front end applies before scoring
    /// ([`crate::record::check_not_future`]): `tx` must not be dated more than
    /// `max_future_skew` after `received_ms` (the Kafka record's timestamp, the clock for
    /// gRPC). A refused transaction is counted (`vigil_future_timestamps_total{path}`) and
    /// never reaches the state, so it cannot move the partition's event time ahead.
    pub fn check_time(
        &self,
        path: ScoringPath,
        tx: &Transaction,
        received_ms: i64,
    ) -> Result<(), crate::record::RecordError> {
        let r = crate::record::check_not_future(tx, received_ms, self.max_future_skew_ms);
        if r.is_err() {
            crate::telemetry::future_timestamp(path);
        }
        r
    }

    /// [`check_time`](Self::check_time) without counting (a replay of records already judged).
    pub fn is_timely(&self, tx: &Transaction, received_ms: i64) -> bool {
        crate::record::check_not_future(tx, received_ms, self.max_future_skew_ms).is_ok()
    }

    fn record(&self, path: ScoringPath, scored: &Scored, started: Instant) {
        if scored.outcome.is_some() {
            let v = &scored.verdict;
            self.metrics[path as usize].verdict(v.decision, v.score, started.elapsed());
        }
        if scored.is_alert() {
            self.publish_alert(Arc::new(scored.verdict.clone()));
        }
    }

    fn fresh_partition(model: &Arc<Model>, generation: u64) -> Partition {
        Partition {
            scorer: Scorer::new(Arc::clone(model)),
            generation,
            offset: None,
            snapshotted: None,
        }
    }

    /// Number of partitions this core keeps state for.
    pub fn partitions(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The partition a card's transactions belong to (Kafka's default partitioner on the card
    /// id; see [`crate::partition`]).
    pub fn partition_of(&self, card_id: &str) -> u32 {
        partition_for(card_id.as_bytes(), self.partitions())
    }

    /// Marks `partition`'s state as being rebuilt (`true`, before a front end restores or
    /// replays it) or ready again (`false`). While it is rebuilt, [`score_with`] refuses the
    /// partition's transactions and no snapshot is taken of it.
    ///
    /// [`score_with`]: Self::score_with
    pub fn set_rebuilding(&self, partition: u32, rebuilding: bool) {
        let i = (partition as usize).min(self.rebuilding.len() - 1);
        self.rebuilding[i].store(rebuilding, Ordering::Release);
    }

    /// Whether `partition`'s state is being rebuilt ([`set_rebuilding`](Self::set_rebuilding)).
    pub fn is_rebuilding(&self, partition: u32) -> bool {
        let i = (partition as usize).min(self.rebuilding.len() - 1);
        self.rebuilding[i].load(Ordering::Acquire)
    }

    /// The model serving now.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.model.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the serving model. The new model must read the same features (the window state
    /// carries over); otherwise it is refused and the current model keeps serving. Transactions
    /// already being scored finish on the old model. Returns the model it replaced.
    pub fn replace_model(&self, model: Arc<Model>) -> Result<Arc<Model>, SpecMismatch> {
        let mut current = self.model.write().unwrap_or_else(|e| e.into_inner());
        if current.header.feature_fingerprint != model.header.feature_fingerprint {
            return Err(SpecMismatch {
                serving: current.header.feature_fingerprint.clone(),
                offered: model.header.feature_fingerprint.clone(),
            });
        }
        let old = std::mem::replace(&mut *current, model);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(old)
    }

    /// Locks a partition's state, bringing it to the current model first.
    fn shard(&self, partition: u32) -> MutexGuard<'_, Partition> {
        let i = (partition as usize).min(self.shards.len() - 1);
        // A panic while holding the lock cannot leave a shard half-updated in a way that matters
        // more than stopping would, so a poisoned lock is used as is.
        let mut shard = self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::Acquire);
        if shard.generation != generation {
            let model = self.model();
            // Same fingerprint by construction (`replace_model` checks it).
            if shard.scorer.set_model(model).is_ok() {
                shard.generation = generation;
            }
        }
        shard
    }

    /// Scores `tx` in its card's partition and adds it to that state (authorization-time
    /// scoring, as the gRPC path does). Alerts go to the alert stream.
    pub fn score(&self, path: ScoringPath, tx: &Transaction) -> Scored {
        self.score_in(path, self.partition_of(&tx.card_id), tx)
    }

    /// [`score`](Self::score), or with `dry_run` a score from the current state that changes
    /// nothing, in the card's partition; optionally returning the feature row (the gRPC `Score`
    /// call). Refused while the card's partition is being rebuilt (dry runs too: a state half
    /// built would give them features no served transaction would get).
    pub fn score_with(
        &self,
        path: ScoringPath,
        tx: &Transaction,
        opts: ScoreOptions,
    ) -> Result<Scored, Rebuilding> {
        let started = Instant::now();
        let partition = self.partition_of(&tx.card_id);
        let scored = {
            let mut shard = self.shard(partition);
            // Checked under the partition's lock: a rebuild marks the partition before it
            // takes the lock to reset or restore it, so nothing is added once it has begun.
            if self.is_rebuilding(partition) {
                return Err(Rebuilding { partition });
            }
            let scorer = &mut shard.scorer;
            let (verdict, outcome) = if opts.dry_run {
                (scorer.peek(tx), None)
            } else {
                let (v, o) = scorer.score(tx);
                (v, Some(o))
            };
            let features = opts.with_features.then(|| scorer.last_features().to_vec());
            Scored {
                verdict,
                outcome,
                features,
            }
        };
        self.record(path, &scored, started);
        Ok(scored)
    }

    /// Scores `tx` in `partition` (on the Kafka path, the partition the record was read from)
    /// and adds it to that state. Alerts go to the alert stream.
    pub fn score_in(&self, path: ScoringPath, partition: u32, tx: &Transaction) -> Scored {
        self.score_record(path, partition, None, tx)
    }

    /// [`score_in`](Self::score_in) for the record at `offset` of the partition: the state then
    /// reflects the records up to and including it (what a snapshot records).
    pub fn score_at(
        &self,
        path: ScoringPath,
        partition: u32,
        offset: i64,
        tx: &Transaction,
    ) -> Scored {
        self.score_record(path, partition, Some(offset), tx)
    }

    fn score_record(
        &self,
        path: ScoringPath,
        partition: u32,
        offset: Option<i64>,
        tx: &Transaction,
    ) -> Scored {
        let started = Instant::now();
        let scored = {
            let mut shard = self.shard(partition);
            let (verdict, outcome) = shard.scorer.score(tx);
            if let Some(o) = offset {
                shard.offset = Some(o + 1);
            }
            Scored {
                verdict,
                outcome: Some(outcome),
                features: None,
            }
        };
        self.record(path, &scored, started);
        scored
    }

    /// Scores `tx` from its card's current state without changing anything (`dry_run`). Dry
    /// runs publish no alerts.
    pub fn peek(&self, tx: &Transaction) -> Verdict {
        let mut shard = self.shard(self.partition_of(&tx.card_id));
        shard.scorer.peek(tx)
    }

    /// Adds `tx` to `partition`'s state without scoring it or publishing anything: rebuilding
    /// state from already-scored history after a restart or a rebalance.
    pub fn warm_in(&self, partition: u32, tx: &Transaction) -> EventOutcome {
        self.shard(partition).scorer.warm(tx)
    }

    /// Records that `partition`'s state now reflects its records before `offset` (after a
    /// replay up to it; records that did not decode change no state).
    pub fn set_offset(&self, partition: u32, offset: i64) {
        self.shard(partition).offset = Some(offset);
    }

    /// The next offset not in `partition`'s state, if known.
    pub fn offset(&self, partition: u32) -> Option<i64> {
        self.shard(partition).offset
    }

    /// Takes a snapshot of `partition`'s state (see [`crate::features::snapshot`]) and hands
    /// it to `write` with the offset it reflects. The state is encoded under the partition's
    /// lock (its scoring waits meanwhile, for the returned duration) into a buffer the core
    /// reuses, and `write` runs after the lock is released. `None` when the offset is unknown,
    /// or when `only_if_moved` and nothing was scored since the last snapshot.
    pub fn snapshot<R>(
        &self,
        partition: u32,
        only_if_moved: bool,
        write: impl FnOnce(i64, &[u8]) -> R,
    ) -> Option<(Duration, R)> {
        if self.is_rebuilding(partition) {
            return None;
        }
        let mut buf = self.snapshot_buf.lock().unwrap_or_else(|e| e.into_inner());
        // The buffer is grown to the state's size (an upper bound of the snapshot's) and its
        // pages touched before the partition is locked: on a VM the first touch of fresh memory
        // costs ~20x the copy (BENCHMARKS.md, "State snapshots"), and scoring must not wait
        // for it.
        let want = self.shard(partition).scorer.engine().stats().state_bytes;
        if buf.capacity() < want {
            buf.clear();
            buf.resize(want + want / 8, 0);
            buf.clear();
        }
        let (offset, encode) = {
            let mut shard = self.shard(partition);
            let offset = shard.offset?;
            if only_if_moved && shard.snapshotted == Some(offset) {
                return None;
            }
            let started = Instant::now();
            let info = snapshot::SnapshotInfo {
                spec_fingerprint: String::new(),
                partition,
                partitions: self.partitions(),
                offset,
                watermark_ms: None,
                entities: 0,
                events: 0,
                pending_labels: 0,
                created_ms: chrono::Utc::now().timestamp_millis(),
            };
            snapshot::encode_into(shard.scorer.state(), info, &mut buf);
            shard.snapshotted = Some(offset);
            (offset, started.elapsed())
        };
        Some((encode, write(offset, &buf)))
    }

    /// Replaces `partition`'s state by the one in snapshot `bytes`, decoded (outside the lock)
    /// for the serving model's spec and this core's partition count; the labels the core has
    /// seen are queued again, as for a [reset](Self::reset_partition) (labels already applied
    /// are applied again to the same transactions, which changes nothing). On error the state
    /// is left as it was.
    pub fn restore_partition(
        &self,
        partition: u32,
        bytes: &[u8],
    ) -> Result<snapshot::SnapshotInfo, snapshot::SnapshotError> {
        let model = self.model();
        let expect = snapshot::Expect {
            spec: &model.spec,
            partition,
            partitions: self.partitions(),
        };
        let (info, state) = snapshot::decode(bytes, expect)?;
        let generation = self.generation.load(Ordering::Acquire);
        let mut fresh = Partition {
            scorer: Scorer::restored(Arc::clone(&model), state),
            generation,
            offset: Some(info.offset),
            snapshotted: Some(info.offset),
        };
        for label in self.labels.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            fresh.scorer.push_label(label.clone());
        }
        let i = (partition as usize).min(self.shards.len() - 1);
        *self.shards[i].lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(info)
    }

    /// Queues a label for every partition (the one holding its transaction applies it when its
    /// event time reaches the label's `known_at`; the others ignore it).
    pub fn observe_label(&self, label: &LabelEvent) {
        {
            let mut log = self.labels.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() >= LABEL_MEMORY {
                log.pop_front();
            }
            log.push_back(label.clone());
        }
        for p in 0..self.partitions() {
            self.shard(p).scorer.push_label(label.clone());
        }
    }

    /// Drops a partition's window state, before rebuilding it from the topic. The labels the
    /// core has seen (the latest [`LABEL_MEMORY`]) are queued again, so the rebuilt state gets
    /// each one when its event time reaches the label's `known_at`.
    pub fn reset_partition(&self, partition: u32) {
        let model = self.model();
        let generation = self.generation.load(Ordering::Acquire);
        let i = (partition as usize).min(self.shards.len() - 1);
        let mut fresh = Self::fresh_partition(&model, generation);
        for label in self.labels.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            fresh.scorer.push_label(label.clone());
        }
        let mut shard = self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
        *shard = fresh;
    }

    /// The event-time watermark of a partition's state (`None` before its first transaction).
    pub fn watermark_ms(&self, partition: u32) -> Option<i64> {
        self.shard(partition).scorer.engine().watermark_ms()
    }

    /// Engine counters of one partition.
    pub fn stats(&self, partition: u32) -> EngineStats {
        self.shard(partition).scorer.engine().stats()
    }

    /// A new subscriber to the alert stream (every non-approve verdict from now on).
    pub fn subscribe_alerts(&self) -> broadcast::Receiver<Arc<Verdict>> {
        self.alerts.subscribe()
    }

    /// Publishes an alert to the current subscribers; never blocks (a lagging subscriber loses
    /// its oldest alerts and is told how many).
    pub fn publish_alert(&self, verdict: Arc<Verdict>) {
        // An error only means there is no subscriber right now.
        let _ = self.alerts.send(verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GRPC: ScoringPath = ScoringPath::Grpc;

    fn model() -> Arc<Model> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.vgm");
        Arc::new(crate::model::load(&path, None).expect("shipped model loads"))
    }

    fn tx(id: &str, card: &str, ts: i64, amount: f64) -> Transaction {
        Transaction {
            transaction_id: id.into(),
            timestamp_ms: ts,
            card_id: card.into(),
            merchant_id: "m1".into(),
            amount,
            label: None,
            label_time_ms: None,
            currency: None,
            mcc: None,
            country: None,
            channel: None,
            lat: None,
            lon: None,
        }
    }

    #[test]
    fn routes_cards_to_their_partition_and_keeps_state_there() {
        let core = ScoringCore::new(model(), 4, 16);
        let t0 = 1_600_000_000_000;
        let p = core.partition_of("card-a");
        core.score(GRPC, &tx("t1", "card-a", t0, 10.0));
        assert_eq!(core.stats(p).events_in_order, 1);
        for other in (0..4).filter(|&q| q != p) {
            assert_eq!(core.stats(other).events_in_order, 0);
        }
        // A dry run changes nothing.
        core.peek(&tx("t2", "card-a", t0 + 1000, 10.0));
        let dry = ScoreOptions {
            dry_run: true,
            with_features: true,
        };
        let s = core
            .score_with(GRPC, &tx("t3", "card-a", t0 + 2000, 10.0), dry)
            .expect("not rebuilding");
        assert!(s.outcome.is_none());
        assert_eq!(
            s.features.map(|f| f.len()),
            Some(core.model().spec.n_features())
        );
        assert_eq!(core.stats(p).events_in_order, 1);
        core.reset_partition(p);
        assert_eq!(core.stats(p).events_in_order, 0);
    }

    #[test]
    fn a_partition_being_rebuilt_refuses_scoring_and_snapshots_until_it_is_ready() {
        let core = ScoringCore::new(model(), 4, 16);
        let t0 = 1_600_000_000_000;
        let p = core.partition_of("card-a");
        let other = (0..4).find(|&q| q != p).expect("four partitions");
        core.set_offset(p, 10);
        core.set_rebuilding(p, true);
        let opts = ScoreOptions::default();
        let err = core
            .score_with(GRPC, &tx("t1", "card-a", t0, 10.0), opts)
            .expect_err("refused while rebuilding");
        assert_eq!(err.partition, p);
        assert!(err.to_string().contains("being rebuilt"), "{err}");
        let dry = ScoreOptions {
            dry_run: true,
            with_features: false,
        };
        assert!(core
            .score_with(GRPC, &tx("t1", "card-a", t0, 10.0), dry)
            .is_err());
        assert!(core.snapshot(p, false, |_, b| b.len()).is_none());
        // The rebuild itself writes (warm_in), and other partitions are unaffected.
        core.warm_in(p, &tx("t0", "card-a", t0 - 1000, 5.0));
        assert_eq!(core.stats(p).events_in_order, 1);
        assert!(!core.is_rebuilding(other));
        core.set_rebuilding(p, false);
        let s = core
            .score_with(GRPC, &tx("t1", "card-a", t0, 10.0), opts)
            .expect("ready again");
        assert!(s.outcome.is_some());
        assert_eq!(core.stats(p).events_in_order, 2);
        assert!(core.snapshot(p, false, |_, b| b.len()).is_some());
    }

    #[test]
    fn replacing_the_model_names_the_new_one_in_verdicts() {
        let m = model();
        let core = ScoringCore::new(Arc::clone(&m), 1, 16);
        let mut renamed = (*m).clone();
        renamed.header.version = "v2".into();
        let old = core
            .replace_model(Arc::new(renamed))
            .expect("same spec is accepted");
        assert_eq!(old.header.version, m.header.version);
        let v = core
            .score(GRPC, &tx("t1", "c", 1_600_000_000_000, 5.0))
            .verdict;
        assert_eq!(&*v.model_version, "v2");

        let mut other_spec = (*m).clone();
        other_spec.header.feature_fingerprint = "different".into();
        assert!(core.replace_model(Arc::new(other_spec)).is_err());
        assert_eq!(core.model().header.version, "v2");
    }

    #[test]
    fn a_reset_partition_gets_the_labels_again() {
        let core = ScoringCore::new(model(), 2, 16);
        let t0 = 1_600_000_000_000;
        let label = LabelEvent {
            transaction_id: "t1".into(),
            fraud: true,
            known_at_ms: t0 + 10,
        };
        core.observe_label(&label);
        let p = core.partition_of("card-a");
        core.reset_partition(p);
        // The label is still queued for the fresh state: it reaches the engine once the
        // partition's event time passes known_at, after its transaction was added.
        core.warm_in(p, &tx("t1", "card-a", t0, 10.0));
        core.warm_in(p, &tx("t2", "card-a", t0 + 20, 10.0));
        assert_eq!(core.stats(p).labels_applied, 1, "{:?}", core.stats(p));
    }

    /// A partition restored from its snapshot scores the next transactions exactly as the
    /// original state does; a snapshot of another spec or partition count is refused and the
    /// state left as it was.
    #[test]
    fn a_partition_restored_from_a_snapshot_scores_as_the_original() {
        let core = ScoringCore::new(model(), 2, 16);
        let t0 = 1_600_000_000_000;
        let p = core.partition_of("card-a");
        for i in 0..50 {
            let t = tx(&format!("t{i}"), "card-a", t0 + i * 60_000, 10.0 + i as f64);
            core.score_at(GRPC, p, i, &t);
        }
        let (_, (offset, bytes)) = core
            .snapshot(p, true, |o, b| (o, b.to_vec()))
            .expect("state has an offset");
        assert_eq!(offset, 50);
        assert!(
            core.snapshot(p, true, |_, _| ()).is_none(),
            "nothing moved since"
        );
        let copy = ScoringCore::new(model(), 2, 16);
        let info = copy.restore_partition(p, &bytes).expect("restores");
        assert_eq!((info.offset, copy.offset(p)), (50, Some(50)));
        let next = tx("t99", "card-a", t0 + 50 * 60_000, 999.0);
        let (a, b) = (core.score(GRPC, &next), copy.score(GRPC, &next));
        assert_eq!(a.verdict.score, b.verdict.score);
        assert_eq!(a.verdict.reasons, b.verdict.reasons);

        let four = ScoringCore::new(model(), 4, 16);
        let err = four
            .restore_partition(p, &bytes)
            .expect_err("partition count");
        assert!(err.to_string().contains("of 4"), "{err}");
        let mut other = (*model()).clone();
        other.spec = Arc::new(
            crate::features::FeatureSpec::from_toml_str(
                "transaction = [\"amount\"]\n[[window]]\nentity = \"card\"\nlengths = [\"1h\"]\naggregates = [\"count\"]\n",
            )
            .expect("spec"),
        );
        let other_core = ScoringCore::new(Arc::new(other), 2, 16);
        let err = other_core.restore_partition(p, &bytes).expect_err("spec");
        assert!(err.to_string().contains("feature spec"), "{err}");
        assert_eq!(
            other_core.stats(p).events_in_order,
            0,
            "state left as it was"
        );
    }

    #[test]
    fn alerts_reach_subscribers_and_lagging_ones_are_told() {
        let core = ScoringCore::new(model(), 1, 2);
        let mut rx = core.subscribe_alerts();
        let v = core
            .score(GRPC, &tx("t1", "c", 1_600_000_000_000, 5.0))
            .verdict;
        for i in 0..3 {
            let mut alert = v.clone();
            alert.transaction_id = format!("a{i}");
            core.publish_alert(Arc::new(alert));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert!(n >= 1),
            other => panic!("expected a lag notice, got {other:?}"),
        }
        // The buffer keeps the newest two.
        assert_eq!(rx.try_recv().expect("kept").transaction_id, "a1");
        assert_eq!(rx.try_recv().expect("kept").transaction_id, "a2");
    }
}
