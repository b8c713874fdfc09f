//! The event-time window engine. See the [module documentation](super) for the exact semantics;
//! this file is about how they are computed fast.
//!
//! Files: this one places events (watermark, lateness, duplicates, eviction, labels applied to
//! held events, prefetching); `plan.rs` resolves the spec into what each entity table computes;
//! `window.rs` computes the feature values from an entity's state and keeps its running
//! aggregates positioned; `table.rs` stores that state; `labels.rs` finds the transaction a label
//! names.
//!
//! Layout: one [`Table`] per entity kind used in the spec (card, merchant), each an
//! [`EntityTable`] from the 64-bit hash of the entity id to an entity whose single heap block
//! holds the running aggregates of every window length and every risk (length, delay) pair of
//! that entity, followed by its events in time order (see `table.rs` for why).
//!
//! Fast path (an event at or after the watermark, the overwhelmingly common case): the running
//! aggregates of the entity are advanced to the event time by moving their start pointers over
//! the events that left the window (count, sum, sum of squares are updated incrementally; the max
//! is rescanned only when the element that held it leaves and a feature reads it), the features
//! are read off them, and the event is appended. Distinct counts scan the window's events from its
//! running start; "previous event" features look at the newest events.
//!
//! Slow path (late events, too-late events, dry runs of late events, or a label known after the
//! event time): every feature of the entity is recomputed by scanning its events; a late event
//! is then inserted at its place and the running aggregates adjusted in O(windows).
//!
//! Costs to know about: the slow path is O(events of the entity in the window), which for a busy
//! merchant's 30-day window is thousands of events; it is meant for the rare late event. A label
//! whose `known_at` is after the current event time (a label feed whose clock runs ahead of the
//! transaction stream) keeps risk features on the scan path until event time catches up. Distinct
//! features scan their window, so declare them on cards, not on merchants.
//!
//! Batches: [`FeatureEngine::process_batch`] gives the same results as calling
//! [`FeatureEngine::process`] in a loop, but hashes every id once and prefetches the state of the
//! events a few positions ahead in three stages (table slot, then aggregates and newest events,
//! then the events at the window edges), so the memory latency of one event overlaps the work
//! on the previous ones. At a million cards that is most of the cost of an event.

use std::sync::Arc;

use serde::Serialize;

use super::labels::{Held, LabelIndex};
use super::plan::{self, Source, TableCfg};
use super::snapshot::{Bad, Reader, Writer};
use super::spec::{Attr, Entity, FeatureSpec, PrevOut, TooLatePolicy, TxFeature};
use super::table::{key_of_hash, EntityMut, EntityTable, Ev, Events, Layout, NO_LABEL};
use super::window::{advance, on_insert, write_tx, Ctx, Run};
use crate::record::{LabelEvent, Transaction};

/// Amounts are stored as `f32`; anything above this saturates so sums of squares stay finite.
const AMOUNT_CAP: f64 = 1e12;

/// How [`FeatureEngine::process`] placed an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// At or after the watermark: the watermark moved to its time.
    InOrder,
    /// Behind the watermark by at most `allowed_lateness`: placed exactly where it belongs.
    Late,
    /// Further behind: handled by the spec's [`TooLatePolicy`].
    TooLate,
    /// The engine already holds a transaction with this id at this event time (a retry, or a
    /// transaction scored over gRPC and then seen again on Kafka): scored from the current
    /// state, not added a second time. See the module docs ("Duplicates").
    Duplicate,
}

/// What [`FeatureEngine::observe_label`] did with a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelOutcome {
    /// The labelled transaction is held; risk features will count the label from `known_at` on.
    Applied,
    /// The transaction is not held (never seen, scored as too late, older than the retention
    /// horizon, or arrived before its own transaction): counted and ignored.
    UnknownTransaction,
    /// The spec has no risk features, so labels are irrelevant: counted and ignored.
    NotUsed,
}

/// Counters and sizes, for monitoring and for the trainer's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub events_in_order: u64,
    pub events_late: u64,
    pub events_too_late: u64,
    /// Transactions whose id the engine already held at that time: scored, not added again.
    pub events_duplicate: u64,
    pub labels_applied: u64,
    pub labels_ignored: u64,
    pub labels_unused: u64,
    /// Entities held, summed over entity kinds (a card and a merchant count as two).
    pub entities: usize,
    /// Events in memory, summed over entity kinds (each event is held once per entity kind).
    /// Includes expired events of entities that have not been touched since they expired (they
    /// are dropped on the entity's next event, or with the entity once all of its events expire).
    pub events_held: usize,
    /// Approximate heap bytes of the window state.
    pub state_bytes: usize,
    /// Largest event time processed so far.
    pub watermark_ms: Option<i64>,
}

/// Stats of engines that split one stream between them (a scorer's partitions, a sharded
/// replay): counters and sizes add up, and the watermark is the latest of theirs.
impl std::ops::AddAssign<&EngineStats> for EngineStats {
    fn add_assign(&mut self, s: &EngineStats) {
        self.events_in_order += s.events_in_order;
        self.events_late += s.events_late;
        self.events_too_late += s.events_too_late;
        self.events_duplicate += s.events_duplicate;
        self.labels_applied += s.labels_applied;
        self.labels_ignored += s.labels_ignored;
        self.labels_unused += s.labels_unused;
        self.entities += s.entities;
        self.events_held += s.events_held;
        self.state_bytes += s.state_bytes;
        self.watermark_ms = self.watermark_ms.max(s.watermark_ms);
    }
}

/// The total of several engines' stats, as [`AddAssign`](std::ops::AddAssign) adds them.
impl std::iter::Sum for EngineStats {
    fn sum<I: Iterator<Item = EngineStats>>(iter: I) -> EngineStats {
        iter.fold(EngineStats::default(), |mut total, s| {
            total += &s;
            total
        })
    }
}

#[derive(Debug)]
struct Table {
    cfg: TableCfg,
    map: EntityTable,
}

/// The ids of one transaction, hashed once.
#[derive(Debug, Clone, Copy, Default)]
struct Keys {
    /// Table keys by [`Entity`] discriminant (0 for entities the spec does not read).
    entity: [u64; 2],
    /// High 32 bits of the transaction-id hash (see `Ev::tag`).
    tag: u32,
    /// Full transaction-id hash (label index).
    tx: u64,
}

/// The per-entity sliding-window feature engine. One instance per stream (or per partition);
/// not `Sync` on purpose (state is updated in place). See the [module docs](super) for
/// semantics.
#[derive(Debug)]
pub struct FeatureEngine {
    spec: Arc<FeatureSpec>,
    tables: Vec<Table>,
    /// (output column, feature) for per-transaction features.
    tx_features: Vec<(usize, TxFeature)>,
    /// Largest event time seen; `i64::MIN` before the first event.
    watermark: i64,
    /// Largest `known_at` among applied labels. While it is after an event's time, risk
    /// features are recomputed by scan, because the running counts may include a label the event
    /// must not see yet.
    label_max_known: i64,
    next_sweep: i64,
    stats: EngineStats,
    /// Which ids and attributes the spec reads: hashing a string costs as much as the rest of a
    /// small spec's per-event work, so the ones nothing reads are left at 0.
    needs: Needs,
    /// Present when some table has risk features.
    labels: Option<LabelIndex>,
    /// The keyed hash of ids (this engine's own key).
    ids: IdHasher,
}

/// The per-event hashes a spec actually reads.
#[derive(Debug, Clone, Copy, Default)]
struct Needs {
    /// By [`Entity`] discriminant: the entity key (a table, or a distinct/changed attribute).
    key: [bool; 2],
    /// By [`Attr::index`].
    attr: [bool; 4],
}

/// How ids (cards, merchants, transactions, countries) become the 64-bit keys of the state:
/// SipHash-1-3 (what std's `HashMap` uses against crafted keys) under a 128-bit key drawn at
/// random for each engine. An attacker who does not know the key cannot craft a card id that
/// lands on another card's key (merging their windows) or ids that cluster in one region of a
/// table. The key is part of the state: a snapshot carries it, and a restored engine keeps
/// hashing with it (its tables are placed by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IdHasher {
    k0: u64,
    k1: u64,
}

impl IdHasher {
    fn random() -> IdHasher {
        let [k0, k1]: [u64; 2] = rand::random();
        IdHasher { k0, k1 }
    }

    #[inline]
    fn hash(&self, s: &str) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(s.as_bytes());
        h.finish()
    }
}

/// A non-zero 32-bit attribute hash (0 means "missing").
fn attr_hash(h: u64) -> u32 {
    ((h >> 32) as u32).max(1)
}

/// How an event will be handled, decided from the watermark.
#[derive(Debug, Clone, Copy)]
struct Placement {
    outcome: EventOutcome,
    /// Time used for windows (the event time, or the clamped time).
    t: i64,
    /// Whether the event is added to state.
    store: bool,
}

/// Entities (all tables) from which [`FeatureEngine::process`] prefetches an event's state
/// before processing it: a few thousand entities' blocks no longer fit in a core's L2.
const PREFETCH_MIN_ENTITIES: usize = 4096;

/// Prefetch distance of [`FeatureEngine::process_batch`], in events, per stage.
const PREFETCH_STEP: usize = 6;

impl FeatureEngine {
    pub fn new(spec: Arc<FeatureSpec>) -> Self {
        let (cfgs, tx_features) = plan::resolve(&spec);
        let mut needs = Needs::default();
        let mut any_risk = false;
        for cfg in &cfgs {
            needs.key[cfg.entity as usize] = true;
            any_risk |= !cfg.risk_params.is_empty();
            for &(_, source) in &cfg.sources {
                match source {
                    Source::Distinct { of, .. } => needs.attr[of.index()] = true,
                    Source::Prev(PrevOut::CountryChanged) => {
                        needs.attr[Attr::Country.index()] = true;
                    }
                    Source::Prev(PrevOut::MerchantChanged) => {
                        needs.attr[Attr::Merchant.index()] = true;
                    }
                    _ => {}
                }
            }
        }
        needs.key[Entity::Card as usize] |= needs.attr[Attr::Card.index()];
        needs.key[Entity::Merchant as usize] |= needs.attr[Attr::Merchant.index()];
        let tables = cfgs
            .into_iter()
            .enumerate()
            .map(|(i, cfg)| {
                // The first table is where duplicates are looked for.
                let cols = cfg.columns(i == 0);
                Table {
                    map: EntityTable::new(Layout::new(
                        cfg.win_lens.len(),
                        cfg.risk_params.len(),
                        cols,
                    )),
                    cfg,
                }
            })
            .collect();
        FeatureEngine {
            labels: any_risk.then(|| LabelIndex::new(spec.retention_ms())),
            spec,
            tables,
            needs,
            tx_features,
            watermark: i64::MIN,
            label_max_known: i64::MIN,
            next_sweep: i64::MIN,
            stats: EngineStats::default(),
            ids: IdHasher::random(),
        }
    }

    pub fn spec(&self) -> &Arc<FeatureSpec> {
        &self.spec
    }

    /// Largest event time seen so far, if any.
    pub fn watermark_ms(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    fn horizon_at(&self, watermark: i64) -> i64 {
        watermark.saturating_sub(self.spec.retention_ms())
    }

    fn place(&self, ts: i64) -> Placement {
        let lateness = self.spec.allowed_lateness_ms();
        if ts >= self.watermark {
            Placement {
                outcome: EventOutcome::InOrder,
                t: ts,
                store: true,
            }
        } else if ts >= self.watermark - lateness {
            Placement {
                outcome: EventOutcome::Late,
                t: ts,
                store: true,
            }
        } else {
            match self.spec.too_late_policy() {
                TooLatePolicy::ScoreOnly => Placement {
                    outcome: EventOutcome::TooLate,
                    t: ts,
                    store: false,
                },
                TooLatePolicy::Clamp => Placement {
                    outcome: EventOutcome::TooLate,
                    t: self.watermark - lateness,
                    store: true,
                },
            }
        }
    }

    /// Hashes of the ids the spec reads (0 for the others: never looked at).
    fn keys(&self, tx: &Transaction) -> Keys {
        let mut keys = Keys::default();
        for e in Entity::ALL {
            if self.needs.key[e as usize] {
                keys.entity[e as usize] = key_of_hash(self.ids.hash(e.key_of(tx)));
            }
        }
        if !self.tables.is_empty() {
            let h = self.ids.hash(&tx.transaction_id);
            keys.tx = h;
            keys.tag = (h >> 32) as u32;
        }
        keys
    }

    /// The compact event for `tx` at window time `t`.
    fn compact(&self, tx: &Transaction, t: i64, keys: &Keys) -> Ev {
        let (lat, lon) = match (tx.lat, tx.lon) {
            (Some(a), Some(o)) => (a as f32, o as f32),
            _ => (f32::NAN, f32::NAN),
        };
        let need = &self.needs.attr;
        let mut attrs = [0u32; 3];
        if need[Attr::Card.index()] {
            attrs[Attr::Card.index()] = attr_hash(keys.entity[Entity::Card as usize]);
        }
        if need[Attr::Merchant.index()] {
            attrs[Attr::Merchant.index()] = attr_hash(keys.entity[Entity::Merchant as usize]);
        }
        if need[Attr::Country.index()] {
            attrs[Attr::Country.index()] = tx
                .country
                .as_deref()
                .map_or(0, |c| attr_hash(self.ids.hash(c)));
        }
        Ev {
            ts: t,
            known_at: NO_LABEL,
            amount: tx.amount.min(AMOUNT_CAP) as f32,
            tag: keys.tag,
            lat,
            lon,
            attrs,
            bits: tx.mcc.map_or(0, |m| u32::from(m) + 1),
        }
    }

    /// Whether the engine already holds this transaction (same id, same window time): looked up
    /// in the first table's entity, where it would be.
    fn is_duplicate(&self, keys: &Keys, t: i64) -> bool {
        let Some(table) = self.tables.first() else {
            return false;
        };
        let Some(st) = table.map.get(keys.entity[table.cfg.entity as usize]) else {
            return false;
        };
        if t > st.last_ts || t < st.front_ts {
            // Nothing held at that time (the usual answer, without touching the events).
            return false;
        }
        let (times, tags) = st.times_and_tags();
        let a = times.partition_point(|&x| x < t);
        let b = times.partition_point(|&x| x <= t);
        tags[a..b].contains(&keys.tag)
    }

    /// Online step: writes the features of `tx`, computed from the state *before* it, into `out`
    /// (length [`FeatureSpec::n_features`]), then adds `tx` to the state.
    ///
    /// # Panics
    /// If `out.len()` is not the spec's feature count (a programming error, not an input one).
    pub fn process(&mut self, tx: &Transaction, out: &mut [f32]) -> EventOutcome {
        assert_eq!(out.len(), self.spec.n_features(), "feature row length");
        let keys = self.keys(tx);
        // With a large state, the batch path's prefetch stages run back to back for this one
        // event: each stage waits for the previous one's lines, but the card's and the
        // merchant's chains of cache misses overlap instead of following each other, which is
        // faster from ten thousand cards up. With a state that stays in cache (the 800-card
        // sample of the `scorer` bench) the stages' extra lookups cost more than they save,
        // hence the threshold (BENCHMARKS.md, "Figures moved from code comments
        // (vigil-core)").
        if self.tables.iter().map(|t| t.map.len()).sum::<usize>() >= PREFETCH_MIN_ENTITIES {
            self.prefetch_slots(&keys);
            self.prefetch_blocks(&keys);
            self.prefetch_edges(&keys, tx.timestamp_ms);
        }
        self.process_keyed(tx, &keys, out)
    }

    fn process_keyed(&mut self, tx: &Transaction, keys: &Keys, out: &mut [f32]) -> EventOutcome {
        let place = self.place(tx.timestamp_ms);
        if self.is_duplicate(keys, place.t) {
            self.stats.events_duplicate += 1;
            self.peek_placed(tx, keys, place, out);
            return EventOutcome::Duplicate;
        }
        match place.outcome {
            EventOutcome::InOrder => {
                self.stats.events_in_order += 1;
                self.watermark = place.t;
                if self.watermark >= self.next_sweep {
                    self.sweep();
                }
            }
            EventOutcome::Late => self.stats.events_late += 1,
            EventOutcome::TooLate => self.stats.events_too_late += 1,
            // Decided above; `place` never returns it.
            EventOutcome::Duplicate => {}
        }
        if !place.store {
            self.peek_placed(tx, keys, place, out);
            return place.outcome;
        }
        let t = place.t;
        let cur = self.compact(tx, t, keys);
        let horizon = self.horizon_at(self.watermark);
        let retention_ms = self.spec.retention_ms();
        let risk_fast = self.label_max_known <= t;
        let in_order = place.outcome == EventOutcome::InOrder;
        for table in &mut self.tables {
            let Table { cfg, map } = table;
            let mut st = map.get_or_insert(keys.entity[cfg.entity as usize]);
            if in_order {
                let t_run = st.t_run;
                let (wins, risks, events) = st.parts_mut();
                advance(&events, t_run, wins, risks, cfg, t);
                Ctx {
                    cfg,
                    end: events.len(),
                    events,
                    t,
                    horizon,
                    cur: &cur,
                    run: Some(Run {
                        wins,
                        risks,
                        risk_fast,
                    }),
                    retention_ms,
                }
                .write(out);
                st.set_t_run(t);
                evict(&mut st, horizon);
                let (wins, risks) = st.aggs_mut();
                on_insert(wins, risks, cfg, t, &cur);
                let p = st.len();
                st.insert(p, &cur);
            } else {
                let events = st.events();
                let p = events.ts.partition_point(|&x| x <= t);
                Ctx {
                    cfg,
                    events,
                    end: p,
                    t,
                    horizon,
                    cur: &cur,
                    run: None,
                    retention_ms,
                }
                .write(out);
                let t_run = st.t_run;
                let (wins, risks) = st.aggs_mut();
                on_insert(wins, risks, cfg, t_run, &cur);
                st.insert(p, &cur);
            }
        }
        if let Some(labels) = self.labels.as_mut() {
            labels.insert(
                self.watermark,
                keys.tx,
                Held {
                    ts: t,
                    keys: keys.entity,
                    tag: keys.tag,
                },
            );
        }
        write_tx(&self.tx_features, tx, out);
        place.outcome
    }

    /// [`process`](Self::process) over a batch: `rows` receives one row of
    /// [`FeatureSpec::n_features`] values per transaction and `outcomes` one outcome each.
    /// `before(engine, i)` runs right before transaction `i` is processed (to deliver the labels
    /// due by then, for example). The results are exactly those of calling `process` in a loop;
    /// the batch only hashes each id once and prefetches the state of transactions a few
    /// positions ahead, so memory latency overlaps work (see the module docs).
    ///
    /// # Panics
    /// If `rows.len() != txs.len() * n_features` or `outcomes.len() != txs.len()` (programming
    /// errors, not input ones).
    pub fn process_batch(
        &mut self,
        txs: &[Transaction],
        rows: &mut [f32],
        outcomes: &mut [EventOutcome],
        mut before: impl FnMut(&mut FeatureEngine, usize),
    ) {
        let nf = self.spec.n_features();
        assert_eq!(rows.len(), txs.len() * nf, "rows length");
        assert_eq!(outcomes.len(), txs.len(), "outcomes length");
        let keys: Vec<Keys> = txs.iter().map(|tx| self.keys(tx)).collect();
        let d = PREFETCH_STEP;
        for i in 0..txs.len() {
            if let Some(k) = keys.get(i + 3 * d) {
                self.prefetch_slots(k);
            }
            if let Some(k) = keys.get(i + 2 * d) {
                self.prefetch_blocks(k);
            }
            if let Some(k) = keys.get(i + d) {
                self.prefetch_edges(k, txs[i + d].timestamp_ms);
            }
            before(self, i);
            let out = &mut rows[i * nf..(i + 1) * nf];
            outcomes[i] = self.process_keyed(&txs[i], &keys[i], out);
        }
    }

    /// Prefetch stage 1: the table slots of the transaction's entities, and its label-index
    /// slot.
    fn prefetch_slots(&self, keys: &Keys) {
        for table in &self.tables {
            table
                .map
                .prefetch_home(keys.entity[table.cfg.entity as usize]);
        }
        if let Some(labels) = &self.labels {
            labels.prefetch(keys.tx);
        }
    }

    /// Prefetch stage 2: each entity's running aggregates and newest events.
    fn prefetch_blocks(&self, keys: &Keys) {
        for table in &self.tables {
            if let Some(st) = table.map.get(keys.entity[table.cfg.entity as usize]) {
                st.prefetch_front_matter();
            }
        }
    }

    /// Prefetch stage 3: the events at the window edges the transaction will move.
    fn prefetch_edges(&self, keys: &Keys, ts: i64) {
        for table in &self.tables {
            let cfg = &table.cfg;
            let Some(st) = table.map.get(keys.entity[cfg.entity as usize]) else {
                continue;
            };
            if st.t_run == i64::MIN {
                continue;
            }
            let (wins, risks, _) = st.parts();
            for (w, &len) in wins.iter().zip(&cfg.win_lens) {
                if w.exit_ts <= ts - len {
                    st.prefetch_event(w.start as usize);
                }
            }
            for (r, &(len, delay)) in risks.iter().zip(&cfg.risk_params) {
                if r.hi_ts <= ts - delay {
                    st.prefetch_event(r.hi as usize);
                }
                if r.lo_ts <= ts - delay - len {
                    st.prefetch_event(r.lo as usize);
                }
            }
        }
    }

    /// The features [`process`](Self::process) would write for `tx` now, without changing any
    /// state (dry-run scoring).
    ///
    /// # Panics
    /// If `out.len()` is not the spec's feature count.
    pub fn peek(&self, tx: &Transaction, out: &mut [f32]) {
        assert_eq!(out.len(), self.spec.n_features(), "feature row length");
        let keys = self.keys(tx);
        self.peek_placed(tx, &keys, self.place(tx.timestamp_ms), out);
    }

    /// Features of `tx` at its placement without changing state. If the engine holds `tx`
    /// itself (a duplicate), it is scored as the original was: from the events before the
    /// original (plus any late ones placed before it since), not counting itself.
    fn peek_placed(&self, tx: &Transaction, keys: &Keys, place: Placement, out: &mut [f32]) {
        let t = place.t;
        let duplicate = self.is_duplicate(keys, t);
        let cur = self.compact(tx, t, keys);
        let watermark = self.watermark.max(t);
        let horizon = self.horizon_at(watermark);
        let retention_ms = self.spec.retention_ms();
        let mut wins = Vec::new();
        let mut risks = Vec::new();
        for table in &self.tables {
            let cfg = &table.cfg;
            let Some(st) = table.map.get(keys.entity[cfg.entity as usize]) else {
                // A new entity: every window is empty.
                Ctx {
                    cfg,
                    events: Events::EMPTY,
                    end: 0,
                    t,
                    horizon,
                    cur: &cur,
                    run: None,
                    retention_ms,
                }
                .write(out);
                continue;
            };
            let (run_wins, run_risks, events) = st.parts();
            let st = Some(st);
            let fast = !duplicate
                && st.is_some_and(|st| st.t_run != i64::MIN)
                && place.outcome == EventOutcome::InOrder;
            let end = if duplicate {
                // The original's position: after its ties processed before it, before the rest.
                let a = events.ts.partition_point(|&x| x < t);
                let b = events.ts.partition_point(|&x| x <= t);
                (a..b).find(|&i| events.tag[i] == keys.tag).unwrap_or(b)
            } else {
                events.ts.partition_point(|&x| x <= t)
            };
            if fast {
                wins.clear();
                wins.extend_from_slice(run_wins);
                risks.clear();
                risks.extend_from_slice(run_risks);
                let t_run = st.map_or(i64::MIN, |s| s.t_run);
                advance(&events, t_run, &mut wins, &mut risks, cfg, t);
            }
            Ctx {
                cfg,
                events,
                end,
                t,
                horizon,
                cur: &cur,
                run: fast.then_some(Run {
                    wins: &wins,
                    risks: &risks,
                    risk_fast: self.label_max_known <= t,
                }),
                retention_ms,
            }
            .write(out);
        }
        write_tx(&self.tx_features, tx, out);
    }

    /// Applies a label to the transaction it names, if the engine holds it. A later label for the
    /// same transaction replaces the earlier one. Risk features count a fraud label only for
    /// events at or after its `known_at`.
    pub fn observe_label(&mut self, label: &LabelEvent) -> LabelOutcome {
        let Some(index) = self.labels.as_ref() else {
            self.stats.labels_unused += 1;
            return LabelOutcome::NotUsed;
        };
        let horizon = self.horizon_at(self.watermark);
        let held = index
            .get(self.ids.hash(&label.transaction_id))
            .copied()
            .filter(|h| h.ts > horizon);
        let mut applied = false;
        if let Some(held) = held {
            for table in &mut self.tables {
                let cfg = &table.cfg;
                if cfg.risk_params.is_empty() {
                    continue;
                }
                let Some(mut st) = table.map.get_mut(held.keys[cfg.entity as usize]) else {
                    continue;
                };
                let events = st.events();
                let a = events.ts.partition_point(|&x| x < held.ts);
                let b = events.ts.partition_point(|&x| x <= held.ts);
                // The last one: with a reused id, the index points at the latest transaction.
                let Some(i) = (a..b).rev().find(|&i| events.tag[i] == held.tag) else {
                    continue;
                };
                let was = events.fraud(i);
                st.set_label(i, label.fraud, label.known_at_ms);
                if st.t_run != i64::MIN {
                    let (_, risks) = st.aggs_mut();
                    for r in risks.iter_mut() {
                        if (r.lo as usize..r.hi as usize).contains(&i) {
                            r.fraud = r.fraud + u32::from(label.fraud) - u32::from(was);
                        }
                    }
                }
                applied = true;
            }
        }
        if applied {
            self.label_max_known = self.label_max_known.max(label.known_at_ms);
            self.stats.labels_applied += 1;
            LabelOutcome::Applied
        } else {
            self.stats.labels_ignored += 1;
            LabelOutcome::UnknownTransaction
        }
    }

    /// Removes the entities whose newest event is at or before the retention horizon (their
    /// blocks are freed without being read), and expired label-index generations. Runs every
    /// eighth of the retention of event time, so memory is bounded by the events of about two
    /// retention periods (an entity's expired events go on its next event, or with the entity).
    fn sweep(&mut self) {
        let horizon = self.horizon_at(self.watermark);
        for table in &mut self.tables {
            table.map.retain(|st| st.last_ts > horizon);
        }
        if let Some(labels) = self.labels.as_mut() {
            labels.expire(horizon);
        }
        let every = (self.spec.retention_ms() / 8).max(1000);
        self.next_sweep = self.watermark.saturating_add(every);
    }

    /// Counters plus the current population. Walks every entity (O(entities), milliseconds at a
    /// million cards): call it for monitoring, not per event.
    pub fn stats(&self) -> EngineStats {
        let label_bytes = self.labels.as_ref().map_or(0, LabelIndex::heap_bytes);
        EngineStats {
            entities: self.tables.iter().map(|t| t.map.len()).sum(),
            events_held: self
                .tables
                .iter()
                .map(|t| t.map.iter().map(|e| e.len()).sum::<usize>())
                .sum(),
            state_bytes: self
                .tables
                .iter()
                .map(|t| t.map.heap_bytes())
                .sum::<usize>()
                + label_bytes,
            watermark_ms: self.watermark_ms(),
            ..self.stats.clone()
        }
    }
}

/// Snapshots: the state as bytes and back (see [`super::snapshot`]). What is derived from the
/// spec (tables' plans, needs, per-transaction features) is not written; it is rebuilt by
/// [`FeatureEngine::new`] and the bytes are checked against it.
impl FeatureEngine {
    pub(super) fn encode(&self, w: &mut Writer) {
        w.u64(self.ids.k0);
        w.u64(self.ids.k1);
        w.i64(self.watermark);
        w.i64(self.label_max_known);
        w.i64(self.next_sweep);
        let s = &self.stats;
        for c in [
            s.events_in_order,
            s.events_late,
            s.events_too_late,
            s.events_duplicate,
            s.labels_applied,
            s.labels_ignored,
            s.labels_unused,
        ] {
            w.u64(c);
        }
        w.u64(self.tables.len() as u64);
        for table in &self.tables {
            table.map.encode(w);
        }
        match &self.labels {
            Some(index) => {
                w.u8(1);
                index.encode(w);
            }
            None => w.u8(0),
        }
    }

    /// Entities whose running aggregates must be rebuilt by a scan before use (tests check that
    /// a restore keeps the ones it was given).
    #[cfg(test)]
    pub(super) fn unpositioned_entities(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.map.iter().filter(|e| e.t_run == i64::MIN).count())
            .sum()
    }

    pub(super) fn decode(spec: Arc<FeatureSpec>, r: &mut Reader<'_>) -> Result<FeatureEngine, Bad> {
        let mut engine = FeatureEngine::new(spec);
        engine.ids = IdHasher {
            k0: r.u64()?,
            k1: r.u64()?,
        };
        engine.watermark = r.i64()?;
        engine.label_max_known = r.i64()?;
        engine.next_sweep = r.i64()?;
        let s = &mut engine.stats;
        for c in [
            &mut s.events_in_order,
            &mut s.events_late,
            &mut s.events_too_late,
            &mut s.events_duplicate,
            &mut s.labels_applied,
            &mut s.labels_ignored,
            &mut s.labels_unused,
        ] {
            *c = r.u64()?;
        }
        let n = r.u64()?;
        if n != engine.tables.len() as u64 {
            return Err(Bad(format!(
                "{n} entity tables, the spec has {}",
                engine.tables.len()
            )));
        }
        for table in &mut engine.tables {
            table.map.decode(r)?;
        }
        let has_labels = r.u8()? != 0;
        if has_labels != engine.labels.is_some() {
            return Err(Bad("label index presence differs from the spec's".into()));
        }
        if has_labels {
            engine.labels = Some(LabelIndex::decode(r, engine.spec.retention_ms())?);
        }
        Ok(engine)
    }
}

/// Number of leading `times` at or before `horizon`, by galloping from the front: usually one or
/// two events expired since the entity's previous event, and a binary search over a busy
/// merchant's 30 days of times would be a chain of ~11 dependent cache misses at a million
/// cards (a measurable share of a batch run, see BENCHMARKS.md), where this reads the front line
/// or two.
fn expired_prefix(times: &[i64], horizon: i64) -> usize {
    let mut hi = 1;
    while hi < times.len() && times[hi - 1] <= horizon {
        hi *= 2;
    }
    let lo = hi / 2;
    let hi = hi.min(times.len());
    lo + times[lo..hi].partition_point(|&x| x <= horizon)
}

/// Drops the entity's events at or before `horizon` and shifts the running aggregates' indices.
/// Called on the in-order path after [`advance`], so no window still points into them.
fn evict(st: &mut EntityMut<'_>, horizon: i64) {
    if st.front_ts > horizon {
        return;
    }
    let k = expired_prefix(st.times(), horizon);
    if k == 0 {
        return;
    }
    let k32 = k as u32;
    let (wins, risks) = st.aggs_mut();
    let inside = wins.iter().any(|w| w.start < k32) || risks.iter().any(|r| r.lo < k32);
    if inside {
        // Cannot happen after `advance` to a time whose windows all start after the horizon;
        // rebuilding on the next event is the safe answer if it ever did.
        st.set_t_run(i64::MIN);
    } else {
        for w in wins.iter_mut() {
            w.start -= k32;
        }
        for r in risks.iter_mut() {
            r.lo -= k32;
            r.hi -= k32;
        }
    }
    st.drop_front(k);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each engine hashes under its own random key: the same id gets unrelated keys in two
    /// engines (what lands together in one cannot be predicted from the other, or from the
    /// ids), and the same key in one. (Features do not depend on the key: the engine tests
    /// compare engines row for row, each with its own.)
    #[test]
    fn ids_are_hashed_under_a_key_of_each_engine() {
        let spec = Arc::new(
            FeatureSpec::from_toml_str(include_str!("../../../../training/features.toml"))
                .expect("default spec"),
        );
        let (a, b) = (
            FeatureEngine::new(Arc::clone(&spec)),
            FeatureEngine::new(spec),
        );
        assert_ne!(a.ids, b.ids);
        assert_eq!(a.ids.hash("C00000225"), a.ids.hash("C00000225"));
        assert_ne!(a.ids.hash("C00000225"), b.ids.hash("C00000225"));
        assert_ne!(a.ids.hash("C00000225"), a.ids.hash("C00000226"));
    }

    #[test]
    fn expired_prefix_is_the_partition_point() {
        for n in 0..70usize {
            let times: Vec<i64> = (0..n as i64).map(|i| i * 10 + i % 3).collect();
            for horizon in -5..(n as i64 * 10 + 5) {
                let want = times.partition_point(|&x| x <= horizon);
                assert_eq!(
                    expired_prefix(&times, horizon),
                    want,
                    "n {n} horizon {horizon}"
                );
            }
        }
    }
}
