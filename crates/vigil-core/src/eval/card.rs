//! Card precision@k per day, the metric of the Fraud Detection Handbook ("card precision top-k").
//!
//! AUC and AP rank *transactions*, but a fraud team investigates *cards*, and only as many per
//! day as it has investigators. So for every UTC calendar day: each card gets its highest score
//! of the day, cards are ranked by it, the top `k` are "investigated", and the precision is the
//! fraction of those cards that had at least one fraudulent transaction that day.
//!
//! Two choices worth knowing when comparing with the Handbook's Python:
//! - On a day with fewer than `k` cards, the precision is over the cards that exist (`hits /
//!   cards`), not `hits / k`; the Handbook divides by `k`, which only differs on toy data.
//! - Cards tied on score at the cut-off are taken in card-id order so the result is
//!   deterministic (the Handbook's order there is whatever pandas' sort yields).
//! - The Handbook's variant that drops cards already found compromised on earlier days is not
//!   applied: here every day is scored on its own.

use std::hash::Hash;

use chrono::DateTime;
use rayon::slice::ParallelSliceMut;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::EvalError;

/// Milliseconds in a UTC day (UTC has no DST; leap seconds do not exist in epoch time).
const DAY_MS: i64 = 86_400_000;

/// Card precision@k of one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyCardPrecision {
    /// The day, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Distinct cards with at least one scored transaction that day.
    pub cards: u64,
    /// Of those, cards with at least one fraud that day (the most `hits` could be).
    pub fraud_cards: u64,
    /// Fraudulent cards among the top `min(k, cards)` investigated.
    pub hits: u64,
    /// `hits / min(k, cards)`.
    pub precision: f64,
}

/// Card precision@k over all days: the per-day values in date order and their unweighted mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardPrecision {
    pub k: usize,
    /// Mean of the per-day precisions; `None` when there are no rows.
    pub mean: Option<f64>,
    pub per_day: Vec<DailyCardPrecision>,
}

/// One scored row, and after aggregation a card's summary for one day: its highest score and
/// whether any of its transactions that day was fraud.
#[derive(Debug, Clone, Copy)]
struct CardDay {
    /// Days since the epoch (UTC).
    day: i64,
    /// Index into the interned card keys.
    card: usize,
    max_score: f32,
    fraud: bool,
}

/// Below this many rows a sequential sort is faster than waking the rayon pool.
const PARALLEL_SORT_MIN_ROWS: usize = 1 << 16;

/// Computes card precision@k per UTC day (see the module doc for the definition).
///
/// Cards can be any hashable, ordered key: `&str` / `String` ids work directly, and a caller
/// holding pre-interned integer ids (`u32`, `u64`) avoids hashing strings, which is where the
/// time goes on large inputs (see `benches/eval.rs`). The key's `Ord` breaks score ties.
///
/// Fails when the slices differ in length, `k` is 0, a score is not finite or a timestamp is
/// outside chrono's date range (about +/-262,000 years).
pub fn card_precision_at_k<K: Hash + Eq + Ord>(
    scores: &[f32],
    labels: &[bool],
    cards: &[K],
    timestamps_ms: &[i64],
    k: usize,
) -> Result<CardPrecision, EvalError> {
    if k == 0 {
        return Err(EvalError::ZeroK);
    }
    for (column, found) in [
        ("labels", labels.len()),
        ("card ids", cards.len()),
        ("timestamps", timestamps_ms.len()),
    ] {
        if found != scores.len() {
            return Err(EvalError::LengthMismatch {
                column,
                expected: scores.len(),
                found,
            });
        }
    }

    // Cards are interned once into a small map (one entry per card, cache friendly); the
    // per-(day, card) aggregation is then a sort of compact integer-keyed rows rather than a
    // hash map with one entry per (day, card): profiling showed that map's random accesses as
    // the dominant cost, while the sort streams through memory.
    let mut card_index: FxHashMap<&K, usize> = FxHashMap::default();
    let mut card_keys: Vec<&K> = Vec::new();
    let mut rows: Vec<CardDay> = Vec::with_capacity(scores.len());
    for (index, (((&score, &fraud), card), &ts)) in scores
        .iter()
        .zip(labels)
        .zip(cards)
        .zip(timestamps_ms)
        .enumerate()
    {
        if !score.is_finite() {
            return Err(EvalError::NonFiniteScore { index, score });
        }
        let card = *card_index.entry(card).or_insert_with(|| {
            card_keys.push(card);
            card_keys.len() - 1
        });
        rows.push(CardDay {
            day: ts.div_euclid(DAY_MS),
            card,
            max_score: score,
            fraud,
        });
    }
    let by_day_card = |r: &CardDay| (r.day, r.card);
    if rows.len() >= PARALLEL_SORT_MIN_ROWS {
        rows.par_sort_unstable_by_key(by_day_card);
    } else {
        rows.sort_unstable_by_key(by_day_card);
    }
    // Collapse each (day, card) run into one entry, keeping the order (sorted by day).
    let mut entries: Vec<CardDay> = Vec::new();
    for run in rows.chunk_by(|a, b| by_day_card(a) == by_day_card(b)) {
        let mut cd = run[0]; // chunk_by never yields an empty run
        for r in &run[1..] {
            cd.max_score = cd.max_score.max(r.max_score);
            cd.fraud |= r.fraud;
        }
        entries.push(cd);
    }
    drop(rows);

    // Investigation order: highest score first, card key breaking ties deterministically. Only
    // each day's top k is *selected*, not the whole day sorted.
    // Card indices come from `card_keys.len() - 1` above, so indexing cannot fail.
    let investigation_order = |a: &CardDay, b: &CardDay| {
        b.max_score
            .total_cmp(&a.max_score)
            .then_with(|| card_keys[a.card].cmp(card_keys[b.card]))
    };

    let mut per_day = Vec::new();
    for run in entries.chunk_by_mut(|a, b| a.day == b.day) {
        let day = run[0].day; // chunk_by_mut never yields an empty run
        let date = format_day(day).ok_or_else(|| {
            // Report the first offending input timestamp, not the derived day number.
            let timestamp_ms = timestamps_ms
                .iter()
                .copied()
                .find(|ts| ts.div_euclid(DAY_MS) == day)
                .unwrap_or(day.saturating_mul(DAY_MS));
            EvalError::TimestampOutOfRange { timestamp_ms }
        })?;
        let investigated = run.len().min(k);
        if investigated < run.len() {
            // Afterwards run[..investigated] holds exactly the top `investigated` cards.
            run.select_nth_unstable_by(investigated - 1, investigation_order);
        }
        let hits = run[..investigated].iter().filter(|cd| cd.fraud).count();
        per_day.push(DailyCardPrecision {
            date,
            cards: run.len() as u64,
            fraud_cards: run.iter().filter(|cd| cd.fraud).count() as u64,
            hits: hits as u64,
            precision: hits as f64 / investigated as f64,
        });
    }
    let mean = (!per_day.is_empty())
        .then(|| per_day.iter().map(|d| d.precision).sum::<f64>() / per_day.len() as f64);
    Ok(CardPrecision { k, mean, per_day })
}

/// `YYYY-MM-DD` of a day number since the epoch; `None` outside chrono's range.
fn format_day(day: i64) -> Option<String> {
    let secs = day.checked_mul(DAY_MS / 1000)?;
    let t = DateTime::from_timestamp(secs, 0)?;
    Some(t.format("%Y-%m-%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-01T00:00:00Z in epoch ms.
    const MAR1: i64 = 1_709_251_200_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn hand_made_multi_day_example() {
        // Day 1 (2024-03-01), k = 2:
        //   card a: 0.9 (legit), 0.2 (fraud)  -> max 0.9, fraud that day
        //   card b: 0.8 (legit)               -> max 0.8, clean
        //   card c: 0.7 (fraud)               -> max 0.7, fraud
        //   top 2 = a, b -> 1 hit -> 0.5
        // Day 2 (2024-03-02), k = 2:
        //   card a: 0.1 (legit) -> clean today even though it was fraudulent yesterday
        //   card c: 0.95 (fraud), card d: 0.6 (fraud)
        //   top 2 = c, d -> 2 hits -> 1.0
        // Day 3 (2024-03-03): one card, clean -> 0 / min(2, 1) = 0.0
        let rows: Vec<(f32, bool, &str, i64)> = vec![
            (0.9, false, "a", MAR1 + HOUR),
            (0.2, true, "a", MAR1 + 23 * HOUR),
            (0.8, false, "b", MAR1 + 2 * HOUR),
            (0.7, true, "c", MAR1 + 3 * HOUR),
            (0.1, false, "a", MAR1 + 24 * HOUR),
            (0.95, true, "c", MAR1 + 30 * HOUR),
            (0.6, true, "d", MAR1 + 47 * HOUR),
            (0.3, false, "e", MAR1 + 48 * HOUR),
        ];
        let scores: Vec<f32> = rows.iter().map(|r| r.0).collect();
        let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
        let cards: Vec<&str> = rows.iter().map(|r| r.2).collect();
        let ts: Vec<i64> = rows.iter().map(|r| r.3).collect();
        let cp = card_precision_at_k(&scores, &labels, &cards, &ts, 2).unwrap();
        let dates: Vec<&str> = cp.per_day.iter().map(|d| d.date.as_str()).collect();
        assert_eq!(dates, ["2024-03-01", "2024-03-02", "2024-03-03"]);
        let prec: Vec<f64> = cp.per_day.iter().map(|d| d.precision).collect();
        assert_eq!(prec, [0.5, 1.0, 0.0]);
        assert_eq!(cp.per_day[0].cards, 3);
        assert_eq!(cp.per_day[0].fraud_cards, 2);
        assert_eq!(cp.per_day[0].hits, 1);
        assert_eq!(cp.per_day[1].fraud_cards, 2);
        assert_eq!(cp.mean, Some(0.5));

        // With k = 3, day 1 investigates all three cards: 2 hits.
        let cp = card_precision_at_k(&scores, &labels, &cards, &ts, 3).unwrap();
        assert!((cp.per_day[0].precision - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn integer_card_ids_work_like_strings() {
        let ids = [3u32, 1, 2, 1];
        let names = ["c", "a", "b", "a"];
        let (s, l, t) = ([0.9, 0.5, 0.5, 0.1], [false, true, false, true], [MAR1; 4]);
        let by_id = card_precision_at_k(&s, &l, &ids, &t, 2).unwrap();
        let by_name = card_precision_at_k(&s, &l, &names, &t, 2).unwrap();
        assert_eq!(by_id, by_name);
        // Top 2: c (0.9, clean), then a (0.5, fraud) beats b (0.5) on id.
        assert_eq!(by_id.per_day[0].hits, 1);
        assert_eq!(by_id.per_day[0].fraud_cards, 1);
    }

    #[test]
    fn ties_at_the_cut_off_break_by_card_id() {
        let cp = card_precision_at_k(
            &[0.5, 0.5, 0.5],
            &[false, true, false],
            &["z", "m", "a"],
            &[MAR1; 3],
            2,
        )
        .unwrap();
        // Order a, m, z: top 2 = a (clean), m (fraud).
        assert_eq!(cp.per_day[0].hits, 1);
    }

    #[test]
    fn days_before_the_epoch_use_utc_calendar_days() {
        let cp =
            card_precision_at_k(&[0.5, 0.4], &[true, false], &["a", "b"], &[-1, 0], 5).unwrap();
        let dates: Vec<&str> = cp.per_day.iter().map(|d| d.date.as_str()).collect();
        assert_eq!(dates, ["1969-12-31", "1970-01-01"]);
    }

    #[test]
    fn errors_carry_the_offending_values() {
        let err = card_precision_at_k(&[0.5], &[true], &["a"], &[i64::MAX], 5).unwrap_err();
        assert!(matches!(
            err,
            EvalError::TimestampOutOfRange {
                timestamp_ms: i64::MAX
            }
        ));
        assert!(err.to_string().contains(&i64::MAX.to_string()));
        assert!(matches!(
            card_precision_at_k(&[0.5], &[true], &["a"], &[0], 0),
            Err(EvalError::ZeroK)
        ));
        assert!(matches!(
            card_precision_at_k(&[0.5], &[true], &["a", "b"], &[0], 1),
            Err(EvalError::LengthMismatch {
                column: "card ids",
                ..
            })
        ));
        let empty: [&str; 0] = [];
        let cp = card_precision_at_k(&[], &[], &empty, &[], 3).unwrap();
        assert_eq!(cp.mean, None);
        assert!(cp.per_day.is_empty());
    }
}
