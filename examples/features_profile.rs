//! The feature-engine bench's stream (`benches/features.rs`) as a plain program, for profilers:
//! it warms an engine to its steady state, then runs `--events` more transactions through
//! `measured` (one at a time, or with `--batch` through `process_batch`) and prints the time per
//! transaction.
//!
//! Timings on the shared build VMs move by 30-50 % with other jobs; instruction counts do not.
//! For a load-independent figure, count instructions in `measured` only:
//!
//! ```sh
//! cargo build --release --example features_profile
//! valgrind --tool=callgrind --toggle-collect='*measured*' \
//!     target/release/examples/features_profile --spec default --cards 10000 --events 200000
//! ```
//!
//! and divide the reported total by `--events`.
//!
//! `--spec` takes `default` (`training/features.toml`, 30-day stream), `minimal` (count, sum and
//! max over 1 h, 1-hour stream) or the path of any spec file, run on the 30-day stream; the
//! specs in `benches/specs/` are the default spec's feature families one at a time (the cost
//! table in BENCHMARKS.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vigil::features::{EventOutcome, FeatureEngine, FeatureSpec};

#[path = "../benches/support/stream.rs"]
mod stream;
use stream::{Item, Stream};

const DAY_MS: i64 = 86_400_000;

/// The allocator the `vigil` binary runs with (entity blocks grow and shrink all the time).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    spec: String,
    cards: usize,
    events: usize,
    batch: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        spec: "default".into(),
        cards: 10_000,
        events: 200_000,
        batch: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--spec" => args.spec = value()?,
            "--cards" => args.cards = value()?.parse().map_err(|e| format!("--cards: {e}"))?,
            "--events" => args.events = value()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--batch" => args.batch = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// The measured region: everything counted per transaction. Returns the number of late
/// events, so it cannot be merged with `warm_up`, which has the same loop.
#[inline(never)]
fn measured(engine: &mut FeatureEngine, items: &[Item], row: &mut [f32]) -> usize {
    let mut late = 0;
    for item in items {
        match item {
            Item::Tx(tx) => {
                late += usize::from(engine.process(tx, row) != EventOutcome::InOrder);
            }
            Item::Label(l) => {
                engine.observe_label(l);
            }
        }
    }
    late
}

/// The measured region for `--batch`: transactions through `process_batch`, labels delivered
/// by the hook right before the transaction they preceded in the stream.
#[inline(never)]
fn measured_batch(
    engine: &mut FeatureEngine,
    txs: &[vigil::record::Transaction],
    labels_before: &[Vec<vigil::record::LabelEvent>],
    rows: &mut [f32],
    outcomes: &mut [EventOutcome],
) {
    engine.process_batch(txs, rows, outcomes, |e, i| {
        for l in &labels_before[i] {
            e.observe_label(l);
        }
    });
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let (spec, span_ms) = match args.spec.as_str() {
        "default" => (
            FeatureSpec::load(Path::new("training/features.toml")).map_err(|e| e.to_string())?,
            30 * DAY_MS,
        ),
        "minimal" => (
            FeatureSpec::from_toml_str(
                "[[window]]\nentity = \"card\"\nlengths = [\"1h\"]\naggregates = [\"count\", \"sum\", \"max\"]\n",
            )
            .map_err(|e| e.to_string())?,
            3_600_000,
        ),
        // Any other value: a spec file, on the default spec's 30-day stream (to time parts of
        // a spec, e.g. one feature family at a time).
        path => (
            FeatureSpec::load(Path::new(path)).map_err(|e| format!("--spec {path}: {e}"))?,
            30 * DAY_MS,
        ),
    };
    let spec = Arc::new(spec);
    let mut stream = Stream::new(args.cards, span_ms, 42);
    let mut engine = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0f32; spec.n_features()];
    let warm = (stream.per_span() * 1.3) as usize;
    let mut items = Vec::new();
    let mut done = 0;
    while done < warm {
        items.clear();
        stream.fill(50_000, &mut items);
        if args.batch {
            let (txs, labels_before) = split(std::mem::take(&mut items));
            let mut rows = vec![0.0f32; txs.len() * spec.n_features()];
            let mut outcomes = vec![EventOutcome::InOrder; txs.len()];
            engine.process_batch(&txs, &mut rows, &mut outcomes, |e, i| {
                for l in &labels_before[i] {
                    e.observe_label(l);
                }
            });
        } else {
            warm_up(&mut engine, &items, &mut row);
        }
        done += 50_000;
    }
    items.clear();
    stream.fill(args.events, &mut items);
    if args.batch {
        let (txs, labels_before) = split(items);
        // Written before timing: a fresh `vec!` of zeros is mapped lazily, and the page faults
        // of its first write (a fifth of a 1M-card run's samples) are not the engine's cost.
        let mut rows = vec![1.0f32; txs.len() * spec.n_features()];
        let mut outcomes = vec![EventOutcome::InOrder; txs.len()];
        let start = Instant::now();
        measured_batch(&mut engine, &txs, &labels_before, &mut rows, &mut outcomes);
        report(&args, start, &engine);
        return Ok(());
    }
    let start = Instant::now();
    let late = measured(&mut engine, &items, &mut row);
    report(&args, start, &engine);
    if late > 0 {
        println!("({late} events were not in order)");
    }
    Ok(())
}

/// Transactions, and for each the labels that came right before it in the stream.
fn split(
    items: Vec<Item>,
) -> (
    Vec<vigil::record::Transaction>,
    Vec<Vec<vigil::record::LabelEvent>>,
) {
    let mut txs = Vec::new();
    let mut labels_before = vec![Vec::new()];
    for item in items {
        match item {
            Item::Tx(tx) => {
                txs.push(tx);
                labels_before.push(Vec::new());
            }
            Item::Label(l) => {
                if let Some(v) = labels_before.last_mut() {
                    v.push(l);
                }
            }
        }
    }
    (txs, labels_before)
}

/// Warm-up, kept out of `measured` so instruction counts only cover the measured events.
#[inline(never)]
fn warm_up(engine: &mut FeatureEngine, items: &[Item], row: &mut [f32]) {
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

fn report(args: &Args, start: Instant, engine: &FeatureEngine) {
    let secs = start.elapsed().as_secs_f64();
    let s = engine.stats();
    println!(
        "spec {} cards {} {}: {} transactions in {:.3}s = {:.0} ns each; state: {} entities, {} events, {:.0} MB",
        args.spec,
        args.cards,
        if args.batch { "batch" } else { "one at a time" },
        args.events,
        secs,
        secs * 1e9 / args.events as f64,
        s.entities,
        s.events_held,
        s.state_bytes as f64 / 1e6
    );
}
