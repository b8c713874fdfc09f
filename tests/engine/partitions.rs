//! Training with window state split per partition serves exactly the features the scorer
//! computes with that many partitions: the trainer's replay (`vigil train --partitions N`) and a
//! `ScoringCore` of N partitions, fed the same history and the same labels, give the same rows,
//! value for value. And the split matters: with one partition merchant windows differ.

use std::sync::Arc;

use vigil::offline;
use vigil::scoring::{ScoreOptions, ScoringCore};

use crate::support::{model, sample_history};

const PARTITIONS: u32 = 4;

#[test]
fn partitioned_training_replay_equals_the_partitioned_scoring_core() {
    let model = model();
    let txs = &sample_history()[..12_000];
    let spec = Arc::clone(&model.spec);
    let nf = spec.n_features();

    let replay = |partitions: u32| {
        let mut rows = vec![0.0f32; txs.len() * nf];
        offline::replay_history(&spec, txs, partitions, |i, row| {
            rows[i * nf..(i + 1) * nf].copy_from_slice(row);
        });
        rows
    };
    let trained = replay(PARTITIONS);

    // What `vigil serve` computes: one engine per partition, each card routed to its
    // partition, labels queued to every partition as they become known.
    let core = ScoringCore::new(Arc::clone(&model), PARTITIONS, 16);
    let latency = spec.label_latency_ms();
    let mut served = vec![0.0f32; txs.len() * nf];
    for (i, tx) in txs.iter().enumerate() {
        let scored = core
            .score_with(
                vigil::scoring::ScoringPath::Grpc,
                tx,
                ScoreOptions {
                    dry_run: false,
                    with_features: true,
                },
            )
            .expect("no partition is being rebuilt");
        let row = scored.features.expect("features asked for");
        served[i * nf..(i + 1) * nf].copy_from_slice(&row);
        if let Some(label) = tx.label_event(latency) {
            core.observe_label(&label);
        }
    }
    let names = spec.feature_names();
    for (i, (a, b)) in trained.chunks(nf).zip(served.chunks(nf)).enumerate() {
        for (f, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x.to_bits() == y.to_bits(),
                "row {i} ({}), feature {}: trained {x}, served {y}",
                txs[i].transaction_id,
                names[f]
            );
        }
    }

    // The split is not a no-op: a single engine sees every merchant transaction, so its
    // merchant windows differ from the partitioned ones on many rows, and card ones never.
    let whole = replay(1);
    let differing = |prefix: &str| {
        (0..txs.len())
            .filter(|&i| {
                names.iter().enumerate().any(|(f, n)| {
                    n.starts_with(prefix)
                        && whole[i * nf + f].to_bits() != trained[i * nf + f].to_bits()
                })
            })
            .count()
    };
    assert!(
        differing("merchant_") > txs.len() / 10,
        "merchant windows should depend on the split: {} rows differ",
        differing("merchant_")
    );
    assert_eq!(differing("card_"), 0, "card windows do not depend on it");
}
