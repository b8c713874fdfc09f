//! Behaviour of the random-forest trainer through its public API: determinism, learning,
//! structural validity, agreement between the plain forest and the linfa model, parameter and
//! data validation, and accuracy against linfa-trees and smartcore on the same data.

use linfa::prelude::*;
use linfa::Dataset;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil::forest::train::{
    feature_importances, fit_forest, ClassWeight, MaxFeatures, ParamError, RandomForestParams,
    RandomForestValidParams, TrainError,
};
use vigil::forest::Forest;

/// A non-linear problem trees can learn but no single axis split solves: an XOR of two
/// features, OR a threshold on a third, with 4% label noise; features 3.. are pure noise.
fn synthetic(n: usize, n_features: usize, seed: u64) -> (Array2<f32>, Vec<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((n, n_features), |_| rng.gen_range(-1.0f32..1.0));
    let y = x
        .rows()
        .into_iter()
        .map(|r| {
            let clean = ((r[0] > 0.0) ^ (r[1] > 0.3)) || r[2] > 0.8;
            clean ^ rng.gen_bool(0.04)
        })
        .collect();
    (x, y)
}

fn params() -> RandomForestParams {
    RandomForestParams::new()
        .n_trees(25)
        .max_depth(Some(8))
        .seed(42)
}

fn fit(p: RandomForestParams, x: &Array2<f32>, y: &[bool]) -> Forest {
    let p = p.check().expect("valid params");
    fit_forest(&p, x.view(), y, &|_| {}).expect("training succeeds")
}

/// AUC ROC from the library's evaluation (checked against scikit-learn in `src/eval`).
fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    vigil::eval::auc_roc(scores, labels)
        .ok()
        .flatten()
        .unwrap_or(f64::NAN)
}

fn scores(forest: &Forest, x: &Array2<f32>) -> Vec<f32> {
    x.rows()
        .into_iter()
        .map(|r| forest.predict(r.as_slice().unwrap()))
        .collect()
}

fn accuracy(pred: impl IntoIterator<Item = bool>, truth: &[bool]) -> f64 {
    let hits = pred.into_iter().zip(truth).filter(|(p, t)| p == *t).count();
    hits as f64 / truth.len() as f64
}

#[test]
fn auc_helper_is_right() {
    assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]), 1.0);
    assert_eq!(auc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]), 0.0);
    assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
}

#[test]
fn same_seed_gives_identical_forest_and_other_seed_does_not() {
    let (x, y) = synthetic(2000, 6, 1);
    let a = fit(params(), &x, &y);
    let b = fit(params(), &x, &y);
    assert_eq!(a, b);
    let c = fit(params().seed(43), &x, &y);
    assert_ne!(a, c);
}

#[test]
fn forest_does_not_depend_on_thread_count() {
    let (x, y) = synthetic(2000, 6, 2);
    let p = params().check().unwrap();
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| fit_forest(&p, x.view(), &y, &|_| {}).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn learns_a_nonlinear_problem() {
    let (x, y) = synthetic(6000, 8, 3);
    let (x_test, y_test) = synthetic(3000, 8, 4);
    let forest = fit(params().n_trees(50).max_depth(Some(10)), &x, &y);
    let test_auc = auc(&scores(&forest, &x_test), &y_test);
    // The noise caps the reachable AUC a little below 1 (4% flipped labels).
    assert!(test_auc > 0.93, "test AUC {test_auc}");
}

#[test]
fn forest_is_valid_and_respects_limits() {
    let (x, y) = synthetic(3000, 6, 5);
    let forest = fit(params().max_depth(Some(5)).min_samples_leaf(20), &x, &y);
    forest.validate().unwrap();
    assert_eq!(forest.n_features, 6);
    assert_eq!(forest.trees.len(), 25);
    assert!(forest.max_depth() <= 5 && forest.max_depth() >= 3);
    for tree in &forest.trees {
        // Without class weights a node's weight is its number of bootstrap draws: the root
        // holds all n of them, each leaf at least min_samples_leaf, children sum to parents.
        assert_eq!(tree.nodes[0].weight, 3000.0);
        for n in &tree.nodes {
            if n.is_leaf() {
                assert!(n.weight >= 20.0, "leaf weight {}", n.weight);
            } else {
                let (l, r) = (&tree.nodes[n.left as usize], &tree.nodes[n.right as usize]);
                assert_eq!(l.weight + r.weight, n.weight);
                let mixed = l.value * l.weight + r.value * r.weight;
                assert!((mixed - n.value * n.weight).abs() < 1e-2);
            }
        }
    }
}

#[test]
fn linfa_model_predicts_exactly_the_forest_scores() {
    let (x, y) = synthetic(1500, 5, 6);
    let dataset = Dataset::new(x.clone(), Array1::from(y.clone()));
    let model = params().fit(&dataset).unwrap();
    let (x_test, _) = synthetic(500, 5, 7);
    let predicted: Array1<f32> = model.predict(&x_test);
    let reference = scores(model.forest(), &x_test);
    assert_eq!(predicted.to_vec(), reference);
    assert_eq!(model.predict_proba(&x_test).unwrap(), predicted);
    // A transposed (non-contiguous) view takes the copying path and must agree too.
    let xt = x_test.t().to_owned();
    assert_eq!(model.predict(&xt.t()), predicted);
    // Same as the plain entry point with the same parameters.
    assert_eq!(*model.forest(), fit(params(), &x, &y));
    assert!(matches!(
        model.predict_proba(&Array2::<f32>::zeros((2, 4))),
        Err(TrainError::FeatureCount {
            expected: 5,
            got: 4
        })
    ));
}

#[test]
fn training_rows_route_like_the_trainer_did() {
    // With one tree, all features as candidates and no depth limit on a noise-free problem
    // with fewer distinct values than bins, every in-bag training row must land in a pure leaf
    // of its class: the exported thresholds reproduce the trainer's bin comparisons.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let x = Array2::from_shape_fn((200, 2), |_| rng.gen_range(-1.0f32..1.0));
    let y: Vec<bool> = x.rows().into_iter().map(|r| r[0] * r[1] > 0.0).collect();
    let p = params()
        .n_trees(1)
        .max_depth(None)
        .max_features(MaxFeatures::All)
        .bootstrap_fraction(1.0);
    let forest = fit(p, &x, &y);
    let leaves = forest.trees[0].nodes.iter().filter(|n| n.is_leaf());
    assert!(leaves.clone().all(|n| n.value == 0.0 || n.value == 1.0));
    let s = scores(&forest, &x);
    // Out-of-bag rows may disagree; in-bag ones (about 63%, so ~126) must be exact.
    let exact = s
        .iter()
        .zip(&y)
        .filter(|(&s, &y)| s == if y { 1.0 } else { 0.0 })
        .count();
    assert!(exact >= 115, "only {exact} of 200 rows scored exactly");
}

#[test]
fn progress_reports_every_tree() {
    let (x, y) = synthetic(500, 4, 9);
    let seen = std::sync::Mutex::new(Vec::new());
    let p = params().n_trees(7).check().unwrap();
    fit_forest(&p, x.view(), &y, &|done| seen.lock().unwrap().push(done)).unwrap();
    let mut seen = seen.into_inner().unwrap();
    seen.sort_unstable();
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());
}

#[test]
fn importances_favour_informative_features() {
    let (x, y) = synthetic(4000, 8, 10);
    let imp = feature_importances(&fit(params(), &x, &y));
    assert_eq!(imp.len(), 8);
    assert!((imp.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    let signal = imp[0].min(imp[1]).min(imp[2]);
    let noise = imp[3..].iter().copied().fold(0.0, f32::max);
    assert!(signal > 2.0 * noise, "importances {imp:?}");
}

#[test]
fn positive_class_weight_raises_fraud_scores() {
    // Imbalanced: about 8% positives.
    let (x, y0) = synthetic(3000, 5, 11);
    let y: Vec<bool> = y0
        .iter()
        .zip(x.rows())
        .map(|(&l, r)| l && r[3] > 0.5)
        .collect();
    let plain = fit(params(), &x, &y);
    let weighted = fit(params().class_weight(ClassWeight::Positive(10.0)), &x, &y);
    let balanced = fit(params().class_weight(ClassWeight::Balanced), &x, &y);
    // Same seed, so each tree has the same bootstrap counts: the root's fraud share p becomes
    // 10p / (10p + 1 - p) under a positive weight of 10, and about 1/2 when balanced.
    for ((t_plain, t_weighted), t_balanced) in
        plain.trees.iter().zip(&weighted.trees).zip(&balanced.trees)
    {
        let p = t_plain.nodes[0].value;
        let expected = 10.0 * p / (10.0 * p + 1.0 - p);
        assert!((t_weighted.nodes[0].value - expected).abs() < 1e-5);
        assert!((t_balanced.nodes[0].value - 0.5).abs() < 0.05);
    }
    let mean = |f: &Forest| scores(f, &x).iter().sum::<f32>() / y.len() as f32;
    assert!(mean(&weighted) > mean(&plain));
    assert!(mean(&balanced) > mean(&plain));
    weighted.validate().unwrap();
}

#[test]
fn invalid_params_are_errors_with_values() {
    let cases = [
        (params().n_trees(0), ParamError::NoTrees(0)),
        (params().max_depth(Some(0)), ParamError::MaxDepth(0)),
        (params().min_samples_leaf(0), ParamError::MinSamplesLeaf(0)),
        (
            params().min_samples_split(1),
            ParamError::MinSamplesSplit(1),
        ),
        (
            params().max_features(MaxFeatures::Count(0)),
            ParamError::MaxFeaturesCount(0),
        ),
        (
            params().max_features(MaxFeatures::Fraction(1.5)),
            ParamError::MaxFeaturesFraction(1.5),
        ),
        (
            params().bootstrap_fraction(0.0),
            ParamError::BootstrapFraction(0.0),
        ),
        (
            params().class_weight(ClassWeight::Positive(-1.0)),
            ParamError::PositiveWeight(-1.0),
        ),
        (params().max_bins(256), ParamError::MaxBins(256)),
        (params().max_bins(1), ParamError::MaxBins(1)),
    ];
    for (p, expected) in cases {
        assert_eq!(p.check_ref().unwrap_err(), expected);
        assert_eq!(p.check().unwrap_err(), expected);
    }
    assert!(params().bootstrap_fraction(f32::NAN).check().is_err());
    assert!(params()
        .max_features(MaxFeatures::Fraction(f32::NAN))
        .check()
        .is_err());
    // Through linfa's Fit on the unchecked params, the error surfaces as TrainError::Params.
    let (x, y) = synthetic(50, 3, 12);
    let dataset = Dataset::new(x, Array1::from(y));
    let err = params().max_bins(0).fit(&dataset).unwrap_err();
    assert!(matches!(err, TrainError::Params(ParamError::MaxBins(0))));
    assert_eq!(err.to_string(), "max_bins must be in 2..=255, got 0");
}

#[test]
fn bad_data_is_an_error_naming_the_culprit() {
    let p = params().check().unwrap();
    let (mut x, y) = synthetic(100, 4, 13);
    x[[17, 2]] = f32::NEG_INFINITY;
    let err = fit_forest(&p, x.view(), &y, &|_| {}).unwrap_err();
    assert!(matches!(
        err,
        TrainError::NonFinite {
            row: 17,
            column: 2,
            ..
        }
    ));
    assert!(err.to_string().contains("row 17, column 2"), "{err}");

    let (x, y) = synthetic(100, 4, 13);
    assert!(matches!(
        fit_forest(&p, x.view(), &y[..99], &|_| {}),
        Err(TrainError::LabelCount {
            rows: 100,
            labels: 99
        })
    ));
    assert!(matches!(
        fit_forest(&p, x.slice(ndarray::s![..0, ..]), &[], &|_| {}),
        Err(TrainError::NoRows)
    ));
    let p5 = params()
        .max_features(MaxFeatures::Count(5))
        .check()
        .unwrap();
    assert!(matches!(
        fit_forest(&p5, x.view(), &y, &|_| {}),
        Err(TrainError::TooManyFeatures {
            requested: 5,
            n_features: 4
        })
    ));
}

#[test]
fn params_round_trip_through_toml_and_validate_on_load() {
    let p = params()
        .class_weight(ClassWeight::Positive(5.0))
        .max_features(MaxFeatures::Fraction(0.5))
        .check()
        .unwrap();
    let text = toml::to_string(&p).unwrap();
    let back: RandomForestValidParams = toml::from_str(&text).unwrap();
    assert_eq!(back, p);
    // Missing keys take the defaults; invalid values are rejected on load.
    let partial: RandomForestValidParams = toml::from_str("n_trees = 3").unwrap();
    assert_eq!(partial.n_trees(), 3);
    assert_eq!(partial.max_bins(), 255);
    let err = toml::from_str::<RandomForestValidParams>("max_bins = 300").unwrap_err();
    assert!(err.to_string().contains("max_bins"), "{err}");
    assert!(toml::from_str::<RandomForestValidParams>("n_tres = 3").is_err());
}

#[test]
fn single_class_data_gives_single_leaf_trees() {
    let (x, _) = synthetic(200, 3, 14);
    let forest = fit(params(), &x, &[false; 200]);
    forest.validate().unwrap();
    assert!(forest.trees.iter().all(|t| t.nodes.len() == 1));
    assert_eq!(forest.predict(&[0.0, 0.0, 0.0]), 0.0);
}

/// Accuracy at 0.5 on held-out data against linfa-trees' single CART tree and smartcore's
/// random forest, trained on the same rows: ours must not be worse by more than 1.5 points.
#[test]
fn accuracy_matches_linfa_trees_and_smartcore() {
    use smartcore::ensemble::random_forest_classifier::{
        RandomForestClassifier as ScForest, RandomForestClassifierParameters,
    };
    use smartcore::linalg::basic::matrix::DenseMatrix;

    let (x, y) = synthetic(4000, 8, 15);
    let (x_test, y_test) = synthetic(2000, 8, 16);
    let ours = fit(params().n_trees(30).max_depth(Some(10)), &x, &y);
    let ours_scores = scores(&ours, &x_test);
    let ours_acc = accuracy(ours_scores.iter().map(|&s| s > 0.5), &y_test);

    let dataset = Dataset::new(x.clone(), Array1::from(y.clone()));
    let tree = linfa_trees::DecisionTree::params()
        .max_depth(Some(10))
        .fit(&dataset)
        .unwrap();
    let linfa_acc = accuracy(tree.predict(&x_test).iter().copied(), &y_test);

    let to_dense = |m: &Array2<f32>| {
        let rows: Vec<Vec<f32>> = m.rows().into_iter().map(|r| r.to_vec()).collect();
        DenseMatrix::from_2d_vec(&rows).unwrap()
    };
    let y_u32: Vec<u32> = y.iter().map(|&b| u32::from(b)).collect();
    let sc = ScForest::fit(
        &to_dense(&x),
        &y_u32,
        RandomForestClassifierParameters::default()
            .with_n_trees(30)
            .with_max_depth(10)
            .with_m(3)
            .with_seed(42),
    )
    .unwrap();
    let sc_pred: Vec<u32> = sc.predict(&to_dense(&x_test)).unwrap();
    let sc_acc = accuracy(sc_pred.iter().map(|&p| p == 1), &y_test);

    let ours_auc = auc(&ours_scores, &y_test);
    eprintln!("accuracy: ours {ours_acc:.4} (AUC {ours_auc:.4}), linfa-trees tree {linfa_acc:.4}, smartcore forest {sc_acc:.4}");
    assert!(
        ours_acc >= linfa_acc - 0.015,
        "ours {ours_acc} vs linfa-trees {linfa_acc}"
    );
    assert!(
        ours_acc >= sc_acc - 0.015,
        "ours {ours_acc} vs smartcore {sc_acc}"
    );
}
