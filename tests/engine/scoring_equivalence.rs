//! The compiled scorer against the reference `Forest::predict` on random realistic forests:
//! scores must be bit-identical (same summation order), including rows sitting exactly on
//! thresholds, batch scoring must equal single-row scoring, and reason codes must add up and
//! equal the path re-walk they are precomputed from.

use ndarray::ArrayView2;
use proptest::prelude::*;
use vigil::forest::compiled::CompiledForest;
use vigil::forest::Forest;

use crate::support::scoring_gen as gen;

/// Random rows plus, for each node of the first trees, a row placing that node's feature exactly
/// on its threshold (and its neighbours one ulp away), so the `<=` edge is exercised everywhere.
fn probe_rows(forest: &Forest, seed: u64, n_random: usize) -> Vec<f32> {
    let nf = forest.n_features;
    let mut rows = gen::feature_rows(seed, n_random, nf);
    let base = gen::feature_rows(seed + 1, 1, nf);
    for tree in forest.trees.iter().take(3) {
        for node in tree.nodes.iter().filter(|n| !n.is_leaf()) {
            for t in [
                node.threshold,
                f32::from_bits(node.threshold.to_bits() + 1),
                f32::from_bits(node.threshold.to_bits().wrapping_sub(1)),
            ] {
                let mut row = base.clone();
                row[node.feature as usize] = t;
                rows.extend(row);
            }
        }
    }
    rows
}

fn check(forest: &Forest, seed: u64, n_random: usize) {
    let c = CompiledForest::compile(forest).expect("generated forests are valid");
    assert_eq!(c.n_trees(), forest.trees.len());
    // Where the CPU has AVX-512 the single-row walk is the vector one; the portable walk must give
    // the same bits (and is what the rest of this function checks elsewhere).
    let mut portable = c.clone();
    portable.set_vector_walk(false);
    let mut contrib_v = vec![0.0; forest.n_features];
    let mut contrib_p = vec![0.0; forest.n_features];
    for x in probe_rows(forest, seed ^ 0x5eed, n_random).chunks_exact(forest.n_features) {
        assert_eq!(c.score(x).to_bits(), portable.score(x).to_bits());
        let (sv, sp) = (
            c.explain(x, &mut contrib_v),
            portable.explain(x, &mut contrib_p),
        );
        assert_eq!(sv.to_bits(), sp.to_bits());
        assert_eq!(contrib_v, contrib_p);
    }
    let nf = forest.n_features;
    let rows = probe_rows(forest, seed, n_random);
    let n = rows.len() / nf;
    let mut contrib = vec![0.0; nf];
    let mut walked = vec![0.0; nf];
    for x in rows.chunks_exact(nf) {
        let want = forest.predict(x);
        let got = c.score(x);
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "score {got} != reference {want}"
        );
        let s = c.explain(x, &mut contrib);
        assert_eq!(s.to_bits(), want.to_bits());
        let total = c.base_rate() + contrib.iter().sum::<f32>();
        assert!(
            (total - s).abs() <= 1e-5,
            "base + contributions {total} != score {s}"
        );
        // The precomputed per-leaf tables against re-walking the paths.
        let s_walk = c
            .explain_by_walk(x, &mut walked)
            .expect("shapes match the model");
        assert_eq!(s_walk.to_bits(), s.to_bits());
        for (k, (a, b)) in contrib.iter().zip(&walked).enumerate() {
            assert!((a - b).abs() <= 1e-6, "feature {k}: table {a} vs walk {b}");
        }
    }
    let mut out = vec![0.0; n];
    let view = ArrayView2::from_shape((n, nf), &rows).expect("row-major shape");
    c.score_batch(view, &mut out);
    for (x, &got) in rows.chunks_exact(nf).zip(&out) {
        assert_eq!(got.to_bits(), forest.predict(x).to_bits());
    }
}

#[test]
fn generated_forests_are_valid_and_realistic() {
    let nf = 36;
    let rows = gen::feature_rows(1, 4096, nf);
    let f = gen::random_forest(2, &rows, nf, 10, 12, 6);
    f.validate().unwrap();
    assert_eq!(f.max_depth(), 12);
    let mean_nodes = f.n_nodes() / f.trees.len();
    eprintln!("{mean_nodes} nodes per tree");
    assert!(
        (1000..=2500).contains(&mean_nodes),
        "{mean_nodes} nodes per tree"
    );
}

#[test]
fn bench_sized_forest_matches_reference() {
    let nf = 36;
    let train = gen::feature_rows(10, 4096, nf);
    let forest = gen::random_forest(11, &train, nf, 100, 12, 6);
    check(&forest, 12, 300);
}

#[test]
fn mean_root_value_is_base_rate() {
    let nf = 5;
    let train = gen::feature_rows(20, 500, nf);
    let forest = gen::random_forest(21, &train, nf, 13, 6, 4);
    let c = CompiledForest::compile(&forest).unwrap();
    let mean = forest.trees.iter().map(|t| t.nodes[0].value).sum::<f32>() / 13.0;
    assert_eq!(c.base_rate(), mean);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Many forest shapes: any tree count (partial groups), shallow to deep, few to many features.
    #[test]
    fn random_forests_match_reference(
        seed in any::<u64>(),
        nf in 1usize..40,
        n_trees in 1usize..30,
        depth in 0usize..14,
        min_split in 2usize..20,
    ) {
        let train = gen::feature_rows(seed, 600, nf);
        let forest = gen::random_forest(seed ^ 1, &train, nf, n_trees, depth, min_split);
        check(&forest, seed ^ 2, 50);
    }
}
