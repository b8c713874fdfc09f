//! Per-card and per-merchant sliding-window features in event time.
//!
//! One implementation serves both the trainer (which [`replay`]s history) and the live scorer
//! (which feeds a [`Shard`] one event at a time), so a model is served exactly the features it was
//! trained on. The features themselves are declared in a TOML [`FeatureSpec`]
//! (`training/features.toml` is the default); this module does no I/O besides [`FeatureSpec::load`]
//! and knows nothing of CSV, Kafka or gRPC.
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
mod labels;
mod plan;
mod shard;
pub mod snapshot;
mod spec;
mod table;
mod window;

use std::sync::Arc;

pub use engine::{EngineStats, EventOutcome, FeatureEngine, LabelOutcome};
pub use labels::LabelSchedule;
pub use shard::Shard;
pub use spec::{
    format_duration, parse_duration, Agg, Attr, DistinctOut, Entity, FeatureKind, FeatureSpec,
    PrevOut, SpecError, TooLatePolicy, TxFeature,
};

use crate::record::Transaction;

/// Batch path: replays `txs` (already in the order to process them: normally sorted by time)
/// through one [`Shard::replaying`], i.e. [`FeatureEngine::process`] with each transaction's label
/// (from its `label` and `label_time`, else `timestamp + label_latency`) delivered right before
/// the first later transaction whose timestamp is at or after the label's `known_at` (see
/// [`LabelSchedule`]). Calls `on_row(i, features)` for every transaction, in order. Labels still
/// pending after the last transaction are delivered at the end, so the returned stats count
/// them.
pub fn replay(
    spec: &Arc<FeatureSpec>,
    txs: &[Transaction],
    mut on_row: impl FnMut(usize, &[f32]),
) -> EngineStats {
    /// Transactions per [`Shard::process_batch`] call.
    const CHUNK: usize = 4096;
    let mut shard = Shard::replaying(Arc::clone(spec));
    let nf = spec.n_features();
    let mut rows = vec![0.0f32; CHUNK * nf];
    let mut outcomes = vec![EventOutcome::InOrder; CHUNK];
    for (c, chunk) in txs.chunks(CHUNK).enumerate() {
        let rows = &mut rows[..chunk.len() * nf];
        let outcomes = &mut outcomes[..chunk.len()];
        shard.process_batch(chunk, rows, outcomes);
        for (i, row) in rows.chunks(nf.max(1)).enumerate().take(chunk.len()) {
            on_row(c * CHUNK + i, row);
        }
    }
    shard.finish()
}

/// [`replay`] with window state split into `shards` independent [`Shard`]s, as a scorer that
/// keeps state per partition holds it: transaction `i` goes to shard `shard_of(&txs[i])` (which
/// must be below `shards`; larger values go to the last one), and each shard sees its own
/// transactions in the given order and their labels, exactly the one-at-a-time loop [`replay`]
/// runs. Card windows are the same whatever the split (a card lives in one shard); merchant
/// windows see the merchant's transactions within the shard. `shards <= 1` is [`replay`].
/// Returns the shards' stats summed (the watermark is the latest of them).
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
    let mut parts: Vec<Shard> = (0..shards)
        .map(|_| Shard::replaying(Arc::clone(spec)))
        .collect();
    let mut row = vec![0.0f32; spec.n_features()];
    for (i, tx) in txs.iter().enumerate() {
        parts[shard_of(tx).min(shards - 1)].process(tx, &mut row);
        on_row(i, &row);
    }
    parts.iter_mut().map(Shard::finish).sum()
}
