//! What one random cache line costs on this machine: the floor under any per-event state
//! lookup at a million cards (BENCHMARKS.md, "Feature engine: the memory floor").
//!
//! It fills `--mb` MiB (default 2048, about the feature engine's state at a million cards) and
//! reads 4M random lines from it two ways:
//! - independent loads (addresses known in advance, so the core keeps as many misses in flight
//!   as it can): the throughput of random lines, the cost per line of a batch that overlaps
//!   everything;
//! - dependent loads (each address depends on the previous load, like a hash-table slot then
//!   the block it points to): the latency of one miss, TLB walk included.
//!
//! `cargo run --release --example mem_probe -- --mb 2048`

use std::hint::black_box;
use std::time::Instant;

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn main() -> Result<(), String> {
    let mut mb = 2048usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--mb" => {
                mb = args
                    .next()
                    .ok_or("--mb needs a value")?
                    .parse()
                    .map_err(|e| format!("--mb: {e}"))?;
            }
            other => return Err(format!("unknown argument {other} (only --mb N)")),
        }
    }
    let words = (mb.max(1) << 20) / 8;
    let lines = words / 8;
    let data: Vec<u64> = (0..words as u64).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let n = 4_000_000usize;
    let at: Vec<usize> = (0..n)
        .map(|_| (next(&mut seed) as usize % lines) * 8)
        .collect();

    let start = Instant::now();
    let mut sum = 0u64;
    for &i in &at {
        sum = sum.wrapping_add(data[i]);
    }
    let independent = start.elapsed().as_nanos() as f64 / n as f64;
    black_box(sum);

    // Each address mixes in the low bits of the value just loaded, so no load can start before
    // the previous one has returned.
    let m = n / 4;
    let start = Instant::now();
    let mut carry = 0usize;
    for &i in &at[..m] {
        // `i` is a multiple of 8 below `words - 7` and `carry < 8`: still in bounds.
        let v = data[i ^ carry];
        carry = (v & 7) as usize;
    }
    let dependent = start.elapsed().as_nanos() as f64 / m as f64;
    black_box(carry);

    println!(
        "{mb} MiB working set, random 64-byte lines: independent loads {independent:.1} ns per \
         line (throughput), dependent loads {dependent:.1} ns per line (latency)"
    );
    Ok(())
}
