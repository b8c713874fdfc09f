//! Property tests: the O(n log n) sweeps agree with the O(n^2) textbook definitions.

use proptest::prelude::*;
use vigil::eval::Ranking;

/// P(score of a random positive > score of a random negative) + 0.5 P(tie).
fn brute_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &si) in scores.iter().enumerate() {
        for (j, &sj) in scores.iter().enumerate() {
            if labels[i] && !labels[j] {
                pairs += 1.0;
                if si > sj {
                    wins += 1.0;
                } else if si == sj {
                    wins += 0.5;
                }
            }
        }
    }
    (pairs > 0.0).then(|| wins / pairs)
}

/// Mean over positives of the precision at that positive's score (all rows scoring at least as
/// high are flagged) -- average precision with ties grouped, written from the definition.
fn brute_ap(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return None;
    }
    let mut sum = 0.0;
    for (i, &si) in scores.iter().enumerate() {
        if labels[i] {
            let flagged = scores.iter().filter(|&&s| s >= si).count();
            let tp = scores
                .iter()
                .zip(labels)
                .filter(|(&s, &l)| l && s >= si)
                .count();
            sum += tp as f64 / flagged as f64;
        }
    }
    Some(sum / positives as f64)
}

fn data() -> impl Strategy<Value = (Vec<f32>, Vec<bool>)> {
    // Scores on a coarse grid so ties are common.
    prop::collection::vec((0u8..12, any::<bool>()), 0..60).prop_map(|rows| {
        rows.into_iter()
            .map(|(s, l)| (f32::from(s) / 11.0, l))
            .unzip()
    })
}

proptest! {
    #[test]
    fn auc_and_ap_match_their_definitions((scores, labels) in data()) {
        let r = Ranking::new(&scores, &labels).unwrap();
        let has_neg = labels.iter().any(|&l| !l);
        let expected_auc = if has_neg { brute_auc(&scores, &labels) } else { None };
        match (r.auc_roc(), expected_auc) {
            (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "auc {} vs {}", a, b),
            (a, b) => prop_assert_eq!(a, b),
        }
        match (r.average_precision(), brute_ap(&scores, &labels)) {
            (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "ap {} vs {}", a, b),
            (a, b) => prop_assert_eq!(a, b),
        }
    }

    #[test]
    fn confusion_is_consistent_and_thresholds_valid((scores, labels) in data(), t in 0u8..13) {
        let r = Ranking::new(&scores, &labels).unwrap();
        let threshold = f32::from(t) / 11.0;
        let c = r.confusion_at(threshold);
        let flagged = scores.iter().filter(|&&s| s >= threshold).count() as u64;
        prop_assert_eq!(c.flagged(), flagged);
        prop_assert_eq!(c.total(), scores.len() as u64);
        prop_assert_eq!(c.tp + c.fn_, r.positives());
        if !scores.is_empty() {
            let th = r.suggest_thresholds().unwrap();
            prop_assert!(th.validate().is_ok(), "{:?}", th);
        }
    }
}

/// Card precision@k by the definition: per day, every card's max score and fraud flag, fully
/// sorted (score desc, card id), top k.
fn brute_card_precision(
    scores: &[f32],
    labels: &[bool],
    cards: &[String],
    days: &[i64],
    k: usize,
) -> Vec<f64> {
    use std::collections::BTreeMap;
    let mut by_day: BTreeMap<i64, BTreeMap<&str, (f32, bool)>> = BTreeMap::new();
    for i in 0..scores.len() {
        let e = by_day
            .entry(days[i])
            .or_default()
            .entry(cards[i].as_str())
            .or_insert((f32::NEG_INFINITY, false));
        e.0 = e.0.max(scores[i]);
        e.1 |= labels[i];
    }
    by_day
        .values()
        .map(|cards| {
            let mut v: Vec<(&str, f32, bool)> =
                cards.iter().map(|(c, &(s, f))| (*c, s, f)).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
            let top = &v[..v.len().min(k)];
            top.iter().filter(|x| x.2).count() as f64 / top.len() as f64
        })
        .collect()
}

proptest! {
    #[test]
    fn card_precision_matches_definition(
        rows in prop::collection::vec((0u8..6, any::<bool>(), 0u8..15, 0i64..3), 1..200),
        k in 1usize..8,
    ) {
        let scores: Vec<f32> = rows.iter().map(|r| f32::from(r.0) / 5.0).collect();
        let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
        let cards: Vec<String> = rows.iter().map(|r| format!("c{}", r.2)).collect();
        let days: Vec<i64> = rows.iter().map(|r| r.3).collect();
        let ts: Vec<i64> = days.iter().map(|d| d * 86_400_000 + 1234).collect();
        let got = vigil::eval::card_precision_at_k(&scores, &labels, &cards, &ts, k).unwrap();
        let got: Vec<f64> = got.per_day.iter().map(|d| d.precision).collect();
        prop_assert_eq!(got, brute_card_precision(&scores, &labels, &cards, &days, k));
    }
}
