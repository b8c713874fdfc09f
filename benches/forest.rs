//! Scoring latency of the compiled forest against the reference walk.
//!
//! Model: 100 trees of depth 12 on 36 features, grown by random splits with thresholds drawn
//! from realistic feature distributions (see `tests/support/scoring_gen.rs`; ~1.5k nodes per tree).
//! Single-row benchmarks rotate through 4096 held-out rows so the measured paths are not just
//! one hot path in L1 (the realistic serving case: every transaction takes different paths).
//!
//! Besides criterion's mean/median, `main` prints a p50/p90/p99 table from individually timed
//! calls (includes ~20-30 ns of `Instant::now` overhead per call, measured and printed too).
//!
//! `explain` (precomputed per-leaf reason lists) and `explain_by_walk` (the previous path
//! re-walk) run side by side so their comparison comes from one run; BENCHMARKS.md has the
//! figures.

#[path = "../tests/support/scoring_gen.rs"]
mod gen;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ndarray::ArrayView2;
use vigil::forest::compiled::CompiledForest;
use vigil::forest::Forest;

const N_FEATURES: usize = 36;
const N_TREES: usize = 100;
const DEPTH: usize = 12;
const N_PROBES: usize = 4096;
const BATCH: usize = 1024;

struct Setup {
    forest: Forest,
    compiled: CompiledForest,
    probes: Vec<f32>,
}

fn setup() -> Setup {
    let train = gen::feature_rows(1, 4096, N_FEATURES);
    let forest = gen::random_forest(2, &train, N_FEATURES, N_TREES, DEPTH, 4);
    let compiled = CompiledForest::compile(&forest).expect("generated forest is valid");
    let probes = gen::feature_rows(3, N_PROBES, N_FEATURES);
    Setup {
        forest,
        compiled,
        probes,
    }
}

/// A closure that returns the next probe row on each call, cycling.
fn rotating<'a>(probes: &'a [f32]) -> impl FnMut() -> &'a [f32] {
    let mut i = 0;
    move || {
        i = (i + 1) % N_PROBES;
        &probes[i * N_FEATURES..(i + 1) * N_FEATURES]
    }
}

fn criterion_benches(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("score_one_row");
    let mut next = rotating(&s.probes);
    g.bench_function("compiled", |b| {
        b.iter(|| s.compiled.score(black_box(next())))
    });
    let mut next = rotating(&s.probes);
    g.bench_function("reference_predict", |b| {
        b.iter(|| s.forest.predict(black_box(next())))
    });
    let mut next = rotating(&s.probes);
    let mut contrib = vec![0.0; N_FEATURES];
    g.bench_function("explain", |b| {
        b.iter(|| s.compiled.explain(black_box(next()), &mut contrib))
    });
    let mut next = rotating(&s.probes);
    g.bench_function("explain_by_walk", |b| {
        b.iter(|| s.compiled.explain_by_walk(black_box(next()), &mut contrib))
    });
    let same = &s.probes[..N_FEATURES];
    g.bench_function("compiled_same_row", |b| {
        b.iter(|| s.compiled.score(black_box(same)))
    });
    g.finish();

    let mut g = c.benchmark_group("score_batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    let rows = ArrayView2::from_shape((BATCH, N_FEATURES), &s.probes[..BATCH * N_FEATURES])
        .expect("row-major probes");
    let mut out = vec![0.0; BATCH];
    g.bench_with_input(BenchmarkId::new("compiled", BATCH), &rows, |b, rows| {
        b.iter(|| s.compiled.score_batch(black_box(rows.view()), &mut out))
    });
    g.finish();
}

/// Nanoseconds this thread has spent on a CPU (Linux `/proc/thread-self/schedstat`), if known.
///
/// The benchmark machine is shared (load average far above its core count), so wall-clock
/// means include time spent preempted; on-CPU time per call removes that (it still includes
/// cache and SMT interference from the neighbours).
fn on_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Mean on-CPU and wall time per call over `calls` calls.
fn on_cpu_mean(name: &str, calls: usize, per: &str, mut f: impl FnMut()) {
    for _ in 0..calls / 10 {
        f();
    }
    let (cpu0, wall0) = (on_cpu_ns(), Instant::now());
    for _ in 0..calls {
        f();
    }
    let wall = wall0.elapsed().as_nanos() as f64 / calls as f64;
    match (cpu0, on_cpu_ns()) {
        (Some(a), Some(b)) => println!(
            "{name:<28} on-CPU mean {:>8.1} ns{per}   (wall mean {wall:.1})",
            (b - a) as f64 / calls as f64
        ),
        _ => println!("{name:<28} wall mean {wall:.1} ns{per} (on-CPU time unavailable)"),
    }
}

/// p50/p90/p99 of individually timed calls.
fn percentiles(name: &str, calls: usize, mut f: impl FnMut()) {
    for _ in 0..calls / 10 {
        f();
    }
    let mut ns: Vec<u64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() - 1) as f64 * p) as usize];
    println!(
        "{name:<28} p50 {:>6} ns   p90 {:>6} ns   p99 {:>6} ns",
        q(0.5),
        q(0.9),
        q(0.99)
    );
}

fn percentile_table(s: &Setup) {
    println!(
        "model: {} trees, max depth {}, {} nodes ({:.0}/tree), {} features",
        s.forest.trees.len(),
        s.forest.max_depth(),
        s.forest.n_nodes(),
        s.forest.n_nodes() as f64 / s.forest.trees.len() as f64,
        N_FEATURES
    );
    println!(
        "memory: walk {} B, reason tables {} B ({:.1} B per leaf)",
        s.compiled.walk_bytes(),
        s.compiled.reason_table_bytes(),
        s.compiled.reason_table_bytes() as f64
            / s.forest
                .trees
                .iter()
                .flat_map(|t| &t.nodes)
                .filter(|n| n.is_leaf())
                .count() as f64
    );
    const CALLS: usize = 200_000;
    percentiles("Instant::now overhead", CALLS, || {});
    let mut next = rotating(&s.probes);
    percentiles("compiled score", CALLS, || {
        black_box(s.compiled.score(black_box(next())));
    });
    let mut next = rotating(&s.probes);
    let mut contrib = vec![0.0; N_FEATURES];
    percentiles("compiled explain", CALLS / 4, || {
        black_box(s.compiled.explain(black_box(next()), &mut contrib));
    });
    let mut next = rotating(&s.probes);
    percentiles("explain_by_walk (old)", CALLS / 4, || {
        black_box(s.compiled.explain_by_walk(black_box(next()), &mut contrib)).ok();
    });
    let mut next = rotating(&s.probes);
    percentiles("reference Forest::predict", CALLS / 4, || {
        black_box(s.forest.predict(black_box(next())));
    });

    let mut next = rotating(&s.probes);
    on_cpu_mean("compiled score", CALLS, "", || {
        black_box(s.compiled.score(black_box(next())));
    });
    let same = &s.probes[..N_FEATURES];
    on_cpu_mean("compiled score (same row)", CALLS, "", || {
        black_box(s.compiled.score(black_box(same)));
    });
    let mut next = rotating(&s.probes);
    on_cpu_mean("compiled explain", CALLS / 4, "", || {
        black_box(s.compiled.explain(black_box(next()), &mut contrib));
    });
    // Same row every call: everything it touches stays cached, which separates the tables'
    // cache misses from the cost of the adds themselves.
    on_cpu_mean("compiled explain (same row)", CALLS / 4, "", || {
        black_box(s.compiled.explain(black_box(same), &mut contrib));
    });
    let mut next = rotating(&s.probes);
    on_cpu_mean("explain_by_walk (old)", CALLS / 4, "", || {
        black_box(s.compiled.explain_by_walk(black_box(next()), &mut contrib)).ok();
    });
    let mut next = rotating(&s.probes);
    on_cpu_mean("reference Forest::predict", CALLS / 10, "", || {
        black_box(s.forest.predict(black_box(next())));
    });
    let rows = ArrayView2::from_shape((BATCH, N_FEATURES), &s.probes[..BATCH * N_FEATURES])
        .expect("row-major probes");
    let mut out = vec![0.0; BATCH];
    on_cpu_mean(
        &format!("score_batch({BATCH} rows)"),
        200,
        &format!(" per batch = that / {} per row per tree", BATCH * N_TREES),
        || {
            s.compiled.score_batch(black_box(rows.view()), &mut out);
            black_box(&out);
        },
    );
}

fn main() {
    let s = setup();
    percentile_table(&s);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
        .configure_from_args();
    criterion_benches(&mut c, &s);
    c.final_summary();
}
