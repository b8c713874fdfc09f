//! Trainer and scorer agree: a model trained by the offline trainer, written to a file and
//! loaded back, scores every transaction of a history, fed one at a time through `Scorer` (the
//! live path), exactly as the trainer's own forest scores the batch feature matrix of the same
//! history.

use std::path::Path;
use std::sync::Arc;

use linfa::ParamGuard;
use vigil::features::FeatureSpec;
use vigil::forest::train::{ClassWeight, RandomForestParams};
use vigil::generate::{generate, GeneratorConfig};
use vigil::model;
use vigil::offline::{self, Quiet, SplitSpec, TrainOptions};
use vigil::record::{read_history_from, ReadOptions, Transaction};
use vigil::scoring::Scorer;

use crate::support::default_spec;

fn history(rows: u64, seed: u64) -> Vec<Transaction> {
    let cfg = GeneratorConfig {
        rows,
        seed,
        cards: Some(300),
        ..GeneratorConfig::default()
    };
    let mut csv = Vec::new();
    generate(&cfg, &mut csv, &mut |_| {}).expect("generate into memory");
    let mut h = read_history_from(
        Path::new("generated.csv"),
        csv.as_slice(),
        ReadOptions::default(),
        &mut |_| {},
    )
    .expect("generated history reads back");
    h.sort_by_time();
    h.transactions
}

#[test]
fn live_scores_equal_trainer_predictions_after_a_file_round_trip() {
    let txs = history(12_000, 3);
    let spec = default_spec();
    let params = RandomForestParams::new()
        .n_trees(24)
        .max_depth(Some(10))
        .min_samples_leaf(3)
        .class_weight(ClassWeight::Balanced)
        .seed(9)
        .check()
        .expect("valid params");
    let opts = TrainOptions {
        model_id: "equivalence".into(),
        data_label: "generated".into(),
        split: SplitSpec::Fractions {
            warmup_ms: 3 * 86_400_000,
            train_frac: 0.7,
            gap_ms: 0,
        },
        params,
        k: 20,
        thresholds: None,
        partitions: 1,
    };
    let trained = offline::train(spec.clone(), &txs, &opts, &Quiet).expect("trains");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.vgm");
    model::save(&path, &trained.header, &trained.forest).expect("saves");
    let loaded = Arc::new(model::load(&path, Some(&spec)).expect("loads with the same spec"));
    assert_eq!(
        loaded.forest, trained.forest,
        "trees survive the file round trip"
    );

    // Batch path: the training matrix and the trainer's own forest.
    let x = offline::feature_matrix(&spec, &txs, 1, &Quiet);
    // Live path: one event at a time; each transaction's label is pushed right after it, as a
    // labels feed would deliver it, and the scorer holds it until its `known_at`.
    let mut scorer = Scorer::new(loaded.clone());
    let mut flagged = 0;
    for (i, tx) in txs.iter().enumerate() {
        let (verdict, _) = scorer.score(tx);
        if let Some(label) = tx.label_event(spec.label_latency_ms()) {
            scorer.push_label(label);
        }
        let row = x.row(i);
        let row = row
            .as_slice()
            .expect("rows of a standard-layout matrix are contiguous");
        assert_eq!(scorer.last_features(), row, "features of row {i} differ");
        assert_eq!(
            verdict.score,
            trained.forest.predict(row),
            "score of row {i} differs from the trainer's prediction"
        );
        assert_eq!(&*verdict.model_version, trained.header.version);
        assert!(verdict.reasons.len() <= vigil::scoring::DEFAULT_REASONS);
        assert!(verdict
            .reasons
            .windows(2)
            .all(|w| w[0].contribution >= w[1].contribution));
        flagged += (verdict.decision != vigil::decision::Decision::Approve) as usize;
    }
    assert!(flagged > 0, "some transactions are flagged");
}

#[test]
fn model_for_another_spec_is_refused() {
    let txs = history(6_000, 5);
    let spec = default_spec();
    let params = RandomForestParams::new()
        .n_trees(4)
        .max_depth(Some(4))
        .check()
        .expect("valid params");
    let opts = TrainOptions {
        model_id: "m".into(),
        data_label: "generated".into(),
        split: SplitSpec::Fractions {
            warmup_ms: 0,
            train_frac: 1.0,
            gap_ms: 0,
        },
        params,
        k: 10,
        thresholds: None,
        partitions: 1,
    };
    let trained = offline::train(spec.clone(), &txs, &opts, &Quiet).expect("trains");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.vgm");
    model::save(&path, &trained.header, &trained.forest).expect("saves");

    let other = FeatureSpec::from_toml_str(
        &spec
            .source()
            .replacen("[[window]]", "[[window]]\n# changed\n", 1)
            .replace("\"30d\"", "\"29d\""),
    )
    .expect("the edited spec is valid");
    assert_ne!(other.fingerprint(), spec.fingerprint());
    let err = model::load(&path, Some(&other)).expect_err("spec mismatch is refused");
    assert!(err.to_string().contains("feature spec"), "{err}");
    assert!(model::load(&path, Some(&spec)).is_ok());
}
