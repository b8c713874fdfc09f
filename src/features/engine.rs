//! The event-time window engine. See the [module documentation](super) for the exact semantics;
//! this file is about how they are computed fast.
//!
//! Layout: one [`Table`] per entity kind used in the spec (card, merchant), each a hash map from
//! the 64-bit FxHash of the entity id to an [`EntityState`]: a time-ordered `VecDeque` of compact
//! 56-byte events plus running aggregates for every distinct window length and every risk
//! (length, delay) pair of that entity.
//!
//! Fast path (an event at or after the watermark, the overwhelmingly common case): the running
//! aggregates of the entity are advanced to the event time by moving their start pointers over the
//! events that left the window (count, sum, sum of squares are updated incrementally; the max is
//! rescanned only when the element that held it leaves), the features are read off them, and the
//! event is appended. Distinct counts and "previous event" features scan the entity's recent events;
//! they are meant for cards, which hold a few to tens of events.
//!
//! Slow path (late events, too-late events, a peek at a late event, or a label known after the
//! event time): every feature of the entity is recomputed by scanning its deque; a late event is
//! then inserted at its place and the running aggregates adjusted in O(windows).
//!
//! Costs to know about: the slow path is O(events of the entity in the window), which for a busy
//! merchant's 30-day window is thousands of events; it is meant for the rare late event. A label
//! whose `known_at` is after the current event time (a label feed whose clock runs ahead of the
//! transaction stream) keeps risk features on the scan path until event time catches up. Distinct
//! and previous-event features always scan, so declare them on cards, not on merchants.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::Serialize;

use super::spec::{
    Agg, Attr, DistinctOut, Entity, FeatureKind, FeatureSpec, PrevOut, TooLatePolicy, TxFeature,
};
use crate::record::{Channel, LabelEvent, Transaction};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// `known_at` of an event without a label.
const NO_LABEL: i64 = i64::MAX;
/// Amounts are stored as `f32`; anything above this saturates so sums of squares stay finite.
const AMOUNT_CAP: f64 = 1e12;
/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

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
    /// A transaction id the engine already holds (a retry, or a transaction scored over gRPC
    /// and then seen again on Kafka): scored from the current state, not added a second time.
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
    /// Transactions whose id the engine already held: scored, not added again.
    pub events_duplicate: u64,
    pub labels_applied: u64,
    pub labels_ignored: u64,
    pub labels_unused: u64,
    /// Entities held, summed over entity kinds (a card and a merchant count as two).
    pub entities: usize,
    /// Events held, summed over entity kinds (each event is held once per entity kind).
    pub events_held: usize,
    /// Largest event time processed so far.
    pub watermark_ms: Option<i64>,
}

/// One event as an entity's state keeps it.
#[derive(Debug, Clone, Copy)]
struct Ev {
    ts: i64,
    /// When the label became known; [`NO_LABEL`] when there is none.
    known_at: i64,
    /// FxHash of the transaction id (label look-up).
    tx: u64,
    amount: f32,
    /// NaN when the transaction has no location.
    lat: f32,
    lon: f32,
    /// Hashes of the [`Attr`] values, indexed by [`Attr::index`]; 0 when the value is missing.
    attrs: [u32; 4],
    /// The latest label says fraud.
    fraud: bool,
}

impl Ev {
    fn located(&self) -> bool {
        !self.lat.is_nan()
    }
    fn fraud_known_by(&self, t: i64) -> bool {
        self.fraud && self.known_at <= t
    }
}

/// Running aggregates of one window length, covering `events[start..]`.
///
/// The `*_ts` fields cache the timestamp at a pointer so that advancing a window whose edge has
/// not moved touches no event memory: at a million entities every deque access is a cache miss.
#[derive(Debug, Clone, Copy, Default)]
struct RunWin {
    start: usize,
    /// `events[start].ts`, or `i64::MAX` when the window is empty.
    exit_ts: i64,
    n: u32,
    sum: f64,
    sumsq: f64,
    max: f32,
    /// False when the element holding `max` left; `advance` rescans.
    max_ok: bool,
}

/// Running counts of one delayed risk window, covering `events[lo..hi]`.
#[derive(Debug, Clone, Copy, Default)]
struct RunRisk {
    lo: usize,
    hi: usize,
    /// `events[lo].ts` when `lo < hi`, else `i64::MAX`.
    lo_ts: i64,
    /// `events[hi].ts`, or `i64::MAX` when `hi` is past the end.
    hi_ts: i64,
    n: u32,
    /// Events in the window whose label says fraud (whatever its `known_at`; the fast path is
    /// only used when no applied label is known after the current event time).
    fraud: u32,
}

#[derive(Debug)]
struct EntityState {
    /// Sorted by `ts`; equal timestamps in processing order.
    events: VecDeque<Ev>,
    /// The time the running aggregates' lower edges are positioned for, or `i64::MIN` when they
    /// must be rebuilt by a scan before use.
    t_run: i64,
    /// Timestamp of the oldest event (`i64::MAX` when none): eviction is checked against it
    /// without touching the deque.
    front_ts: i64,
    wins: Box<[RunWin]>,
    risks: Box<[RunRisk]>,
}

/// Window-aggregate inputs: count, sum, sum of squares, max.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    n: u32,
    sum: f64,
    sumsq: f64,
    max: f32,
}

impl Stats {
    fn add(&mut self, a: f32) {
        let x = f64::from(a);
        self.max = if self.n == 0 { a } else { self.max.max(a) };
        self.n += 1;
        self.sum += x;
        self.sumsq += x * x;
    }
}

/// One entity-bound output column, resolved to the table's running-aggregate indices.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Win {
        w: usize,
        agg: Agg,
        incl: bool,
    },
    Distinct {
        length_ms: i64,
        of: Attr,
        incl: bool,
        out: DistinctOut,
    },
    Prev(PrevOut),
    Risk {
        r: usize,
        count: bool,
    },
}

/// What a table computes: fixed at construction.
#[derive(Debug)]
struct TableCfg {
    entity: Entity,
    /// Distinct window lengths of this entity's `Win` slots (one running aggregate each).
    win_lens: Vec<i64>,
    /// Distinct (length, delay) pairs of this entity's `Risk` slots.
    risk_params: Vec<(i64, i64)>,
    /// (output column, slot).
    slots: Vec<(usize, Slot)>,
}

#[derive(Debug)]
struct Table {
    cfg: TableCfg,
    map: FxHashMap<u64, EntityState>,
    /// Transaction-id hash -> (entity key, event time), for applying labels. Only kept for
    /// entities with risk features.
    tx_index: Option<FxHashMap<u64, (u64, i64)>>,
}

impl TableCfg {
    fn new_state(&self) -> EntityState {
        EntityState {
            events: VecDeque::new(),
            t_run: i64::MIN,
            front_ts: i64::MAX,
            wins: vec![RunWin::default(); self.win_lens.len()].into_boxed_slice(),
            risks: vec![RunRisk::default(); self.risk_params.len()].into_boxed_slice(),
        }
    }
}

/// The per-entity sliding-window feature engine. One instance per stream; not `Sync` on purpose
/// (state is updated in place). See the [module docs](super) for semantics.
#[derive(Debug)]
pub struct FeatureEngine {
    spec: Arc<FeatureSpec>,
    tables: Vec<Table>,
    /// (output column, feature) for per-transaction features.
    tx_slots: Vec<(usize, TxFeature)>,
    /// Largest event time seen; `i64::MIN` before the first event.
    watermark: i64,
    /// Largest `known_at` among applied labels. While it is after an event's time, risk
    /// features are recomputed by scan, because the running counts may include a label the event
    /// must not see yet.
    label_max_known: i64,
    next_sweep: i64,
    stats: EngineStats,
    /// Transaction-id hash -> window time of every transaction held (de-duplication).
    held: FxHashMap<u64, i64>,
    /// Which ids and attributes the spec reads: hashing a string costs as much as the rest of a
    /// small spec's per-event work, so the ones nothing reads are left at 0.
    needs: Needs,
}

/// The per-event hashes a spec actually reads (see [`FeatureEngine::keys`] and `compact`).
#[derive(Debug, Clone, Copy, Default)]
struct Needs {
    /// By [`Entity`] discriminant: the entity key (a table, or a distinct/changed attribute).
    key: [bool; 2],
    /// By [`Attr::index`].
    attr: [bool; 4],
    /// The transaction-id hash (label look-up: only with risk features).
    tx: bool,
}

fn hash_str(s: &str) -> u64 {
    FxBuildHasher.hash_one(s)
}

/// A non-zero 32-bit attribute hash (0 means "missing").
fn attr_hash(h: u64) -> u32 {
    ((h >> 32) as u32).max(1)
}

/// Converts to `f32` and guarantees a finite value (NaN -> 0, overflow -> +-MAX).
fn finite(x: f64) -> f32 {
    let y = x as f32;
    if y.is_finite() {
        y
    } else if x.is_nan() {
        0.0
    } else if x > 0.0 {
        f32::MAX
    } else {
        f32::MIN
    }
}

fn haversine_km(lat1: f32, lon1: f32, lat2: f32, lon2: f32) -> f64 {
    let (p1, p2) = (f64::from(lat1).to_radians(), f64::from(lat2).to_radians());
    let dp = p2 - p1;
    let dl = (f64::from(lon2) - f64::from(lon1)).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// Everything a slot needs to compute its value for one event and one entity.
struct Ctx<'a> {
    events: &'a VecDeque<Ev>,
    /// Events `[..end]` are the ones processed before this event with `ts <= t`.
    end: usize,
    t: i64,
    /// Events at or before this time are ignored (retention horizon).
    horizon: i64,
    cur: &'a Ev,
    /// Running aggregates positioned at `t` (fast path), if usable.
    run: Option<(&'a [RunWin], &'a [RunRisk])>,
    /// Whether the running risk counts may be used.
    risk_fast: bool,
    retention_ms: i64,
}

impl Ctx<'_> {
    /// Indices `[a, end)` of the events with `ts > max(lower, horizon)`.
    fn from(&self, lower: i64) -> usize {
        let lower = lower.max(self.horizon);
        self.events.partition_point(|e| e.ts <= lower).min(self.end)
    }

    fn window(&self, length_ms: i64) -> impl Iterator<Item = &Ev> + '_ {
        let a = self.from(self.t - length_ms);
        self.events.range(a..self.end)
    }

    fn previous(&self, pred: impl Fn(&Ev) -> bool) -> Option<&Ev> {
        self.events
            .range(..self.end)
            .rev()
            .take_while(|e| e.ts > self.horizon)
            .find(|e| pred(e))
    }

    fn slot(&self, table: &TableCfg, slot: Slot) -> f32 {
        match slot {
            Slot::Win { w, agg, incl } => {
                let mut s = match self.run {
                    Some((wins, _)) => {
                        let r = &wins[w];
                        Stats {
                            n: r.n,
                            sum: r.sum,
                            sumsq: r.sumsq,
                            max: r.max,
                        }
                    }
                    None => {
                        let mut s = Stats::default();
                        for e in self.window(table.win_lens[w]) {
                            s.add(e.amount);
                        }
                        s
                    }
                };
                if incl {
                    s.add(self.cur.amount);
                }
                agg_value(agg, &s, self.cur.amount)
            }
            Slot::Distinct {
                length_ms,
                of,
                incl,
                out,
            } => {
                let i = of.index();
                let v = self.cur.attrs[i];
                match out {
                    DistinctOut::Count => {
                        let vals = self.window(length_ms).map(|e| e.attrs[i]);
                        let extra = if incl { Some(v) } else { None };
                        count_distinct(vals.chain(extra)) as f32
                    }
                    DistinctOut::IsNew => {
                        let seen = self.window(length_ms).any(|e| e.attrs[i] == v);
                        f32::from(u8::from(v != 0 && !seen))
                    }
                }
            }
            Slot::Prev(out) => self.prev_value(out),
            Slot::Risk { r, count } => {
                let (n, fraud) = match self.run {
                    Some((_, risks)) if self.risk_fast => (risks[r].n, risks[r].fraud),
                    _ => {
                        let (length_ms, delay_ms) = table.risk_params[r];
                        let end = self.from(self.t - delay_ms);
                        let a = self.from(self.t - delay_ms - length_ms).min(end);
                        let mut fraud = 0u32;
                        for e in self.events.range(a..end) {
                            fraud += u32::from(e.fraud_known_by(self.t));
                        }
                        ((end - a) as u32, fraud)
                    }
                };
                if count {
                    n as f32
                } else if n == 0 {
                    0.0
                } else {
                    (f64::from(fraud) / f64::from(n)) as f32
                }
            }
        }
    }

    fn prev_value(&self, out: PrevOut) -> f32 {
        let cur = self.cur;
        match out {
            PrevOut::SecsSince => match self.previous(|_| true) {
                Some(p) => finite((self.t - p.ts) as f64 / 1000.0),
                None => finite(self.retention_ms as f64 / 1000.0),
            },
            PrevOut::KmhSince => {
                if !cur.located() {
                    return 0.0;
                }
                match self.previous(Ev::located) {
                    Some(p) => {
                        let km = haversine_km(p.lat, p.lon, cur.lat, cur.lon);
                        let hours = ((self.t - p.ts) as f64 / HOUR_MS as f64).max(1.0 / 60.0);
                        finite(km / hours)
                    }
                    None => 0.0,
                }
            }
            PrevOut::CountryChanged => {
                let i = Attr::Country.index();
                match self.previous(|_| true) {
                    Some(p) => f32::from(u8::from(
                        p.attrs[i] != 0 && cur.attrs[i] != 0 && p.attrs[i] != cur.attrs[i],
                    )),
                    None => 0.0,
                }
            }
            PrevOut::MerchantChanged => {
                let i = Attr::Merchant.index();
                match self.previous(|_| true) {
                    Some(p) => f32::from(u8::from(p.attrs[i] != cur.attrs[i])),
                    None => 0.0,
                }
            }
        }
    }
}

fn agg_value(agg: Agg, s: &Stats, amount: f32) -> f32 {
    let n = f64::from(s.n);
    let mean = if s.n == 0 { 0.0 } else { s.sum / n };
    match agg {
        Agg::Count => s.n as f32,
        Agg::Sum => finite(s.sum),
        Agg::Mean => finite(mean),
        Agg::Max => s.max,
        Agg::Std => {
            if s.n < 2 {
                0.0
            } else {
                // Clamped: the incremental sums can leave a tiny negative variance.
                finite((s.sumsq / n - mean * mean).max(0.0).sqrt())
            }
        }
        Agg::AmountToMean => {
            if mean > 0.0 {
                finite(f64::from(amount) / mean)
            } else {
                0.0
            }
        }
    }
}

/// Number of distinct non-zero values. Windows are small (tens), so a linear probe on a stack
/// buffer beats a hash set; long windows spill to a sorted vector.
fn count_distinct(vals: impl Iterator<Item = u32>) -> usize {
    const SMALL: usize = 32;
    let mut small = [0u32; SMALL];
    let mut n = 0;
    let mut spill: Option<Vec<u32>> = None;
    for v in vals.filter(|v| *v != 0) {
        if let Some(s) = spill.as_mut() {
            s.push(v);
        } else if !small[..n].contains(&v) {
            if n < SMALL {
                small[n] = v;
                n += 1;
            } else {
                let mut s = small.to_vec();
                s.push(v);
                spill = Some(s);
            }
        }
    }
    match spill {
        None => n,
        Some(mut s) => {
            s.sort_unstable();
            s.dedup();
            s.len()
        }
    }
}

/// Positions the running aggregates at time `t` (`t >= t_run`, every event has `ts <= t`).
/// Rebuilds them by scan when `t_run` is `i64::MIN`.
fn advance(
    events: &VecDeque<Ev>,
    t_run: i64,
    wins: &mut [RunWin],
    risks: &mut [RunRisk],
    table: &TableCfg,
    t: i64,
) {
    if t_run == i64::MIN {
        for (w, &len) in wins.iter_mut().zip(&table.win_lens) {
            let start = events.partition_point(|e| e.ts <= t - len);
            let mut s = Stats::default();
            for e in events.range(start..) {
                s.add(e.amount);
            }
            *w = RunWin {
                start,
                exit_ts: ts_at(events, start),
                n: s.n,
                sum: s.sum,
                sumsq: s.sumsq,
                max: s.max,
                max_ok: true,
            };
        }
        for (r, &(len, delay)) in risks.iter_mut().zip(&table.risk_params) {
            let hi = events.partition_point(|e| e.ts <= t - delay);
            let lo = events.partition_point(|e| e.ts <= t - delay - len).min(hi);
            let fraud = events.range(lo..hi).filter(|e| e.fraud).count() as u32;
            *r = RunRisk {
                lo,
                hi,
                lo_ts: if lo < hi { events[lo].ts } else { i64::MAX },
                hi_ts: ts_at(events, hi),
                n: (hi - lo) as u32,
                fraud,
            };
        }
        return;
    }
    for (w, &len) in wins.iter_mut().zip(&table.win_lens) {
        let lower = t - len;
        if w.exit_ts > lower {
            continue;
        }
        while let Some(e) = events.get(w.start).filter(|e| e.ts <= lower) {
            let x = f64::from(e.amount);
            w.n -= 1;
            w.sum -= x;
            w.sumsq -= x * x;
            if e.amount >= w.max {
                w.max_ok = false;
            }
            w.start += 1;
        }
        w.exit_ts = ts_at(events, w.start);
        if w.n == 0 {
            // Exact zero instead of accumulated rounding residue.
            *w = RunWin {
                start: w.start,
                exit_ts: i64::MAX,
                max_ok: true,
                ..RunWin::default()
            };
        } else if !w.max_ok {
            w.max = events
                .range(w.start..)
                .map(|e| e.amount)
                .fold(0.0, f32::max);
            w.max_ok = true;
        }
    }
    for (r, &(len, delay)) in risks.iter_mut().zip(&table.risk_params) {
        if r.hi_ts <= t - delay {
            while let Some(e) = events.get(r.hi).filter(|e| e.ts <= t - delay) {
                r.n += 1;
                r.fraud += u32::from(e.fraud);
                r.lo_ts = r.lo_ts.min(e.ts);
                r.hi += 1;
            }
            r.hi_ts = ts_at(events, r.hi);
        }
        if r.lo_ts <= t - delay - len {
            while r.lo < r.hi && events[r.lo].ts <= t - delay - len {
                let e = &events[r.lo];
                r.n -= 1;
                r.fraud -= u32::from(e.fraud);
                r.lo += 1;
            }
            r.lo_ts = if r.lo < r.hi {
                events[r.lo].ts
            } else {
                i64::MAX
            };
        }
    }
}

impl EntityState {
    /// Inserts `ev` at index `p` (its place in time order) and keeps the running aggregates
    /// consistent with their positions at `t_run`.
    fn insert(&mut self, p: usize, ev: Ev, table: &TableCfg) {
        self.events.insert(p, ev);
        self.front_ts = self.front_ts.min(ev.ts);
        if self.t_run == i64::MIN {
            return;
        }
        for (w, &len) in self.wins.iter_mut().zip(&table.win_lens) {
            if ev.ts <= self.t_run - len {
                w.start += 1;
            } else {
                // Inserted at or after `start`: it is the new edge if it sorts first.
                w.exit_ts = w.exit_ts.min(ev.ts);
                w.max = if w.n == 0 {
                    ev.amount
                } else {
                    w.max.max(ev.amount)
                };
                w.n += 1;
                let x = f64::from(ev.amount);
                w.sum += x;
                w.sumsq += x * x;
            }
        }
        for (r, &(len, delay)) in self.risks.iter_mut().zip(&table.risk_params) {
            if ev.ts <= self.t_run - delay - len {
                r.lo += 1;
                r.hi += 1;
            } else if ev.ts <= self.t_run - delay {
                r.lo_ts = r.lo_ts.min(ev.ts);
                r.n += 1;
                r.hi += 1;
            } else {
                r.hi_ts = r.hi_ts.min(ev.ts);
            }
        }
    }

    /// Drops events at or before `horizon`. Returns how many.
    fn evict(
        &mut self,
        key: u64,
        horizon: i64,
        tx_index: &mut Option<FxHashMap<u64, (u64, i64)>>,
    ) -> usize {
        if self.front_ts > horizon {
            return 0;
        }
        let k = self.events.partition_point(|e| e.ts <= horizon);
        if let Some(index) = tx_index.as_mut() {
            for e in self.events.range(..k) {
                // A later transaction may have reused the id; only drop our own entry.
                if index.get(&e.tx) == Some(&(key, e.ts)) {
                    index.remove(&e.tx);
                }
            }
        }
        self.events.drain(..k);
        self.front_ts = self.events.front().map_or(i64::MAX, |e| e.ts);
        let inside = self.wins.iter().any(|w| w.start < k) || self.risks.iter().any(|r| r.lo < k);
        if inside {
            // Only happens to entities idle for longer than the retention (swept); cheaper to
            // rebuild on their next event than to subtract here.
            self.t_run = i64::MIN;
        } else {
            for w in self.wins.iter_mut() {
                w.start -= k;
            }
            for r in self.risks.iter_mut() {
                r.lo -= k;
                r.hi -= k;
            }
        }
        k
    }
}

fn tx_value(f: TxFeature, tx: &Transaction) -> f32 {
    let ts = tx.timestamp_ms;
    let hour = ts.rem_euclid(DAY_MS) / HOUR_MS;
    let flag = |b: bool| f32::from(u8::from(b));
    match f {
        TxFeature::Amount => finite(tx.amount),
        TxFeature::LogAmount => finite(tx.amount.ln_1p()),
        TxFeature::HourOfDay => hour as f32,
        // 1970-01-01 was a Thursday: (days + 3) mod 7 counts from Monday = 0.
        TxFeature::IsWeekend => flag((ts.div_euclid(DAY_MS) + 3).rem_euclid(7) >= 5),
        TxFeature::IsNight => flag(hour < 6),
        TxFeature::ChannelPos => flag(tx.channel == Some(Channel::Pos)),
        TxFeature::ChannelOnline => flag(tx.channel == Some(Channel::Online)),
        TxFeature::ChannelAtm => flag(tx.channel == Some(Channel::Atm)),
        TxFeature::ChannelMoto => flag(tx.channel == Some(Channel::Moto)),
        TxFeature::HasLocation => flag(tx.lat.is_some() && tx.lon.is_some()),
    }
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

impl FeatureEngine {
    pub fn new(spec: Arc<FeatureSpec>) -> Self {
        let mut tables: Vec<Table> = Vec::new();
        let mut tx_slots = Vec::new();
        for (col, f) in spec.features().iter().enumerate() {
            let Some(entity) = f.entity() else {
                if let FeatureKind::Transaction(t) = *f {
                    tx_slots.push((col, t));
                }
                continue;
            };
            let ti = match tables.iter().position(|t| t.cfg.entity == entity) {
                Some(i) => i,
                None => {
                    tables.push(Table {
                        cfg: TableCfg {
                            entity,
                            win_lens: Vec::new(),
                            risk_params: Vec::new(),
                            slots: Vec::new(),
                        },
                        map: FxHashMap::default(),
                        tx_index: None,
                    });
                    tables.len() - 1
                }
            };
            let table = &mut tables[ti];
            let cfg = &mut table.cfg;
            let slot = match *f {
                FeatureKind::Window {
                    length_ms,
                    include_current,
                    agg,
                    ..
                } => Slot::Win {
                    w: index_of(&mut cfg.win_lens, length_ms),
                    agg,
                    incl: include_current,
                },
                FeatureKind::Distinct {
                    of,
                    length_ms,
                    include_current,
                    out,
                    ..
                } => Slot::Distinct {
                    length_ms,
                    of,
                    incl: include_current,
                    out,
                },
                FeatureKind::Previous { out, .. } => Slot::Prev(out),
                FeatureKind::Risk {
                    length_ms,
                    delay_ms,
                    count,
                    ..
                } => {
                    table.tx_index.get_or_insert_with(FxHashMap::default);
                    Slot::Risk {
                        r: index_of(&mut cfg.risk_params, (length_ms, delay_ms)),
                        count,
                    }
                }
                // Handled above: transaction features have no entity.
                FeatureKind::Transaction(_) => continue,
            };
            cfg.slots.push((col, slot));
        }
        let mut needs = Needs::default();
        for table in &tables {
            needs.key[table.cfg.entity as usize] = true;
            needs.tx |= table.tx_index.is_some();
            for &(_, slot) in &table.cfg.slots {
                match slot {
                    Slot::Distinct { of, .. } => needs.attr[of.index()] = true,
                    Slot::Prev(PrevOut::CountryChanged) => {
                        needs.attr[Attr::Country.index()] = true;
                    }
                    Slot::Prev(PrevOut::MerchantChanged) => {
                        needs.attr[Attr::Merchant.index()] = true;
                    }
                    _ => {}
                }
            }
        }
        needs.key[Entity::Card as usize] |= needs.attr[Attr::Card.index()];
        needs.key[Entity::Merchant as usize] |= needs.attr[Attr::Merchant.index()];
        FeatureEngine {
            spec,
            tables,
            needs,
            tx_slots,
            watermark: i64::MIN,
            label_max_known: i64::MIN,
            next_sweep: i64::MIN,
            stats: EngineStats::default(),
            held: FxHashMap::default(),
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

    /// The compact event for `tx` at window time `t`.
    fn compact(&self, tx: &Transaction, t: i64, keys: &[u64; 2]) -> Ev {
        let (lat, lon) = match (tx.lat, tx.lon) {
            (Some(a), Some(o)) => (a as f32, o as f32),
            _ => (f32::NAN, f32::NAN),
        };
        let need = &self.needs.attr;
        let mut attrs = [0u32; 4];
        if need[Attr::Card.index()] {
            attrs[Attr::Card.index()] = attr_hash(keys[Entity::Card as usize]);
        }
        if need[Attr::Merchant.index()] {
            attrs[Attr::Merchant.index()] = attr_hash(keys[Entity::Merchant as usize]);
        }
        if need[Attr::Country.index()] {
            attrs[Attr::Country.index()] =
                tx.country.as_deref().map_or(0, |c| attr_hash(hash_str(c)));
        }
        attrs[Attr::Mcc.index()] = tx.mcc.map_or(0, |m| u32::from(m) + 1);
        Ev {
            ts: t,
            known_at: NO_LABEL,
            tx: if self.needs.tx {
                hash_str(&tx.transaction_id)
            } else {
                0
            },
            amount: tx.amount.min(AMOUNT_CAP) as f32,
            lat,
            lon,
            attrs,
            fraud: false,
        }
    }

    /// Hashes of the entity ids the spec reads (0 for the others: never looked at).
    fn keys(&self, tx: &Transaction) -> [u64; 2] {
        let mut keys = [0u64; 2];
        for e in Entity::ALL {
            if self.needs.key[e as usize] {
                keys[e as usize] = hash_str(e.key_of(tx));
            }
        }
        keys
    }

    /// Online step: writes the features of `tx`, computed from the state *before* it, into `out`
    /// (length [`FeatureSpec::n_features`]), then adds `tx` to the state.
    ///
    /// # Panics
    /// If `out.len()` is not the spec's feature count (a programming error, not an input one).
    pub fn process(&mut self, tx: &Transaction, out: &mut [f32]) -> EventOutcome {
        assert_eq!(out.len(), self.spec.n_features(), "feature row length");
        let id = hash_str(&tx.transaction_id);
        let horizon_now = self.horizon_at(self.watermark);
        if self.held.get(&id).is_some_and(|&ts| ts > horizon_now) {
            self.stats.events_duplicate += 1;
            self.peek_placed(tx, self.place(tx.timestamp_ms), out);
            return EventOutcome::Duplicate;
        }
        let place = self.place(tx.timestamp_ms);
        match place.outcome {
            // Decided above; `place` never returns it.
            EventOutcome::Duplicate => {}
            EventOutcome::InOrder => {
                self.stats.events_in_order += 1;
                self.watermark = place.t;
                if self.watermark >= self.next_sweep {
                    self.sweep();
                }
            }
            EventOutcome::Late => self.stats.events_late += 1,
            EventOutcome::TooLate => self.stats.events_too_late += 1,
        }
        if !place.store {
            self.peek_placed(tx, place, out);
            return place.outcome;
        }
        let t = place.t;
        self.held.insert(id, t);
        let keys = self.keys(tx);
        let cur = self.compact(tx, t, &keys);
        let horizon = self.horizon_at(self.watermark);
        let retention_ms = self.spec.retention_ms();
        let risk_fast = self.label_max_known <= t;
        let in_order = place.outcome == EventOutcome::InOrder;
        for table in &mut self.tables {
            let Table { cfg, map, tx_index } = table;
            let key = keys[cfg.entity as usize];
            let st = map.entry(key).or_insert_with(|| cfg.new_state());
            if in_order {
                advance(&st.events, st.t_run, &mut st.wins, &mut st.risks, cfg, t);
                st.t_run = t;
                let ctx = Ctx {
                    events: &st.events,
                    end: st.events.len(),
                    t,
                    horizon,
                    cur: &cur,
                    run: Some((&st.wins, &st.risks)),
                    risk_fast,
                    retention_ms,
                };
                for &(col, slot) in &cfg.slots {
                    out[col] = ctx.slot(cfg, slot);
                }
                st.evict(key, horizon, tx_index);
                let p = st.events.len();
                st.insert(p, cur, cfg);
            } else {
                let p = st.events.partition_point(|e| e.ts <= t);
                let ctx = Ctx {
                    events: &st.events,
                    end: p,
                    t,
                    horizon,
                    cur: &cur,
                    run: None,
                    risk_fast: false,
                    retention_ms,
                };
                for &(col, slot) in &cfg.slots {
                    out[col] = ctx.slot(cfg, slot);
                }
                st.insert(p, cur, cfg);
            }
            if let Some(index) = tx_index.as_mut() {
                index.insert(cur.tx, (key, t));
            }
        }
        for &(col, f) in &self.tx_slots {
            out[col] = tx_value(f, tx);
        }
        place.outcome
    }

    /// The features [`process`](Self::process) would write for `tx` now, without changing any
    /// state (dry-run scoring).
    ///
    /// # Panics
    /// If `out.len()` is not the spec's feature count.
    pub fn peek(&self, tx: &Transaction, out: &mut [f32]) {
        assert_eq!(out.len(), self.spec.n_features(), "feature row length");
        self.peek_placed(tx, self.place(tx.timestamp_ms), out);
    }

    fn peek_placed(&self, tx: &Transaction, place: Placement, out: &mut [f32]) {
        let t = place.t;
        let keys = self.keys(tx);
        let cur = self.compact(tx, t, &keys);
        let watermark = self.watermark.max(t);
        let horizon = self.horizon_at(watermark);
        let empty = VecDeque::new();
        for table in &self.tables {
            let cfg = &table.cfg;
            let st = table.map.get(&keys[cfg.entity as usize]);
            let events = st.map_or(&empty, |s| &s.events);
            let run = match st {
                Some(st) if place.outcome == EventOutcome::InOrder => {
                    let mut wins = st.wins.to_vec();
                    let mut risks = st.risks.to_vec();
                    advance(&st.events, st.t_run, &mut wins, &mut risks, cfg, t);
                    Some((wins, risks))
                }
                _ => None,
            };
            let ctx = Ctx {
                events,
                end: events.partition_point(|e| e.ts <= t),
                t,
                horizon,
                cur: &cur,
                run: run.as_ref().map(|(w, r)| (w.as_slice(), r.as_slice())),
                risk_fast: run.is_some() && self.label_max_known <= t,
                retention_ms: self.spec.retention_ms(),
            };
            for &(col, slot) in &cfg.slots {
                out[col] = ctx.slot(cfg, slot);
            }
        }
        for &(col, f) in &self.tx_slots {
            out[col] = tx_value(f, tx);
        }
    }

    /// Applies a label to the transaction it names, if the engine holds it. A later label for the
    /// same transaction replaces the earlier one. Risk features count a fraud label only for
    /// events at or after its `known_at`.
    pub fn observe_label(&mut self, label: &LabelEvent) -> LabelOutcome {
        if self.tables.iter().all(|t| t.tx_index.is_none()) {
            self.stats.labels_unused += 1;
            return LabelOutcome::NotUsed;
        }
        let h = hash_str(&label.transaction_id);
        let horizon = self.horizon_at(self.watermark);
        let mut applied = false;
        for table in &mut self.tables {
            let Some(&(key, ts)) = table.tx_index.as_ref().and_then(|ix| ix.get(&h)) else {
                continue;
            };
            if ts <= horizon {
                continue;
            }
            let Some(st) = table.map.get_mut(&key) else {
                continue;
            };
            let a = st.events.partition_point(|e| e.ts < ts);
            let b = st.events.partition_point(|e| e.ts <= ts);
            // The last one: with a reused id, the index points at the latest transaction.
            let Some(i) = (a..b).rev().find(|&i| st.events[i].tx == h) else {
                continue;
            };
            let was = st.events[i].fraud;
            st.events[i].fraud = label.fraud;
            st.events[i].known_at = label.known_at_ms;
            if st.t_run != i64::MIN {
                for r in st.risks.iter_mut() {
                    if (r.lo..r.hi).contains(&i) {
                        r.fraud = r.fraud + u32::from(label.fraud) - u32::from(was);
                    }
                }
            }
            applied = true;
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

    /// Evicts everything at or before the retention horizon from every entity, and removes
    /// entities left empty. Runs every eighth of the retention of event time, so memory is bounded
    /// by the events of one retention period (plus an eighth).
    fn sweep(&mut self) {
        let horizon = self.horizon_at(self.watermark);
        for table in &mut self.tables {
            let Table { map, tx_index, .. } = table;
            map.retain(|&key, st| {
                st.evict(key, horizon, tx_index);
                !st.events.is_empty()
            });
        }
        self.held.retain(|_, ts| *ts > horizon);
        let every = (self.spec.retention_ms() / 8).max(1000);
        self.next_sweep = self.watermark.saturating_add(every);
    }

    /// Counters plus the current population. Walks every entity to count held events (O(entities),
    /// a few ms at a million cards): call it for monitoring, not per event.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            entities: self.tables.iter().map(|t| t.map.len()).sum(),
            events_held: self
                .tables
                .iter()
                .map(|t| t.map.values().map(|s| s.events.len()).sum::<usize>())
                .sum(),
            watermark_ms: self.watermark_ms(),
            ..self.stats.clone()
        }
    }
}

/// `events[i].ts`, or `i64::MAX` past the end.
fn ts_at(events: &VecDeque<Ev>, i: usize) -> i64 {
    events.get(i).map_or(i64::MAX, |e| e.ts)
}

fn index_of<T: PartialEq + Copy>(v: &mut Vec<T>, x: T) -> usize {
    match v.iter().position(|y| *y == x) {
        Some(i) => i,
        None => {
            v.push(x);
            v.len() - 1
        }
    }
}
