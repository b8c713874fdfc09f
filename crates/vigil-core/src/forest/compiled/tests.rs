//! Compiled forests against the reference walk, reason tables against the path re-walk.

use super::reasons::top_reasons;
use super::*;
use crate::forest::tree::{Forest, ForestError, Node, Tree};

fn split(feature: u32, threshold: f32, left: u32, right: u32, value: f32) -> Node {
    Node {
        feature,
        threshold,
        left,
        right,
        value,
        weight: 1.0,
    }
}

/// x0 <= 1 ? (x1 <= 5 ? 0.1 : 0.7) : 0.9, root 0.5, inner 0.3.
fn two_level() -> Tree {
    Tree {
        nodes: vec![
            split(0, 1.0, 1, 2, 0.5),
            split(1, 5.0, 3, 4, 0.3),
            Node::leaf(0.9, 1.0),
            Node::leaf(0.1, 1.0),
            Node::leaf(0.7, 1.0),
        ],
    }
}

fn stump(feature: u32, threshold: f32, l: f32, r: f32) -> Tree {
    Tree {
        nodes: vec![
            split(feature, threshold, 1, 2, (l + r) / 2.0),
            Node::leaf(l, 1.0),
            Node::leaf(r, 1.0),
        ],
    }
}

fn forest(trees: Vec<Tree>) -> Forest {
    Forest {
        n_features: 2,
        trees,
    }
}

#[test]
fn matches_reference_on_thresholds_nan_and_infinities() {
    let f = forest(vec![
        two_level(),
        stump(1, 5.0, 0.2, 0.4),
        Tree {
            nodes: vec![Node::leaf(0.25, 1.0)],
        },
        stump(0, f32::INFINITY, 0.6, 0.0),
    ]);
    let c = CompiledForest::compile(&f).unwrap();
    assert_eq!((c.n_trees(), c.n_features()), (4, 2));
    let probes = [
        f32::NEG_INFINITY,
        -1.0,
        1.0,
        1.0 + f32::EPSILON,
        5.0,
        5.000001,
        f32::INFINITY,
        f32::NAN,
    ];
    for &a in &probes {
        for &b in &probes {
            let x = [a, b];
            let want = f.predict(&x);
            let got = c.score(&x);
            assert_eq!(got.to_bits(), want.to_bits(), "x = {x:?}");
        }
    }
    // Spot check the semantics themselves: equal goes left, NaN goes right.
    assert_eq!(c.score(&[1.0, 5.0]), (0.1 + 0.2 + 0.25 + 0.6) / 4.0);
    assert_eq!(
        c.score(&[f32::NAN, f32::NAN]),
        (0.9 + 0.4 + 0.25 + 0.0) / 4.0
    );
}

#[test]
fn partial_and_multiple_groups_match_reference() {
    // Tree counts covering 4-, 8- and 16-lane final groups, and cross-group summation order.
    for n_trees in [1, 3, 4, 5, 8, 9, 15, 16, 17, 21, 2 * GROUP + 3] {
        let trees: Vec<Tree> = (0..n_trees)
            .map(|k| {
                let t = k as f32 * 0.37 - 2.0;
                if k % 3 == 0 {
                    two_level()
                } else {
                    stump((k % 2) as u32, t, (k as f32 * 0.05) % 1.0, 0.33)
                }
            })
            .collect();
        let f = forest(trees);
        let c = CompiledForest::compile(&f).unwrap();
        for i in -30..30 {
            for j in -3..8 {
                let x = [i as f32 * 0.13, j as f32];
                let (got, want) = (c.score(&x), f.predict(&x));
                assert_eq!(got.to_bits(), want.to_bits(), "{n_trees} trees, x = {x:?}");
            }
        }
    }
}

#[test]
fn leaf_only_forest_with_no_features() {
    let f = Forest {
        n_features: 0,
        trees: vec![Tree {
            nodes: vec![Node::leaf(0.125, 3.0)],
        }],
    };
    let c = CompiledForest::compile(&f).unwrap();
    assert_eq!(c.score(&[]), 0.125);
    assert_eq!(c.base_rate(), 0.125);
    let mut out = [1.0; 3];
    c.score_batch(ndarray::Array2::<f32>::zeros((3, 0)).view(), &mut out);
    assert_eq!(out, [0.125; 3]);
    let e = c.reasons(&[], 3);
    assert_eq!(e.score, 0.125);
    assert!(e.reasons.is_empty());
}

#[test]
fn wrong_lengths_are_errors_not_panics() {
    let c = CompiledForest::compile(&forest(vec![two_level()])).unwrap();
    assert_eq!(
        c.try_score(&[1.0]),
        Err(ScoreError::RowLength {
            expected: 2,
            got: 1
        })
    );
    assert!(c.try_score(&[1.0, 2.0, 3.0]).is_err());
    let mut contrib = [0.0; 3];
    assert_eq!(
        c.try_explain(&[1.0, 2.0], &mut contrib),
        Err(ScoreError::ContribLength {
            expected: 2,
            got: 3
        })
    );
    let rows = ndarray::Array2::<f32>::zeros((4, 2));
    let mut out = [0.0; 3];
    assert_eq!(
        c.try_score_batch(rows.view(), &mut out),
        Err(ScoreError::OutputLength { rows: 4, got: 3 })
    );
    let rows = ndarray::Array2::<f32>::zeros((3, 1));
    assert!(c.try_score_batch(rows.view(), &mut out).is_err());
    assert!(c.try_reasons(&[], 1).is_err());
}

#[test]
fn compile_rejects_invalid_and_oversized_forests() {
    let mut bad = forest(vec![two_level()]);
    bad.trees[0].nodes[1].right = 1;
    assert!(matches!(
        CompiledForest::compile(&bad),
        Err(ForestError::BadChild { .. })
    ));
    assert_eq!(
        CompiledForest::compile(&forest(vec![])).err(),
        Some(ForestError::Empty)
    );
    let huge = Forest {
        n_features: 70_000,
        trees: vec![two_level()],
    };
    assert!(matches!(
        CompiledForest::compile(&huge),
        Err(ForestError::TooLarge { value: 70_000, .. })
    ));
}

/// A "caterpillar" tree: internal node k splits on feature k % n_features at threshold k
/// and its left child is a leaf; `n_internal` internal nodes, depth `n_internal`.
fn caterpillar(n_internal: usize, n_features: usize) -> Tree {
    let mut nodes = Vec::with_capacity(2 * n_internal + 1);
    for k in 0..n_internal {
        let at = nodes.len() as u32;
        nodes.push(split(
            (k % n_features) as u32,
            k as f32,
            at + 1,
            at + 2,
            0.5,
        ));
        nodes.push(Node::leaf((k % 7) as f32 / 7.0, 1.0));
    }
    nodes.push(Node::leaf(1.0, 1.0));
    Tree { nodes }
}

#[test]
fn group_size_limit_depends_on_feature_bits() {
    // 65539 nodes: too many for 16 child bits (65536 features), fine with 10 (1000 features).
    let tree = caterpillar(32_769, 1000);
    let wide = Forest {
        n_features: 65_536,
        trees: vec![tree.clone()],
    };
    assert!(matches!(
        CompiledForest::compile(&wide),
        Err(ForestError::TooLarge { max: 65_536, .. })
    ));
    let f = Forest {
        n_features: 1000,
        trees: vec![tree.clone(), tree],
    };
    let c = CompiledForest::compile(&f).unwrap();
    for row in [0.0f32, 999.5, 31_999.0, 40_000.0] {
        let x: Vec<f32> = (0..1000).map(|k| row + k as f32).collect();
        assert_eq!(c.score(&x).to_bits(), f.predict(&x).to_bits());
    }
}

#[test]
fn explain_attributes_path_changes_to_split_features() {
    let c = CompiledForest::compile(&forest(vec![two_level()])).unwrap();
    let mut contrib = [0.0; 2];
    // Path: root(0.5) -x0-> inner(0.3) -x1-> leaf 0.7.
    let s = c.explain(&[0.0, 6.0], &mut contrib);
    assert_eq!(s, 0.7);
    assert!((contrib[0] - (0.3 - 0.5)).abs() < 1e-7);
    assert!((contrib[1] - (0.7 - 0.3)).abs() < 1e-7);
    assert_eq!(c.base_rate(), 0.5);
    // Path: root -x0-> leaf 0.9; x1 is never consulted.
    let s = c.explain(&[2.0, 6.0], &mut contrib);
    assert_eq!(s, 0.9);
    assert!((contrib[0] - 0.4).abs() < 1e-7);
    assert_eq!(contrib[1], 0.0);
}

#[test]
fn explain_averages_over_trees_and_adds_up() {
    let f = forest(vec![
        two_level(),
        stump(1, 5.0, 0.2, 0.4),
        stump(0, 0.0, 1.0, 0.0),
    ]);
    let c = CompiledForest::compile(&f).unwrap();
    let mut contrib = [0.0; 2];
    for x in [[0.0, 6.0], [-1.0, 0.0], [3.0, 5.0], [f32::NAN, 1.0]] {
        let s = c.explain(&x, &mut contrib);
        assert_eq!(s.to_bits(), c.score(&x).to_bits());
        let total = c.base_rate() + contrib.iter().sum::<f32>();
        assert!((total - s).abs() < 1e-6, "x = {x:?}: {total} vs {s}");
    }
    // Hand-computed for x = [-1, 0]: tree 0 (x0 left, x1 left): x0 -0.2, x1 -0.2;
    // tree 1 (x1 left): x1 -0.1; tree 2 (x0 left): x0 +0.5.
    c.explain(&[-1.0, 0.0], &mut contrib);
    assert!((contrib[0] - 0.3 / 3.0).abs() < 1e-6);
    assert!((contrib[1] + 0.3 / 3.0).abs() < 1e-6);
}

/// `explain` (tables) against `explain_by_walk` (path re-walk) on every probe row.
fn assert_tables_match_walk(c: &CompiledForest, rows: &[Vec<f32>]) {
    let nf = c.n_features();
    let (mut fast, mut slow) = (vec![0.0; nf], vec![0.0; nf]);
    for x in rows {
        let s = c.explain(x, &mut fast);
        let s_walk = c.explain_by_walk(x, &mut slow).unwrap();
        assert_eq!(s.to_bits(), s_walk.to_bits());
        assert_eq!(s.to_bits(), c.score(x).to_bits());
        for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
            assert!((a - b).abs() <= 1e-6, "feature {k}: {a} vs {b}, x = {x:?}");
        }
    }
}

#[test]
fn leaf_tables_equal_path_walk() {
    let f = forest(vec![
        two_level(),
        stump(1, 5.0, 0.2, 0.4),
        stump(0, 0.0, 1.0, 0.0),
        // Feature 0 twice on one path: its deltas must be merged into one entry.
        Tree {
            nodes: vec![
                split(0, 1.0, 1, 2, 0.5),
                split(0, -1.0, 3, 4, 0.2),
                Node::leaf(0.9, 1.0),
                Node::leaf(0.05, 1.0),
                Node::leaf(0.3, 1.0),
            ],
        },
    ]);
    let c = CompiledForest::compile(&f).unwrap();
    assert!(c.reason_table_bytes() > 0);
    let rows: Vec<Vec<f32>> = [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, f32::NAN]
        .iter()
        .flat_map(|&a| [0.0, 5.0, 6.0].map(|b| vec![a, b]))
        .collect();
    assert_tables_match_walk(&c, &rows);
    // The merged entry for tree 3 at x0 = 0: 0.5 -> 0.2 -> 0.3, i.e. -0.2 on feature 0.
    let mut contrib = [0.0; 2];
    let single = CompiledForest::compile(&forest(vec![f.trees[3].clone()])).unwrap();
    single.explain(&[0.0, 0.0], &mut contrib);
    assert!((contrib[0] + 0.2).abs() < 1e-7, "{contrib:?}");
    assert_eq!(contrib[1], 0.0);
}

#[test]
fn top_reasons_selects_like_a_full_sort() {
    let mut rng_state = 12345u64;
    let mut next = || {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Few distinct values, so ties are common; some zero and negative.
        ((rng_state >> 33) % 9) as f32 / 4.0 - 0.5
    };
    for n in [0usize, 1, 3, 7, 43, 130] {
        for top in [0usize, 1, 3, 5, 200] {
            let contrib: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut want: Vec<Reason> = contrib
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0.0)
                .map(|(feature, &contribution)| Reason {
                    feature,
                    contribution,
                })
                .collect();
            want.sort_by(|a, b| {
                b.contribution
                    .total_cmp(&a.contribution)
                    .then(a.feature.cmp(&b.feature))
            });
            want.truncate(top);
            assert_eq!(top_reasons(&contrib, top), want, "n {n} top {top}");
        }
    }
}

/// Forests with more than [`DENSE_MAX`] features keep sparse per-leaf lists; they must agree
/// with the path walk too (and with the dense rows of the same trees).
#[test]
fn sparse_lists_for_wide_forests_equal_path_walk_and_dense_rows() {
    let deep = |shift: u32| {
        let mut t = caterpillar(60, 150);
        for (k, n) in t.nodes.iter_mut().enumerate() {
            if !n.is_leaf() {
                n.feature = (n.feature + shift) % 150;
                n.value = (k % 9) as f32 / 9.0;
            }
        }
        t
    };
    let trees: Vec<Tree> = (0..20).map(|k| deep(7 * k)).collect();
    let wide = Forest {
        n_features: 150,
        trees: trees.clone(),
    };
    let c = CompiledForest::compile(&wide).unwrap();
    assert_eq!(c.dense_width, 0);
    assert!(c
        .groups
        .iter()
        .all(|g| matches!(g.reasons, ReasonTable::Lists(_))));
    let rows: Vec<Vec<f32>> = (0..12)
        .map(|r| (0..150).map(|k| ((r * 31 + k * 7) % 70) as f32).collect())
        .collect();
    assert_tables_match_walk(&c, &rows);
    // The same trees on 120 features (every split feature is < 150, so remap into range):
    // dense rows, same contributions.
    let narrow_trees: Vec<Tree> = trees
        .iter()
        .map(|t| {
            let mut t = t.clone();
            for n in t.nodes.iter_mut().filter(|n| !n.is_leaf()) {
                n.feature %= 120;
            }
            t
        })
        .collect();
    let narrow = CompiledForest::compile(&Forest {
        n_features: 120,
        trees: narrow_trees,
    })
    .unwrap();
    assert_eq!(narrow.dense_width, 128);
    let rows120: Vec<Vec<f32>> = rows.iter().map(|r| r[..120].to_vec()).collect();
    assert_tables_match_walk(&narrow, &rows120);
}

#[test]
fn oversized_group_falls_back_to_walking_its_paths() {
    // Caterpillar with internal values varying along the path: leaf k has min(k, 40)
    // nonzero entries, ~22k in all against a budget of 16 x ~1.2k nodes.
    let mut deep = caterpillar(600, 40);
    for (k, n) in deep.nodes.iter_mut().filter(|n| !n.is_leaf()).enumerate() {
        n.value = (k % 5) as f32 / 5.0;
    }
    let mut trees = vec![two_level(); GROUP];
    trees.push(deep.clone());
    let f = Forest {
        n_features: 40,
        trees,
    };
    let c = CompiledForest::compile(&f).unwrap();
    // The first group has a table (dense rows: 40 features), the second (caterpillar) group
    // has none.
    assert!(matches!(c.groups[0].reasons, ReasonTable::DenseRows));
    assert!(matches!(c.groups[1].reasons, ReasonTable::Rewalk));
    let only_deep = Forest {
        n_features: 40,
        trees: vec![deep],
    };
    assert_eq!(
        CompiledForest::compile(&only_deep)
            .unwrap()
            .reason_table_bytes(),
        0
    );
    let rows: Vec<Vec<f32>> = [-1.0, 0.5, 37.5, 250.0, 599.5, 1000.0]
        .iter()
        .map(|&v| (0..40).map(|k| v + k as f32 * 0.25).collect())
        .collect();
    assert_tables_match_walk(&c, &rows);
    let mut contrib = vec![0.0; 40];
    for x in &rows {
        let s = c.explain(x, &mut contrib);
        let total = c.base_rate() + contrib.iter().sum::<f32>();
        assert!((total - s).abs() < 1e-5, "{total} vs {s}");
    }
}

#[test]
fn reasons_keep_top_positive_contributions_in_order() {
    // Three features; stumps pushing up on x0 (a lot), x2 (a little), down on x1.
    let f = Forest {
        n_features: 3,
        trees: vec![
            stump(0, 0.0, 0.0, 1.0),
            stump(2, 0.0, 0.4, 0.6),
            stump(1, 0.0, 0.2, 0.8),
        ],
    };
    let c = CompiledForest::compile(&f).unwrap();
    let x = [1.0, -1.0, 1.0];
    let e = c.reasons(&x, 5);
    assert_eq!(e.score, c.score(&x));
    assert_eq!(e.base_rate, 0.5);
    let features: Vec<usize> = e.reasons.iter().map(|r| r.feature).collect();
    assert_eq!(features, vec![0, 2]);
    assert!((e.reasons[0].contribution - 0.5 / 3.0).abs() < 1e-6);
    assert!((e.reasons[1].contribution - 0.1 / 3.0).abs() < 1e-6);
    assert_eq!(c.reasons(&x, 1).reasons.len(), 1);
    assert!(c.reasons(&x, 0).reasons.is_empty());
}

#[test]
fn batch_equals_single_row_for_strided_views() {
    let f = forest(vec![two_level(), stump(1, 5.0, 0.2, 0.4)]);
    let c = CompiledForest::compile(&f).unwrap();
    let rows = ndarray::Array2::from_shape_fn((600, 2), |(r, k)| {
        ((r * 7 + k * 3) % 13) as f32 * 0.5 - 1.0
    });
    let mut out = vec![0.0; 600];
    c.score_batch(rows.view(), &mut out);
    let mut out_t = vec![0.0; 600];
    let transposed = rows.t().to_owned();
    c.score_batch(transposed.t(), &mut out_t);
    for (r, row) in rows.outer_iter().enumerate() {
        let want = f.predict(row.as_slice().unwrap());
        assert_eq!(out[r].to_bits(), want.to_bits(), "row {r}");
        assert_eq!(out_t[r].to_bits(), want.to_bits(), "row {r} (strided)");
    }
}

/// The module documentation says which reason-code strategy a model like the shipped one gets:
/// dense rows for every group. This pins it on the shipped model itself.
#[test]
fn shipped_model_uses_dense_rows() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default.vgm");
    let model = crate::model::store::load(&path, None).expect("models/default.vgm loads");
    let c = &model.compiled;
    assert!(c.n_features() <= DENSE_MAX);
    assert_eq!(c.dense_width, c.n_features().div_ceil(16) * 16);
    assert!(c
        .groups
        .iter()
        .all(|g| matches!(g.reasons, ReasonTable::DenseRows)));
    assert_eq!(c.rows.len() % c.dense_width, 0);
}
