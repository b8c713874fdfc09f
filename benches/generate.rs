//! History generator throughput, in rows per second (`Throughput::Elements`): `vigil generate`'s
//! work, the synthetic history written as CSV through a `BufWriter` into a temporary file.
//!
//! Rows per run: `VIGIL_GEN_ROWS` (default 1M, seed 7), e.g.
//! `VIGIL_GEN_ROWS=200000 cargo bench --bench generate`. After the measurement it prints what
//! was generated (size, days, cards, merchants, fraud rate, rows per pattern).

use std::io::{BufWriter, Write};
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use vigil::generate::{generate, GenerateSummary, GeneratorConfig};

fn rows() -> u64 {
    std::env::var("VIGIL_GEN_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn main() {
    let rows = rows();
    let cfg = GeneratorConfig {
        rows,
        seed: 7,
        ..GeneratorConfig::default()
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20))
        .without_plots()
        .configure_from_args();
    let mut seen: Option<(GenerateSummary, u64)> = None;
    {
        let mut g = c.benchmark_group("generate");
        // A run takes about a second: the same few iterations in every sample.
        g.sampling_mode(SamplingMode::Flat);
        g.sample_size(10);
        g.throughput(Throughput::Elements(rows));
        g.bench_function(format!("csv_{rows}_rows"), |b| {
            b.iter_batched(
                || tempfile::NamedTempFile::new().expect("temporary file"),
                |file| {
                    let mut out = BufWriter::new(file.as_file());
                    let summary = generate(&cfg, &mut out, &mut |_| {}).expect("generates");
                    out.flush().expect("flushes");
                    drop(out);
                    assert_eq!(summary.rows, rows);
                    if seen.is_none() {
                        let bytes = file.as_file().metadata().expect("metadata").len();
                        seen = Some((summary, bytes));
                    }
                    // Returned, so that deleting the file is not timed.
                    file
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
    if let Some((s, bytes)) = seen {
        println!(
            "{rows} rows: {:.1} MB, {} days, {} cards, {} merchants, fraud {:.3}%, {:?}",
            bytes as f64 / 1e6,
            s.days,
            s.cards,
            s.merchants,
            100.0 * s.frauds as f64 / s.rows.max(1) as f64,
            s.by_pattern
        );
    }
    c.final_summary();
}
