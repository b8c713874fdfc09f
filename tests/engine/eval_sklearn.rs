//! AUC ROC and average precision against values computed by scikit-learn 1.9.1
//! (`roc_auc_score`, `average_precision_score`) on the same deterministic data, generated here
//! and in Python by the same integer formulas. Scores are quantised to few levels so ties are
//! everywhere, which is where rank-based implementations usually diverge.
//!
//! The Python side, for reproduction:
//! ```python
//! i = np.arange(n, dtype=np.int64)
//! s = ((i * 2654435761) % levels).astype(np.float32) / np.float32(levels)
//! u = ((i * 40503) % 1000).astype(np.float64) / 1000.0
//! y = u < 0.02 + mul * s.astype(np.float64) ** 2
//! ```

use vigil::eval::Ranking;

fn case(n: u64, levels: u64, mul: f64) -> (Vec<f32>, Vec<bool>) {
    (0..n)
        .map(|i| {
            let s = ((i * 2_654_435_761) % levels) as f32 / levels as f32;
            let u = ((i * 40_503) % 1000) as f64 / 1000.0;
            let sf = f64::from(s);
            (s, u < 0.02 + mul * (sf * sf))
        })
        .unzip()
}

#[test]
fn matches_scikit_learn_on_heavily_tied_data() {
    // (n, levels, mul, positives, roc_auc_score, average_precision_score)
    let cases = [
        (1000, 97, 0.3, 119, 0.7422428676351358, 0.2548216975214831),
        (10007, 13, 0.1, 505, 0.6583431106739384, 0.08354262237157292),
        (
            50000,
            1000,
            0.05,
            1750,
            0.5806069578090303,
            0.046460913626896194,
        ),
    ];
    for (n, levels, mul, positives, auc, ap) in cases {
        let (scores, labels) = case(n, levels, mul);
        let r = Ranking::new(&scores, &labels).unwrap();
        assert_eq!(r.positives(), positives, "case n={n}");
        let got_auc = r.auc_roc().unwrap();
        let got_ap = r.average_precision().unwrap();
        assert!(
            (got_auc - auc).abs() < 1e-12,
            "n={n}: auc {got_auc} vs sklearn {auc}"
        );
        assert!(
            (got_ap - ap).abs() < 1e-12,
            "n={n}: ap {got_ap} vs sklearn {ap}"
        );
    }
}
