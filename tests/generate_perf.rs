//! Throughput of the generator. Ignored by default; run in release:
//! `cargo test --release --test generate_perf -- --ignored --nocapture`
//! (`VIGIL_GEN_ROWS` overrides the default 1M rows).

use std::io::{BufWriter, Write};
use std::time::Instant;

use vigil::generate::{generate, GeneratorConfig};

#[test]
#[ignore = "performance measurement; run in release with --ignored"]
fn generate_throughput() {
    let rows = std::env::var("VIGIL_GEN_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let cfg = GeneratorConfig {
        rows,
        seed: 7,
        ..GeneratorConfig::default()
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    let t = Instant::now();
    let mut out = BufWriter::new(file.as_file());
    let summary = generate(&cfg, &mut out, &mut |_| {}).unwrap();
    out.flush().unwrap();
    drop(out);
    let secs = t.elapsed().as_secs_f64();
    let bytes = file.as_file().metadata().unwrap().len();
    println!(
        "{rows} rows in {secs:.2} s = {:.0} rows/s, {:.1} MB, {} days, {} cards, {} merchants, \
         fraud {:.3}%, {:?}",
        rows as f64 / secs,
        bytes as f64 / 1e6,
        summary.days,
        summary.cards,
        summary.merchants,
        100.0 * summary.frauds as f64 / summary.rows as f64,
        summary.by_pattern
    );
    assert_eq!(summary.rows, rows);
}
