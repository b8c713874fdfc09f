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
//! Measured 2026-11-25 22:27-22:33 UTC on the shared 2-core build VM (load average 2.5-3.6,
//! +-30 % run to run), criterion median per transaction, before (03edb59) and after (hash only
//! what the spec reads) the same binary pair, back to back:
//!
//! | group            | before  | after   | bare deque, same run |
//! |------------------|---------|---------|----------------------|
//! | minimal_1h/10k   | 1.24 us | 1.02 us | 0.30-0.32 us         |
//! | minimal_1h/1M    | 3.69 us | 3.66 us | 2.24-2.35 us         |
//! | default/10k      |   -     | 3.91 us |                      |
//! | default/1M       |   -     | 8.62 us |                      |
//!
//! The 250 ns target is not met. `perf` on `minimal_1h/1M`: inside `process`, ~70 % of samples
//! are three cache misses: the hash-map control bytes, the key compare in the 88-byte bucket, and
//! the separately boxed running aggregates (`wins`); the next step is a dense slab with the
//! running totals inline (one miss for the probe, one for the slot).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};
use vigil::features::{FeatureEngine, FeatureSpec};
use vigil::record::{Channel, LabelEvent, Transaction};

const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_700_000_000_000;
const CHUNK: usize = 50_000;

enum Item {
    Tx(Transaction),
    Label(LabelEvent),
}

struct Stream {
    rng: ChaCha8Rng,
    merchants: usize,
    /// Cumulative per-card rates (events per span).
    cum: Vec<f64>,
    gap: Exp<f64>,
    amount: LogNormal<f64>,
    now: f64,
    seq: u64,
    label_delay_ms: i64,
    labels: VecDeque<(i64, u64)>,
}

impl Stream {
    fn new(cards: usize, span_ms: i64, seed: u64) -> Stream {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut total = 0.0;
        let cum = (0..cards)
            .map(|_| {
                total += 30f64.powf(rng.gen::<f64>());
                total
            })
            .collect();
        Stream {
            rng,
            merchants: (cards / 100).max(10),
            cum,
            gap: Exp::new(total / span_ms as f64).expect("positive rate"),
            amount: LogNormal::new(3.5, 1.0).expect("valid log-normal"),
            now: T0 as f64,
            seq: 0,
            label_delay_ms: span_ms * 3 / 10,
            labels: VecDeque::new(),
        }
    }

    fn next_tx(&mut self) -> Transaction {
        self.now += self.gap.sample(&mut self.rng);
        let ts = self.now as i64;
        let total = *self.cum.last().expect("at least one card");
        let u = self.rng.gen::<f64>() * total;
        let card = self.cum.partition_point(|c| *c < u).min(self.cum.len() - 1);
        let home = card.wrapping_mul(2_654_435_761);
        let merchant = if self.rng.gen_bool(0.8) {
            (home + self.rng.gen_range(0..5) * 7919) % self.merchants
        } else {
            self.rng.gen_range(0..self.merchants)
        };
        let channel = match self.rng.gen_range(0..20) {
            0..=9 => Channel::Pos,
            10..=17 => Channel::Online,
            18 => Channel::Atm,
            _ => Channel::Moto,
        };
        let abroad = self.rng.gen_bool(0.05);
        let country = ["FR", "DE", "ES", "IT", "NL"][if abroad {
            self.rng.gen_range(0..5)
        } else {
            home % 5
        }];
        let located = channel == Channel::Pos || channel == Channel::Atm;
        let (lat, lon) = (40.0 + (home % 10) as f64, (home % 20) as f64 - 5.0);
        self.seq += 1;
        Transaction {
            transaction_id: format!("t{}", self.seq),
            timestamp_ms: ts,
            card_id: format!("card{card}"),
            merchant_id: format!("m{merchant}"),
            amount: self.amount.sample(&mut self.rng),
            label: None,
            label_time_ms: None,
            currency: None,
            mcc: Some(5411),
            country: Some(country.to_string()),
            channel: Some(channel),
            lat: located.then(|| lat + self.rng.gen_range(-0.1..0.1)),
            lon: located.then(|| lon + self.rng.gen_range(-0.1..0.1)),
        }
    }

    /// Appends the next `n` transactions, with the labels due before each of them.
    fn fill(&mut self, n: usize, out: &mut Vec<Item>) {
        for _ in 0..n {
            let tx = self.next_tx();
            while let Some(&(known_at, seq)) = self.labels.front() {
                if known_at > tx.timestamp_ms {
                    break;
                }
                self.labels.pop_front();
                out.push(Item::Label(LabelEvent {
                    transaction_id: format!("t{seq}"),
                    fraud: true,
                    known_at_ms: known_at,
                }));
            }
            if self.rng.gen_bool(0.01) {
                self.labels
                    .push_back((tx.timestamp_ms + self.label_delay_ms, self.seq));
            }
            out.push(Item::Tx(tx));
        }
    }
}

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
    let warm = (stream.cum.last().copied().unwrap_or(0.0) * 1.3) as usize;
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
                let warm = (stream.cum.last().copied().unwrap_or(0.0) * 1.3) as usize;
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
