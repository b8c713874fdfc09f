//! End-to-end in-process scoring: one transaction through the feature engine (window update and
//! feature row), the compiled forest and the decision, as `Scorer::score` does for every live
//! transaction.
//!
//! Setup: the shipped `models/default.vgm` (100 trees, depth 12) and `data/sample.csv`. The scorer
//! is warmed with the first 80% of the sample; the measured stream is the last 20%, repeated with
//! timestamps shifted forward by the sample's span on every pass (so every event is in order and
//! windows stay realistic).
//!
//! Besides criterion's mean, it prints p50 / p99 of single calls (each timed on its own with
//! `Instant`, whose own cost, about 20-30 ns, is included).
//!
//! `cargo bench --bench scorer`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vigil::features::FeatureEngine;
use vigil::model;
use vigil::record::{read_history, ReadOptions, Transaction};
use vigil::scoring::Scorer;

/// The allocator the `vigil` binary runs with, so allocation costs are the product's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The warmed scorer and an endless, in-order stream of transactions.
struct Setup {
    scorer: Scorer,
    /// The warm-up transactions (the first 80 % of the sample).
    warm: Vec<Transaction>,
    tail: Vec<Transaction>,
    span: i64,
    next: usize,
}

impl Setup {
    fn new() -> Setup {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let model = Arc::new(
            model::load(&root.join("models/default.vgm"), None).expect("models/default.vgm loads"),
        );
        let mut history = read_history(&root.join("data/sample.csv"), ReadOptions::default())
            .expect("sample reads");
        history.sort_by_time();
        let txs = history.transactions;
        let cut = txs.len() * 8 / 10;
        let mut scorer = Scorer::new(model);
        for t in &txs[..cut] {
            scorer.score(t);
        }
        let span = txs[txs.len() - 1].timestamp_ms - txs[0].timestamp_ms + 1;
        Setup {
            scorer,
            warm: txs[..cut].to_vec(),
            tail: txs[cut..].to_vec(),
            span,
            next: 0,
        }
    }

    /// The next `n` events of the stream: the tail, repeated, shifted by one span per pass.
    fn take(&mut self, n: usize) -> Vec<Transaction> {
        (0..n)
            .map(|_| {
                let k = self.next;
                self.next += 1;
                let pass = (k / self.tail.len()) as i64 + 1;
                let mut t = self.tail[k % self.tail.len()].clone();
                t.timestamp_ms += pass * self.span;
                t.transaction_id = format!("{}-{pass}", t.transaction_id);
                t
            })
            .collect()
    }
}

fn percentiles(_: &mut Criterion) {
    let mut s = Setup::new();
    let stream = s.take(200_000);
    let mut lat = Vec::with_capacity(stream.len());
    for t in &stream {
        let start = Instant::now();
        black_box(s.scorer.score(black_box(t)));
        lat.push(start.elapsed().as_nanos() as u64);
    }
    print_percentiles(
        "Scorer::score (features, forest, reasons, verdict)",
        &mut lat,
    );
}

fn print_percentiles(what: &str, lat: &mut [u64]) {
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "{what}: single-call latency over {} calls: p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999)
    );
}

/// The benchmark read literally, "features plus 100 trees": the window update and feature
/// row (`FeatureEngine::process`) and the forest's score (`CompiledForest::score`), without
/// reason codes or a verdict. Same model, warm-up and stream as above; the figure to set next to
/// the reference numbers (a Rust prototype 1.38 us, ONNX Runtime 6.8 us), which are plain
/// inference too.
fn features_and_score(c: &mut Criterion) {
    let mut s = Setup::new();
    let model = Arc::clone(s.scorer.model());
    let mut engine = FeatureEngine::new(Arc::clone(&model.spec));
    let mut row = vec![0.0f32; model.spec.n_features()];
    for t in &s.warm {
        engine.process(t, &mut row);
    }
    let stream = s.take(200_000);
    let mut lat = Vec::with_capacity(stream.len());
    for t in &stream {
        let start = Instant::now();
        engine.process(black_box(t), &mut row);
        black_box(model.compiled.score(&row));
        lat.push(start.elapsed().as_nanos() as u64);
    }
    print_percentiles("features + forest score (no reasons, no verdict)", &mut lat);
    let mut g = c.benchmark_group("scorer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("features_and_score", |b| {
        b.iter_custom(|iters| {
            let stream = s.take(iters as usize);
            let start = Instant::now();
            for t in &stream {
                engine.process(black_box(t), &mut row);
                black_box(model.compiled.score(&row));
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let mut s = Setup::new();
    let mut g = c.benchmark_group("scorer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("score_with_reasons", |b| {
        b.iter_custom(|iters| {
            let stream = s.take(iters as usize);
            let start = Instant::now();
            for t in &stream {
                black_box(s.scorer.score(black_box(t)));
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, percentiles, throughput, features_and_score);
criterion_main!(benches);
