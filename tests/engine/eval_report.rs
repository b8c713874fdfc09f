//! End-to-end: evaluate a synthetic scored history and write the plotted report.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil::decision::Thresholds;
use vigil::eval::{evaluate, Evaluation};
use vigil::offline::report::write_report;

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// 2024-03-01T00:00:00Z.
const START_MS: i64 = 1_709_251_200_000;
const DAY_MS: i64 = 86_400_000;

/// A seeded, plausible scored history: 14 days, 400 cards, ~2% fraud, scores that separate the
/// classes well but not perfectly.
fn synthetic() -> (Vec<f32>, Vec<bool>, Vec<String>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let n = 20_000;
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let fraud = rng.gen_bool(0.02);
        let u: f32 = rng.gen();
        let score = if fraud {
            1.0 - u * u * 0.9
        } else {
            u.powi(6) * 0.95
        };
        out.0.push(score);
        out.1.push(fraud);
        out.2.push(format!("card-{}", rng.gen_range(0..400)));
        out.3.push(START_MS + rng.gen_range(0..14 * DAY_MS));
    }
    out
}

fn synthetic_evaluation() -> Evaluation {
    let (scores, labels, cards, ts) = synthetic();
    let thresholds = Thresholds::new(0.5, 0.85).unwrap();
    evaluate(&scores, &labels, &cards, &ts, 20, &thresholds).unwrap()
}

#[test]
fn report_writes_valid_pngs_json_and_html() {
    let eval = synthetic_evaluation();
    assert_eq!(eval.card_precision_per_day.len(), 14);
    assert!(eval.auc_roc.unwrap() > 0.9);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/report");
    let files = write_report(&out, "vigil <test> report", &eval).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "roc.png",
            "pr.png",
            "scores.png",
            "card_precision.png",
            "metrics.json",
            "index.html"
        ]
    );
    for png in &files[..4] {
        let bytes = std::fs::read(png).unwrap();
        assert!(
            bytes.len() > 10_000,
            "{} is only {} bytes",
            png.display(),
            bytes.len()
        );
        assert_eq!(bytes[..8], PNG_MAGIC, "{} is not a PNG", png.display());
    }
    let json = std::fs::read_to_string(&files[4]).unwrap();
    // serde_json parses floats to within an ulp (exact round trips need its `float_roundtrip`
    // feature), so compare the structure exactly and the numbers closely.
    let back: Evaluation = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (back.rows, back.frauds, back.k),
        (eval.rows, eval.frauds, eval.k)
    );
    assert!((back.auc_roc.unwrap() - eval.auc_roc.unwrap()).abs() < 1e-12);
    assert_eq!(back.roc.len(), eval.roc.len());
    assert_eq!(back.pr.len(), eval.pr.len());
    assert_eq!(back.card_precision_per_day.len(), 14);
    assert_eq!(
        back.at_thresholds[1].confusion,
        eval.at_thresholds[1].confusion
    );
    assert_eq!(back.score_histogram.fraud, eval.score_histogram.fraud);
    let html = std::fs::read_to_string(&files[5]).unwrap();
    assert!(html.contains("vigil &lt;test&gt; report"));
    for img in ["roc.png", "pr.png", "scores.png", "card_precision.png"] {
        assert!(
            html.contains(&format!("src=\"{img}\"")),
            "index.html misses {img}"
        );
    }
}

#[test]
fn report_handles_degenerate_evaluations() {
    // Only legitimate rows: AUC / AP undefined, plots must still be produced.
    let thresholds = Thresholds::new(0.5, 0.85).unwrap();
    let eval = evaluate(
        &[0.1, 0.7],
        &[false, false],
        &["a", "b"],
        &[0, 1],
        10,
        &thresholds,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(dir.path(), "no frauds", &eval).unwrap();
    assert_eq!(files.len(), 6);
    let none: [&str; 0] = [];
    let empty = evaluate(&[], &[], &none, &[], 10, &thresholds).unwrap();
    let files = write_report(&dir.path().join("empty"), "empty", &empty).unwrap();
    for png in &files[..4] {
        assert_eq!(std::fs::read(png).unwrap()[..8], PNG_MAGIC);
    }
}

#[test]
fn unwritable_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let eval = synthetic_evaluation();
    let err = write_report(&blocker.join("report"), "x", &eval).unwrap_err();
    assert!(err.to_string().contains("file"), "{err}");
}
