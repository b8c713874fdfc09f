//! Training speed: vigil's histogram forest vs smartcore's random forest and linfa-trees' single
//! CART tree, on the same synthetic data (30 features, ~10% positives, 20 trees of depth 12).
//!
//! The competitors are much slower, so they run on a 10k-row slice; vigil runs on both 10k rows
//! (like for like) and 50k rows (the headline size). linfa-trees grows one tree, so it is
//! compared with a one-tree vigil forest (bootstrap included in ours).
//!
//! `cargo bench --bench training -- --warm-up-time 1 --measurement-time 3 --noplot`
//! (`--noplot`: criterion's plotters backend panics on machines without a system font.)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use linfa::prelude::*;
use linfa::Dataset;
use ndarray::{s, Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smartcore::ensemble::random_forest_classifier::{
    RandomForestClassifier as ScForest, RandomForestClassifierParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;
use vigil::forest::train::{fit_forest, RandomForestParams, RandomForestValidParams};

const N_FEATURES: usize = 30;
const TREES: usize = 20;
const DEPTH: usize = 12;

fn synthetic(n: usize) -> (Array2<f32>, Vec<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = Array2::from_shape_fn((n, N_FEATURES), |_| rng.gen_range(-1.0f32..1.0));
    let y = x
        .rows()
        .into_iter()
        .map(|r| {
            let z = 1.5 * r[0] - r[1] * r[2] + (r[3] * 3.0).sin() + 0.8 * r[4].abs();
            z + rng.gen_range(-0.5f32..0.5) > 1.4
        })
        .collect();
    (x, y)
}

fn params(trees: usize) -> RandomForestValidParams {
    RandomForestParams::new()
        .n_trees(trees)
        .max_depth(Some(DEPTH))
        .seed(1)
        .check()
        .expect("valid benchmark parameters")
}

fn bench_training(c: &mut Criterion) {
    let (x, y) = synthetic(50_000);
    let small = 10_000;
    let x_small = x.slice(s![..small, ..]).to_owned();
    let y_small = &y[..small];

    let mut group = c.benchmark_group("train");
    group.sample_size(10);

    for (rows, xm, ym) in [(50_000, x.view(), &y[..]), (small, x_small.view(), y_small)] {
        let p = params(TREES);
        group.bench_function(BenchmarkId::new("vigil_forest_20x12", rows), |b| {
            b.iter(|| fit_forest(&p, xm, ym, &|_| {}).expect("fit"))
        });
    }

    let p1 = params(1);
    group.bench_function(BenchmarkId::new("vigil_1tree_d12", small), |b| {
        b.iter(|| fit_forest(&p1, x_small.view(), y_small, &|_| {}).expect("fit"))
    });

    let dataset = Dataset::new(x_small.clone(), Array1::from(y_small.to_vec()));
    group.bench_function(BenchmarkId::new("linfa_trees_1tree_d12", small), |b| {
        b.iter(|| {
            linfa_trees::DecisionTree::params()
                .max_depth(Some(DEPTH))
                .fit(&dataset)
                .expect("fit")
        })
    });

    let rows: Vec<Vec<f32>> = x_small.rows().into_iter().map(|r| r.to_vec()).collect();
    let dense = DenseMatrix::from_2d_vec(&rows).expect("rectangular matrix");
    let y_u32: Vec<u32> = y_small.iter().map(|&b| u32::from(b)).collect();
    group.bench_function(BenchmarkId::new("smartcore_forest_20x12", small), |b| {
        b.iter(|| {
            ScForest::fit(
                &dense,
                &y_u32,
                RandomForestClassifierParameters::default()
                    .with_n_trees(TREES as u16)
                    .with_max_depth(DEPTH as u16)
                    .with_m(5)
                    .with_seed(1),
            )
            .expect("fit")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_training);
criterion_main!(benches);
