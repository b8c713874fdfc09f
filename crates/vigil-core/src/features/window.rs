//! Feature values: what one event reads off an entity's window state. [`Ctx::write`] computes
//! a table's columns, from the running aggregates on the fast path or by scanning the events on
//! the slow one; [`advance`] and [`on_insert`] keep the running aggregates positioned as the
//! window edges move and events arrive; [`write_tx`] writes the per-transaction features. The
//! engine (`engine.rs`) decides which path an event takes and when state changes.

use super::plan::{Source, TableCfg};
use super::spec::{Agg, Attr, DistinctOut, PrevOut, TxFeature};
use super::table::{Ev, Events, RunRisk, RunWin};
use crate::record::{Channel, Transaction};

pub(super) const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Window-aggregate inputs: count, sum, sum of squares, max.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    pub(super) n: u32,
    pub(super) sum: f64,
    pub(super) sumsq: f64,
    pub(super) max: f32,
}

impl Stats {
    #[inline]
    fn add(&mut self, a: f32) {
        let x = f64::from(a);
        self.max = if self.n == 0 { a } else { self.max.max(a) };
        self.n += 1;
        self.sum += x;
        self.sumsq += x * x;
    }
}

/// The column of attribute `a` (for the MCC, the low bits of `bits`, masked by the caller).
fn attr_col<'a>(events: &Events<'a>, a: Attr) -> &'a [u32] {
    match a {
        Attr::Mcc => events.bits,
        Attr::Card | Attr::Merchant | Attr::Country => events.attrs[a.index()],
    }
}

/// Attribute `a` of the current event.
fn cur_attr(e: &Ev, a: Attr) -> u32 {
    match a {
        Attr::Mcc => e.bits & MCC_MASK,
        Attr::Card | Attr::Merchant | Attr::Country => e.attrs[a.index()],
    }
}

const MCC_MASK: u32 = 0xffff;

/// Converts to `f32` and guarantees a finite value (NaN -> 0, overflow -> +-MAX).
#[inline]
pub(super) fn finite(x: f64) -> f32 {
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

/// Running aggregates positioned at the event time (fast path).
#[derive(Clone, Copy)]
pub(super) struct Run<'a> {
    pub(super) wins: &'a [RunWin],
    pub(super) risks: &'a [RunRisk],
    /// Whether the running risk counts may be used (no applied label is known after `t`).
    pub(super) risk_fast: bool,
}

/// Everything a [`Source`] needs to compute its value for one event and one entity.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a TableCfg,
    /// Events `[..end]` are the ones processed before this event with `ts <= t`.
    pub(super) events: Events<'a>,
    pub(super) end: usize,
    pub(super) t: i64,
    /// Events at or before this time are ignored (retention horizon).
    pub(super) horizon: i64,
    pub(super) cur: &'a Ev,
    pub(super) run: Option<Run<'a>>,
    pub(super) retention_ms: i64,
}

impl Ctx<'_> {
    /// Index of the first event with `ts > max(lower, horizon)` (at most `end`).
    #[inline]
    fn from(&self, lower: i64) -> usize {
        self.events.after(lower.max(self.horizon), self.end)
    }

    /// Start of window `w`: the running pointer on the fast path, a search otherwise.
    #[inline]
    fn win_start(&self, w: usize) -> usize {
        match self.run {
            Some(run) => run.wins[w].start as usize,
            None => self.from(self.t - self.cfg.win_lens[w]),
        }
    }

    /// Index of the newest event before this one (within retention) satisfying `pred`.
    #[inline]
    fn previous(&self, pred: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.end)
            .rev()
            .take_while(|&i| self.events.ts[i] > self.horizon)
            .find(|&i| pred(i))
    }

    fn source(&self, source: Source) -> f32 {
        match source {
            // Written by `write` through the window groups.
            Source::Win { .. } | Source::Prev(_) => 0.0,
            Source::Distinct { w, of, incl, out } => {
                let window = &attr_col(&self.events, of)[self.win_start(w)..self.end];
                let mask = if of == Attr::Mcc { MCC_MASK } else { u32::MAX };
                let v = cur_attr(self.cur, of);
                match out {
                    DistinctOut::Count => {
                        let vals = window.iter().map(|&a| a & mask);
                        let extra = if incl { Some(v) } else { None };
                        count_distinct(vals.chain(extra)) as f32
                    }
                    DistinctOut::IsNew => {
                        let seen = window.iter().any(|&a| a & mask == v);
                        f32::from(u8::from(v != 0 && !seen))
                    }
                }
            }
            Source::Risk { r, count } => {
                let (n, fraud) = match self.run {
                    Some(run) if run.risk_fast => (run.risks[r].n, run.risks[r].fraud),
                    _ => {
                        let (length_ms, delay_ms) = self.cfg.risk_params[r];
                        let end = self.from(self.t - delay_ms);
                        let a = self.from(self.t - delay_ms - length_ms).min(end);
                        let ev = &self.events;
                        let fraud = (a..end)
                            .filter(|&i| ev.fraud(i) && ev.known_at[i] <= self.t)
                            .count();
                        ((end - a) as u32, fraud as u32)
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

    fn prev_value(&self, out: PrevOut, prev: Option<usize>, prev_located: Option<usize>) -> f32 {
        let cur = self.cur;
        let ev = &self.events;
        match out {
            PrevOut::SecsSince => match prev {
                Some(p) => finite((self.t - ev.ts[p]) as f64 / 1000.0),
                None => finite(self.retention_ms as f64 / 1000.0),
            },
            PrevOut::KmhSince => {
                if !cur.located() {
                    return 0.0;
                }
                match prev_located {
                    Some(p) => {
                        let km = haversine_km(ev.lat[p], ev.lon[p], cur.lat, cur.lon);
                        let hours = ((self.t - ev.ts[p]) as f64 / HOUR_MS as f64).max(1.0 / 60.0);
                        finite(km / hours)
                    }
                    None => 0.0,
                }
            }
            PrevOut::CountryChanged => {
                let i = Attr::Country.index();
                match prev {
                    Some(p) => {
                        let a = ev.attrs[i][p];
                        f32::from(u8::from(a != 0 && cur.attrs[i] != 0 && a != cur.attrs[i]))
                    }
                    None => 0.0,
                }
            }
            PrevOut::MerchantChanged => {
                let i = Attr::Merchant.index();
                match prev {
                    Some(p) => f32::from(u8::from(ev.attrs[i][p] != cur.attrs[i])),
                    None => 0.0,
                }
            }
        }
    }

    /// Statistics of window `w` over the events before this one.
    #[inline]
    fn win_stats(&self, w: usize) -> Stats {
        match self.run {
            Some(run) => {
                let r = &run.wins[w];
                Stats {
                    n: r.n,
                    sum: r.sum,
                    sumsq: r.sumsq,
                    max: r.max,
                }
            }
            None => {
                let mut s = Stats::default();
                for &a in &self.events.amount[self.win_start(w)..self.end] {
                    s.add(a);
                }
                s
            }
        }
    }

    /// Writes every column of this table for the event.
    pub(super) fn write(&self, out: &mut [f32]) {
        let amount = self.cur.amount;
        for g in &self.cfg.win_groups {
            let mut s = self.win_stats(g.w);
            if g.incl {
                s.add(amount);
            }
            let n = f64::from(s.n);
            let mean = if g.need_mean && s.n > 0 {
                s.sum / n
            } else {
                0.0
            };
            // Clamped: the incremental sums can leave a tiny negative variance.
            let std = if g.need_std && s.n >= 2 {
                (s.sumsq / n - mean * mean).max(0.0).sqrt()
            } else {
                0.0
            };
            for &(col, agg) in &g.outs {
                out[col] = match agg {
                    Agg::Count => s.n as f32,
                    Agg::Sum => finite(s.sum),
                    Agg::Mean => finite(mean),
                    Agg::Max => s.max,
                    Agg::Std => finite(std),
                    Agg::AmountToMean => {
                        if mean > 0.0 {
                            finite(f64::from(amount) / mean)
                        } else {
                            0.0
                        }
                    }
                };
            }
        }
        let (prev, prev_located) = if self.cfg.needs_prev {
            let prev = self.previous(|_| true);
            let located = if !self.cfg.needs_prev_located {
                None
            } else if prev.is_some_and(|p| self.events.located(p)) {
                prev
            } else {
                self.previous(|i| self.events.located(i))
            };
            (prev, located)
        } else {
            (None, None)
        };
        for &(col, source) in &self.cfg.other_sources {
            out[col] = match source {
                Source::Prev(o) => self.prev_value(o, prev, prev_located),
                other => self.source(other),
            };
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

/// `ts[i]`, or `i64::MAX` past the end.
#[inline]
fn ts_at(ts: &[i64], i: usize) -> i64 {
    ts.get(i).copied().unwrap_or(i64::MAX)
}

/// Positions the running aggregates at time `t` (`t >= t_run`, every event has `ts <= t`).
/// Rebuilds them by scan when `t_run` is `i64::MIN`.
pub(super) fn advance(
    events: &Events<'_>,
    t_run: i64,
    wins: &mut [RunWin],
    risks: &mut [RunRisk],
    cfg: &TableCfg,
    t: i64,
) {
    let (ts, amount) = (events.ts, events.amount);
    if t_run == i64::MIN {
        for (w, &len) in wins.iter_mut().zip(&cfg.win_lens) {
            let start = ts.partition_point(|&x| x <= t - len);
            let mut s = Stats::default();
            for &a in &amount[start..] {
                s.add(a);
            }
            *w = RunWin {
                start: start as u32,
                exit_ts: ts_at(ts, start),
                n: s.n,
                sum: s.sum,
                sumsq: s.sumsq,
                max: s.max,
                max_ok: 1,
                _pad: [0],
            };
        }
        for (r, &(len, delay)) in risks.iter_mut().zip(&cfg.risk_params) {
            let hi = ts.partition_point(|&x| x <= t - delay);
            let lo = ts.partition_point(|&x| x <= t - delay - len).min(hi);
            let fraud = (lo..hi).filter(|&i| events.fraud(i)).count() as u32;
            *r = RunRisk {
                lo: lo as u32,
                hi: hi as u32,
                lo_ts: if lo < hi { ts[lo] } else { i64::MAX },
                hi_ts: ts_at(ts, hi),
                n: (hi - lo) as u32,
                fraud,
                _pad: [0; 2],
            };
        }
        return;
    }
    for ((w, &len), &need_max) in wins.iter_mut().zip(&cfg.win_lens).zip(&cfg.win_max) {
        let lower = t - len;
        if w.exit_ts > lower {
            continue;
        }
        let mut start = w.start as usize;
        while start < ts.len() && ts[start] <= lower {
            let a = amount[start];
            let x = f64::from(a);
            w.n -= 1;
            w.sum -= x;
            w.sumsq -= x * x;
            if a >= w.max {
                w.max_ok = 0;
            }
            start += 1;
        }
        w.start = start as u32;
        w.exit_ts = ts_at(ts, start);
        if w.n == 0 {
            // Exact zero instead of accumulated rounding residue.
            *w = RunWin {
                start: w.start,
                exit_ts: i64::MAX,
                max_ok: 1,
                ..RunWin::default()
            };
        } else if w.max_ok == 0 && need_max {
            w.max = amount[start..].iter().copied().fold(0.0, f32::max);
            w.max_ok = 1;
        }
    }
    for (r, &(len, delay)) in risks.iter_mut().zip(&cfg.risk_params) {
        if r.hi_ts <= t - delay {
            let mut hi = r.hi as usize;
            while hi < ts.len() && ts[hi] <= t - delay {
                r.n += 1;
                r.fraud += u32::from(events.fraud(hi));
                r.lo_ts = r.lo_ts.min(ts[hi]);
                hi += 1;
            }
            r.hi = hi as u32;
            r.hi_ts = ts_at(ts, hi);
        }
        if r.lo_ts <= t - delay - len {
            let (mut lo, hi) = (r.lo as usize, r.hi as usize);
            while lo < hi && ts[lo] <= t - delay - len {
                r.n -= 1;
                r.fraud -= u32::from(events.fraud(lo));
                lo += 1;
            }
            r.lo = lo as u32;
            r.lo_ts = if lo < hi { ts[lo] } else { i64::MAX };
        }
    }
}

/// Keeps the running aggregates (positioned at `t_run`) consistent with the insertion of `ev`
/// at live index `p`.
pub(super) fn on_insert(
    wins: &mut [RunWin],
    risks: &mut [RunRisk],
    cfg: &TableCfg,
    t_run: i64,
    ev: &Ev,
) {
    if t_run == i64::MIN {
        return;
    }
    for (w, &len) in wins.iter_mut().zip(&cfg.win_lens) {
        if ev.ts <= t_run - len {
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
    for (r, &(len, delay)) in risks.iter_mut().zip(&cfg.risk_params) {
        if ev.ts <= t_run - delay - len {
            r.lo += 1;
            r.hi += 1;
        } else if ev.ts <= t_run - delay {
            r.lo_ts = r.lo_ts.min(ev.ts);
            r.n += 1;
            r.hi += 1;
        } else {
            r.hi_ts = r.hi_ts.min(ev.ts);
        }
    }
}

/// Writes the per-transaction features (`features`: output column, feature).
pub(super) fn write_tx(features: &[(usize, TxFeature)], tx: &Transaction, out: &mut [f32]) {
    let ts = tx.timestamp_ms;
    let day = ts.div_euclid(DAY_MS);
    let hour = (ts - day * DAY_MS) / HOUR_MS;
    let flag = |b: bool| f32::from(u8::from(b));
    for &(col, f) in features {
        out[col] = match f {
            TxFeature::Amount => finite(tx.amount),
            TxFeature::LogAmount => finite(tx.amount.ln_1p()),
            TxFeature::HourOfDay => hour as f32,
            // 1970-01-01 was a Thursday: (days + 3) mod 7 counts from Monday = 0.
            TxFeature::IsWeekend => flag((day + 3).rem_euclid(7) >= 5),
            TxFeature::IsNight => flag(hour < 6),
            TxFeature::ChannelPos => flag(tx.channel == Some(Channel::Pos)),
            TxFeature::ChannelOnline => flag(tx.channel == Some(Channel::Online)),
            TxFeature::ChannelAtm => flag(tx.channel == Some(Channel::Atm)),
            TxFeature::ChannelMoto => flag(tx.channel == Some(Channel::Moto)),
            TxFeature::HasLocation => flag(tx.lat.is_some() && tx.lon.is_some()),
        };
    }
}
