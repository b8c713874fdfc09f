//! Feature-engine throughput, reported as time per transaction (`Throughput::Elements`).
//!
//! Stream (seeded, generated outside the timed region): `cards` active cards, `cards / 100`
//! merchants. Each card has a fixed rate drawn log-uniformly between 1 and 30 transactions per
//! *span* (mean ~8.5), so every card holds a few to tens of events in its longest window. Event
//! times are a merged Poisson process (integer ms, so ties happen), always in order. 80 % of a
//! card's payments go to one of its 5 "home" merchants, the rest anywhere; 50 % POS / 40 % online
//! / 5 % ATM / 5 % MOTO; card-present payments carry a location near the card's home; 5 % are
//! abroad; amounts are log-normal (median ~33). 1 % of transactions get a fraud label, delivered
//! (and timed, as part of the stream) 3 spans/10 after the transaction.
//!
//! - `default/<cards>`: `training/features.toml` (43 features, card windows up to 30 d, merchant
//!   windows, merchant risk 30 d delayed 7 d), span = 30 days.
//! - `minimal_1h/<cards>`: count, sum and max of the card's amounts over 1 h (comparable to the
//!   per-key deque prototype), span = 1 hour, so keys are as active relative to the window.
//!
//! State is pre-warmed with 1.3 spans of traffic (past the default spec's 37-day retention)
//! before timing, so the measured engine holds its steady-state population of cards, merchants and
//! events, and evicts as it goes.
//!
//! Run: `cargo bench --bench features -- --warm-up-time 1 --measurement-time 3`
//!
//! `bare_deque_1h/<cards>` is the calibration prototype (a bare per-card deque, count/sum/max
//! over 1 h, same stream as `minimal_1h`), run in the same process so figures compare as ratios.
//!
//! Figures, with the machine's load and the bare deque of the same run, are in BENCHMARKS.md
//! ("Feature engine"); `examples/features_profile.rs` runs the same stream under a profiler.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vigil::features::{FeatureEngine, FeatureSpec};

/// The allocator the `vigil` binary runs with, so allocation costs are the product's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY_MS: i64 = 86_400_000;
const CHUNK: usize = 50_000;

#[path = "support/stream.rs"]
mod stream;
use stream::{Item, Stream};

fn run(engine: &mut FeatureEngine, items: &[Item], row: &mut [f32]) {
    for item in items {
        match item {
            Item::Tx(tx) => {
                engine.process(tx, row);
            }
            Item::Label(l) => {
                engine.observe_label(l);
            }
        }
    }
}

/// The transactions of `items`, and each label with the index of the transaction it precedes.
fn split(
    items: &[Item],
) -> (
    Vec<vigil::record::Transaction>,
    Vec<(usize, vigil::record::LabelEvent)>,
) {
    let mut txs = Vec::with_capacity(items.len());
    let mut labels = Vec::new();
    for item in items {
        match item {
            Item::Tx(tx) => txs.push(tx.clone()),
            Item::Label(l) => labels.push((txs.len(), l.clone())),
        }
    }
    (txs, labels)
}

/// A stream and an engine that has processed 1.3 spans of it.
fn warm(
    name: &str,
    cards: usize,
    spec: &Arc<FeatureSpec>,
    span_ms: i64,
    items: &mut Vec<Item>,
    row: &mut [f32],
) -> (Stream, FeatureEngine) {
    let mut stream = Stream::new(cards, span_ms, 42);
    let mut engine = FeatureEngine::new(Arc::clone(spec));
    let warm = (stream.per_span() * 1.3) as usize;
    let mut done = 0;
    let mut run_time = Duration::ZERO;
    while done < warm {
        items.clear();
        stream.fill(CHUNK, items);
        let t = Instant::now();
        run(&mut engine, items, row);
        run_time += t.elapsed();
        done += CHUNK;
    }
    let s = engine.stats();
    eprintln!(
        "features/{name}/{cards}: warmed with {done} transactions ({:.0} ns/tx in the engine); \
         holding {} entities, {} events",
        run_time.as_nanos() as f64 / done as f64,
        s.entities,
        s.events_held
    );
    (stream, engine)
}

fn bench_spec(c: &mut Criterion, name: &str, spec: Arc<FeatureSpec>, span_ms: i64) {
    let mut group = c.benchmark_group(format!("features/{name}"));
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for cards in [10_000usize, 1_000_000] {
        // Built on first use, so a filtered run (`-- default/10000`) only warms what it measures.
        let mut state: Option<(Stream, FeatureEngine)> = None;
        let mut row = vec![0.0f32; spec.n_features()];
        let mut items = Vec::with_capacity(CHUNK * 2);
        group.bench_function(BenchmarkId::from_parameter(cards), |b| {
            let (stream, engine) = state
                .get_or_insert_with(|| warm(name, cards, &spec, span_ms, &mut items, &mut row));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(CHUNK);
                    items.clear();
                    stream.fill(n, &mut items);
                    let start = Instant::now();
                    run(engine, &items, &mut row);
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
        // The same stream through `process_batch` (what replays and the trainer use): memory
        // latency of one event overlapped with the work of others.
        let mut rows = Vec::new();
        let mut outcomes = Vec::new();
        group.bench_function(BenchmarkId::new("batch", cards), |b| {
            let (stream, engine) = state
                .get_or_insert_with(|| warm(name, cards, &spec, span_ms, &mut items, &mut row));
            let nf = engine.spec().n_features();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(CHUNK);
                    items.clear();
                    stream.fill(n, &mut items);
                    let (txs, labels) = split(&items);
                    rows.resize(txs.len() * nf, 0.0);
                    outcomes.resize(txs.len(), vigil::features::EventOutcome::InOrder);
                    let start = Instant::now();
                    let mut next = 0;
                    engine.process_batch(&txs, &mut rows, &mut outcomes, |e, i| {
                        while labels.get(next).is_some_and(|(at, _)| *at == i) {
                            e.observe_label(&labels[next].1);
                            next += 1;
                        }
                    });
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
    }
    group.finish();
}

fn features(c: &mut Criterion) {
    let default = FeatureSpec::load(Path::new("training/features.toml")).expect("default spec");
    bench_spec(c, "default", Arc::new(default), 30 * DAY_MS);
    let minimal = FeatureSpec::from_toml_str(
        "[[window]]\nentity = \"card\"\nlengths = [\"1h\"]\naggregates = [\"count\", \"sum\", \"max\"]\n",
    )
    .expect("minimal spec");
    bench_spec(c, "minimal_1h", Arc::new(minimal), 3_600_000);
}

/// The calibration prototype: a bare `FxHashMap<u64, VecDeque<(i64, f32)>>` count/sum/max over
/// 1 h, on the same stream as `minimal_1h`. Measured in the same run so the engine's figures can
/// be compared as ratios (the shared VM's load moves absolute numbers by +-30 %).
fn bare_deque(c: &mut Criterion) {
    use rustc_hash::FxHashMap;
    use std::hash::BuildHasher;
    type Deques = FxHashMap<u64, VecDeque<(i64, f32)>>;
    const W: i64 = 3_600_000;
    let mut group = c.benchmark_group("features/bare_deque_1h");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for cards in [10_000usize, 1_000_000] {
        let mut state: Option<(Stream, Deques)> = None;
        let mut items = Vec::with_capacity(CHUNK * 2);
        let step = |map: &mut Deques, items: &[Item]| {
            let mut acc = 0.0f32;
            for item in items {
                let Item::Tx(tx) = item else { continue };
                let key = rustc_hash::FxBuildHasher.hash_one(tx.card_id.as_str());
                let q = map.entry(key).or_default();
                while q.front().is_some_and(|e| e.0 <= tx.timestamp_ms - W) {
                    q.pop_front();
                }
                let (mut n, mut sum, mut max) = (0u32, 0.0f64, 0.0f32);
                for &(_, a) in q.iter() {
                    n += 1;
                    sum += f64::from(a);
                    max = max.max(a);
                }
                acc += n as f32 + sum as f32 + max;
                q.push_back((tx.timestamp_ms, tx.amount as f32));
            }
            std::hint::black_box(acc);
        };
        group.bench_function(BenchmarkId::from_parameter(cards), |b| {
            let (stream, map) = state.get_or_insert_with(|| {
                let mut stream = Stream::new(cards, W, 42);
                let mut map = FxHashMap::default();
                let warm = (stream.per_span() * 1.3) as usize;
                let mut done = 0;
                while done < warm {
                    items.clear();
                    stream.fill(CHUNK, &mut items);
                    step(&mut map, &items);
                    done += CHUNK;
                }
                (stream, map)
            });
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(CHUNK);
                    items.clear();
                    stream.fill(n, &mut items);
                    let start = Instant::now();
                    step(map, &items);
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // No plots: the HTML plots need system fonts the build machines lack, and add nothing here.
    config = Criterion::default().without_plots();
    targets = bare_deque, features
}
criterion_main!(benches);
