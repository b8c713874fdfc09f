//! Per-card and per-merchant sliding-window features in event time.
//!
//! One implementation serves both the trainer (which [`replay`]s history) and the live scorer
//! (which calls [`FeatureEngine::process`] one event at a time), so a model is served exactly the
//! features it was trained on. The features themselves are declared in a TOML [`FeatureSpec`]
//! (`training/features.toml` is the default); this module does no I/O besides
//! [`FeatureSpec::load`] and knows nothing of CSV, Kafka or gRPC.
//!
//! # Semantics (the contract the tests check against a brute-force implementation)
//!
//! **Watermark.** The engine's watermark is the largest event time processed so far. An event
//! with time `t` is
//! - *in order* when `t >= watermark` (it then moves the watermark to `t`),
//! - *late* when `watermark - allowed_lateness <= t < watermark`: it is placed exactly where it
//!   belongs in event-time order, so every later event sees it in its windows,
//! - *too late* otherwise, handled by the spec's `too_late` policy, never silently dropped:
//!   `score_only` (default) scores it from current state at its own time but does not add it to
//!   state; `clamp` treats it, for every windowed feature, as if it happened at
//!   `watermark - allowed_lateness` and adds it there. Both are counted in
//!   [`EngineStats::events_too_late`].
//!
//! **Windows.** For an event `e` at (window) time `t`, a window of length `W` of entity `E` holds
//! the events of `E` processed *before* `e` with time in `(t - W, t]`: same-timestamp events
//! processed earlier are included, events processed earlier but with a later timestamp (possible
//! when `e` is late) are not. With `include_current = true`, `e` itself is added. Windows are exact
//! per-event look-backs, not buckets.
//!
//! **Previous event.** The latest event of the entity processed before `e` with time `<= t`
//! (ties: the one processed last) and still inside the retention (below).
//!
//! **Label-delayed risk.** A `[[risk]]` feature of length `W` and delay `D` looks at the entity's
//! events (processed before `e`) with time in `(t - D - W, t - D]`. `..._risk_count_...` is their
//! number; `..._risk_...` is the share of them with a fraud label *known by* `t` (`known_at <= t`
//! of the latest label observed for that transaction), 0 when the window is empty. The current
//! event never counts: its label cannot be known yet.
//!
//! **Labels.** [`FeatureEngine::observe_label`] attaches a label to the held transaction with
//! that id (the latest one, should an id be reused); a later label for the same transaction
//! replaces the earlier one. A label for a transaction the engine does not hold (never seen,
//! scored as too late, already evicted, or arriving before its transaction) is counted in
//! [`EngineStats::labels_ignored`] and otherwise ignored. Offline, [`replay`] delivers the label
//! of transaction `i` (`Transaction::label_event(label_latency)`) right before the first
//! transaction `j > i` with `timestamp >= known_at`; labels are ordered by `(known_at, i)`.
//!
//! **Retention and eviction.** The engine keeps the events of the last
//! `max_lookback + allowed_lateness` of event time behind the watermark
//! ([`FeatureSpec::retention_ms`]); anything at or before that horizon is evicted (when its entity
//! is next touched, and by a sweep of all entities every eighth of the retention), and entities
//! left without events are removed, so memory is bounded by one retention period of traffic.
//! Features never read an event at or before the horizon, whether or not it has been swept yet,
//! so eviction timing never changes a value. Only a too-late event under `score_only` can have a
//! window reaching past the horizon; it sees the retained part.
//!
//! **Values.** Every feature is a finite `f32` (never NaN): empty windows give 0 for every
//! aggregate, ratios with a zero denominator give 0, a missing previous event gives 0 for the
//! "changed"/speed flags and the retention length (in seconds) for `secs_since_prev`. Each
//! feature's exact definition is on its spec enum ([`Agg`], [`DistinctOut`], [`PrevOut`],
//! [`TxFeature`], [`FeatureKind::Risk`]).
//!
//! **Hashing.** Entity ids and transaction ids are hashed once to 64 bits (FxHash); distinct
//! counts compare 32-bit hashes of the values. A collision (~1e-9 for a million ids; ~1e-7 among
//! the tens of values in one window) would merge two entities or values; the cost of carrying
//! strings instead is not worth that risk for a fraud score. Only the ids and attributes the
//! spec reads are hashed (the transaction id only when there are risk features).

mod engine;
mod spec;
mod table;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

pub use engine::{EngineStats, EventOutcome, FeatureEngine, LabelOutcome};
pub use spec::{
    format_duration, parse_duration, Agg, Attr, DistinctOut, Entity, FeatureKind, FeatureSpec,
    PrevOut, SpecError, TooLatePolicy, TxFeature,
};

use crate::record::{LabelEvent, Transaction};

/// Pending labels of a history, delivered when they become known.
///
/// A history row carries its own label; a live system would only learn it later (`label_time`,
/// else `timestamp + label_latency`). Merging the labels back into the transaction stream at
/// their `known_at` is what keeps offline features (training) equal to online ones (serving), so
/// every caller that replays history should do it the same way: [`replay`] uses this, and so
/// can an evaluator that drives a [`FeatureEngine`] itself.
///
/// Typical loop: for each transaction, first deliver [`due`](Self::due)`(tx.timestamp_ms)` to the
/// engine, then process the transaction, then [`push`](Self::push) it; at the end deliver
/// [`drain_all`](Self::drain_all).
#[derive(Debug, Default)]
pub struct LabelSchedule {
    default_latency_ms: i64,
    /// Min-heap on `(known_at, insertion order)`.
    pending: BinaryHeap<Reverse<Pending>>,
    pushed: u64,
}

/// A queued label, ordered by `(known_at, seq)`; `seq` makes ties deterministic (insertion order).
#[derive(Debug)]
struct Pending {
    known_at_ms: i64,
    seq: u64,
    label: LabelEvent,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.known_at_ms, self.seq) == (other.known_at_ms, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.known_at_ms, self.seq).cmp(&(other.known_at_ms, other.seq))
    }
}

impl LabelSchedule {
    /// An empty schedule; rows without `label_time` get `known_at = timestamp + default_latency_ms`.
    pub fn new(default_latency_ms: i64) -> Self {
        LabelSchedule {
            default_latency_ms,
            pending: BinaryHeap::new(),
            pushed: 0,
        }
    }

    /// Queues the label `tx` carries, if any.
    pub fn push(&mut self, tx: &Transaction) {
        if let Some(label) = tx.label_event(self.default_latency_ms) {
            self.push_label(label);
        }
    }

    /// Queues a label that arrived on its own (the live labels feed).
    pub fn push_label(&mut self, label: LabelEvent) {
        self.pending.push(Reverse(Pending {
            known_at_ms: label.known_at_ms,
            seq: self.pushed,
            label,
        }));
        self.pushed += 1;
    }

    /// Removes and yields the labels known at or before `now_ms`, in `known_at` order (ties in
    /// insertion order). Labels not consumed from the iterator stay queued.
    pub fn due(&mut self, now_ms: i64) -> impl Iterator<Item = LabelEvent> + '_ {
        std::iter::from_fn(move || {
            if self.pending.peek()?.0.known_at_ms > now_ms {
                return None;
            }
            self.pending.pop().map(|Reverse(p)| p.label)
        })
    }

    /// Removes and yields everything still pending, in the same order as [`due`](Self::due).
    pub fn drain_all(&mut self) -> impl Iterator<Item = LabelEvent> + '_ {
        self.due(i64::MAX)
    }

    /// Number of labels still pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no label is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Batch path: replays `txs` (already in the order to process them: normally sorted by time)
/// through [`FeatureEngine::process`], delivering each transaction's label (from its `label` and
/// `label_time`, else `timestamp + label_latency`) right before the first later transaction whose
/// timestamp is at or after the label's `known_at` (see [`LabelSchedule`]). Calls
/// `on_row(i, features)` for every transaction, in order. Labels still pending after the last
/// transaction are delivered at the end, so the returned stats count them.
pub fn replay(
    spec: &Arc<FeatureSpec>,
    txs: &[Transaction],
    mut on_row: impl FnMut(usize, &[f32]),
) -> EngineStats {
    /// Transactions per [`FeatureEngine::process_batch`] call.
    const CHUNK: usize = 4096;
    let mut engine = FeatureEngine::new(Arc::clone(spec));
    let nf = spec.n_features();
    let mut rows = vec![0.0f32; CHUNK * nf];
    let mut outcomes = vec![EventOutcome::InOrder; CHUNK];
    let mut labels = LabelSchedule::new(spec.label_latency_ms());
    for (c, chunk) in txs.chunks(CHUNK).enumerate() {
        let rows = &mut rows[..chunk.len() * nf];
        let outcomes = &mut outcomes[..chunk.len()];
        engine.process_batch(chunk, rows, outcomes, |engine, i| {
            // Exactly the one-at-a-time loop: the previous transaction's label is queued after
            // it was processed, then the labels known by this one's time are delivered.
            if i > 0 {
                labels.push(&chunk[i - 1]);
            }
            for label in labels.due(chunk[i].timestamp_ms) {
                engine.observe_label(&label);
            }
        });
        if let Some(last) = chunk.last() {
            labels.push(last);
        }
        for (i, row) in rows.chunks(nf.max(1)).enumerate().take(chunk.len()) {
            on_row(c * CHUNK + i, row);
        }
    }
    for label in labels.drain_all() {
        engine.observe_label(&label);
    }
    engine.stats()
}

/// [`replay`] with window state split into `shards` independent engines, as a scorer that keeps
/// state per partition holds it: transaction `i` goes to engine `shard_of(&txs[i])` (which must
/// be below `shards`), and each engine sees its own transactions in the given order and their
/// labels, exactly the one-at-a-time loop [`replay`] runs. Card windows are the same whatever
/// the split (a card lives in one shard); merchant windows see the merchant's transactions within
/// the shard. `shards <= 1` is [`replay`]. Returns the engines' stats summed (the watermark is
/// the latest of them).
pub fn replay_sharded(
    spec: &Arc<FeatureSpec>,
    txs: &[Transaction],
    shards: usize,
    shard_of: impl Fn(&Transaction) -> usize,
    mut on_row: impl FnMut(usize, &[f32]),
) -> EngineStats {
    if shards <= 1 {
        return replay(spec, txs, on_row);
    }
    let mut engines: Vec<FeatureEngine> = (0..shards)
        .map(|_| FeatureEngine::new(Arc::clone(spec)))
        .collect();
    let mut labels: Vec<LabelSchedule> = (0..shards)
        .map(|_| LabelSchedule::new(spec.label_latency_ms()))
        .collect();
    let mut row = vec![0.0f32; spec.n_features()];
    for (i, tx) in txs.iter().enumerate() {
        let s = shard_of(tx).min(shards - 1);
        let (engine, schedule) = (&mut engines[s], &mut labels[s]);
        for label in schedule.due(tx.timestamp_ms) {
            engine.observe_label(&label);
        }
        engine.process(tx, &mut row);
        schedule.push(tx);
        on_row(i, &row);
    }
    let mut total = EngineStats::default();
    for (engine, schedule) in engines.iter_mut().zip(&mut labels) {
        for label in schedule.drain_all() {
            engine.observe_label(&label);
        }
        let s = engine.stats();
        total.events_in_order += s.events_in_order;
        total.events_late += s.events_late;
        total.events_too_late += s.events_too_late;
        total.events_duplicate += s.events_duplicate;
        total.labels_applied += s.labels_applied;
        total.labels_ignored += s.labels_ignored;
        total.labels_unused += s.labels_unused;
        total.entities += s.entities;
        total.events_held += s.events_held;
        total.state_bytes += s.state_bytes;
        total.watermark_ms = total.watermark_ms.max(s.watermark_ms);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(id: &str, ts: i64, label: Option<bool>, label_time: Option<i64>) -> Transaction {
        Transaction {
            transaction_id: id.to_string(),
            timestamp_ms: ts,
            card_id: "c".to_string(),
            merchant_id: "m".to_string(),
            amount: 1.0,
            label,
            label_time_ms: label_time,
            currency: None,
            mcc: None,
            country: None,
            channel: None,
            lat: None,
            lon: None,
        }
    }

    fn ids(it: impl Iterator<Item = LabelEvent>) -> Vec<String> {
        it.map(|l| l.transaction_id).collect()
    }

    #[test]
    fn label_schedule_orders_by_known_at_then_insertion() {
        let mut s = LabelSchedule::new(100);
        s.push(&tx("a", 0, Some(true), None)); // known 100
        s.push(&tx("b", 10, Some(false), Some(50))); // known 50
        s.push(&tx("c", 20, None, None)); // unlabelled: not queued
        s.push(&tx("d", 30, Some(true), Some(100))); // known 100, after "a"
        s.push(&tx("e", 40, Some(true), None)); // known 140
        assert_eq!(s.len(), 4);
        assert!(ids(s.due(49)).is_empty());
        assert_eq!(ids(s.due(50)), ["b"]);
        assert_eq!(ids(s.due(100)), ["a", "d"]);
        let rest: Vec<LabelEvent> = s.drain_all().collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].transaction_id, "e");
        assert_eq!(rest[0].known_at_ms, 140);
        assert!(rest[0].fraud);
        assert!(s.is_empty());
    }

    #[test]
    fn label_schedule_keeps_unconsumed_labels() {
        let mut s = LabelSchedule::new(0);
        s.push(&tx("a", 1, Some(true), None));
        s.push(&tx("b", 2, Some(true), None));
        assert_eq!(s.due(5).next().map(|l| l.transaction_id), Some("a".into()));
        assert_eq!(ids(s.drain_all()), ["b"]);
    }
}
