//! Evaluation throughput: the ranking metrics (one sort + sweeps) and card precision@k, on a
//! synthetic 1M-row test period (extrapolate linearly-ish, O(n log n), to 10M).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil::decision::Thresholds;
use vigil::eval::{card_precision_at_k, evaluate, Ranking};

const ROWS: usize = 1_000_000;
const DAY_MS: i64 = 86_400_000;

struct Data {
    scores: Vec<f32>,
    labels: Vec<bool>,
    cards: Vec<String>,
    card_ids: Vec<u32>,
    timestamps: Vec<i64>,
}

fn data() -> Data {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut d = Data {
        scores: Vec::with_capacity(ROWS),
        labels: Vec::with_capacity(ROWS),
        cards: Vec::with_capacity(ROWS),
        card_ids: Vec::with_capacity(ROWS),
        timestamps: Vec::with_capacity(ROWS),
    };
    for _ in 0..ROWS {
        let fraud = rng.gen_bool(0.005);
        let u: f32 = rng.gen();
        // Forest-like scores: a mean of 100 leaf values, so many (but not all) ties.
        let raw = if fraud { 1.0 - u * u } else { u.powi(4) };
        d.scores
            .push((raw * 100.0).round() / 100.0 + rng.gen_range(0..50) as f32 * 1e-4);
        d.labels.push(fraud);
        let card = rng.gen_range(0..50_000);
        d.cards.push(format!("card-{card}"));
        d.card_ids.push(card);
        d.timestamps.push(rng.gen_range(0..30 * DAY_MS));
    }
    d
}

fn bench(c: &mut Criterion) {
    let d = data();
    let mut g = c.benchmark_group("eval_1M");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("ranking_sort", |b| {
        b.iter(|| Ranking::new(&d.scores, &d.labels).unwrap())
    });
    let r = Ranking::new(&d.scores, &d.labels).unwrap();
    g.bench_function("auc_ap_curves", |b| {
        b.iter(|| {
            (
                r.auc_roc(),
                r.average_precision(),
                r.roc_curve(2000),
                r.pr_curve(2000),
            )
        })
    });
    g.bench_function("suggest_thresholds", |b| {
        b.iter(|| r.suggest_thresholds().unwrap())
    });
    g.bench_function("card_precision_at_100", |b| {
        b.iter(|| card_precision_at_k(&d.scores, &d.labels, &d.cards, &d.timestamps, 100).unwrap())
    });
    g.bench_function("card_precision_at_100_interned", |b| {
        b.iter(|| {
            card_precision_at_k(&d.scores, &d.labels, &d.card_ids, &d.timestamps, 100).unwrap()
        })
    });
    let th = Thresholds::new(0.3, 0.8).unwrap();
    g.bench_function("evaluate", |b| {
        b.iter_batched(
            || (),
            |()| evaluate(&d.scores, &d.labels, &d.cards, &d.timestamps, 100, &th).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Criterion draws its HTML plots with plotters, which (built with `ab_glyph`, not system
    // fonts) has no font until one is registered.
    config = {
        vigil::offline::report::register_font().expect("embedded font");
        Criterion::default()
    };
    targets = bench
}
criterion_main!(benches);
