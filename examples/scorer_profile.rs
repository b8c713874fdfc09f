//! The whole in-process scoring path of `benches/scorer.rs` (shipped model, sample history) as a
//! plain program for profilers, split into its parts: the feature engine alone, the forest's
//! score alone, the forest's score with reason codes, and `Scorer::score` (all of it plus the
//! verdict). Prints the mean time of each part.
//!
//! Timings on the shared build VMs move with other jobs; instruction counts do not:
//!
//! ```sh
//! cargo build --release --example scorer_profile
//! valgrind --tool=callgrind --toggle-collect='*::part_*' target/release/examples/scorer_profile
//! callgrind_annotate --inclusive=yes callgrind.out.* | grep part_
//! ```
//!
//! and divide each part's inclusive count by the number of transactions printed.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vigil::features::FeatureEngine;
use vigil::model::{self, Model};
use vigil::record::{read_history, ReadOptions, Transaction};
use vigil::scorer::Scorer;

const N: usize = 50_000;
/// Passes over the rows for the forest parts (the fastest is reported).
const REPEAT: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut model = model::load(&root.join("models/default.vgm"), None)?;
    // `--scalar`: the portable walk even where the AVX-512 one is available (for comparison).
    let scalar = std::env::args().any(|a| a == "--scalar");
    let vector = model.compiled.set_vector_walk(!scalar);
    let model = Arc::new(model);
    let mut history = read_history(&root.join("data/sample.csv"), ReadOptions::default())?;
    history.sort_by_time();
    let txs = history.transactions;
    let cut = txs.len() * 8 / 10;
    let span = txs[txs.len() - 1].timestamp_ms - txs[0].timestamp_ms + 1;
    let tail = &txs[cut..];
    let stream: Vec<Transaction> = (0..N)
        .map(|k| {
            let pass = (k / tail.len()) as i64 + 1;
            let mut t = tail[k % tail.len()].clone();
            t.timestamp_ms += pass * span;
            t.transaction_id = format!("{}-{pass}", t.transaction_id);
            t
        })
        .collect();

    // Features alone, and the rows they give (inputs of the forest parts).
    let mut engine = FeatureEngine::new(Arc::clone(&model.spec));
    let nf = model.spec.n_features();
    let mut row = vec![0.0f32; nf];
    for t in &txs[..cut] {
        engine.process(t, &mut row);
    }
    let mut rows = vec![0.0f32; N * nf];
    let t0 = Instant::now();
    part_features(&mut engine, &stream, &mut rows);
    let features_ns = t0.elapsed().as_nanos() as f64 / N as f64;

    // The forest parts are repeated and the fastest pass kept: on a shared machine the minimum
    // is the figure least disturbed by other jobs.
    let best = |f: &mut dyn FnMut() -> f32| {
        (0..REPEAT)
            .map(|_| {
                let t0 = Instant::now();
                black_box(f());
                t0.elapsed().as_nanos() as f64 / N as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let s = part_score(&model, &rows);
    let score_ns = best(&mut || part_score(&model, &rows));
    let e = part_explain(&model, &rows);
    let explain_ns = best(&mut || part_explain(&model, &rows));
    let raw_ns = best(&mut || part_explain_raw(&model, &rows));
    let hot_ns = best(&mut || part_explain_raw(&model, &rows[..nf].repeat(N)));

    let mut scorer = Scorer::new(Arc::clone(&model));
    for t in &txs[..cut] {
        scorer.score(t);
    }
    let t0 = Instant::now();
    part_scorer(&mut scorer, &stream);
    let scorer_ns = t0.elapsed().as_nanos() as f64 / N as f64;

    println!(
        "{N} transactions, model {} ({} trees, {} nodes, {} walk): features {features_ns:.0} ns, \
         forest score {score_ns:.0} ns, explain {raw_ns:.0} ns (same row: {hot_ns:.0} ns), \
         score + top reasons {explain_ns:.0} ns, \
         Scorer::score (all + verdict) {scorer_ns:.0} ns  [checksums {s:.3} {e:.3}]",
        model.name(),
        model.header.n_trees,
        model.header.n_nodes,
        if vector { "AVX-512" } else { "scalar" },
    );
    Ok(())
}

#[inline(never)]
fn part_features(engine: &mut FeatureEngine, stream: &[Transaction], rows: &mut [f32]) {
    let nf = engine.spec().n_features();
    for (t, row) in stream.iter().zip(rows.chunks_mut(nf)) {
        engine.process(t, row);
    }
}

#[inline(never)]
fn part_score(model: &Model, rows: &[f32]) -> f32 {
    let nf = model.compiled.n_features();
    rows.chunks(nf)
        .map(|r| model.compiled.score(black_box(r)))
        .sum()
}

#[inline(never)]
fn part_explain(model: &Model, rows: &[f32]) -> f32 {
    let nf = model.compiled.n_features();
    rows.chunks(nf)
        .map(|r| {
            let e = model.compiled.reasons(black_box(r), 3);
            e.score + e.reasons.first().map_or(0.0, |r| r.contribution)
        })
        .sum()
}

#[inline(never)]
fn part_explain_raw(model: &Model, rows: &[f32]) -> f32 {
    let nf = model.compiled.n_features();
    let mut contrib = vec![0.0f32; nf];
    rows.chunks(nf)
        .map(|r| model.compiled.explain(black_box(r), &mut contrib) + contrib[0])
        .sum()
}

#[inline(never)]
fn part_scorer(scorer: &mut Scorer, stream: &[Transaction]) {
    for t in stream {
        black_box(scorer.score(black_box(t)));
    }
}
