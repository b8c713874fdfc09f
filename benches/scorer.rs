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
use vigil::model;
use vigil::record::{read_history, ReadOptions, Transaction};
use vigil::scorer::Scorer;

/// The warmed scorer and an endless, in-order stream of transactions.
struct Setup {
    scorer: Scorer,
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
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "scorer/score single-call latency over {} calls: p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999)
    );
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

criterion_group!(benches, percentiles, throughput);
criterion_main!(benches);
