//! The `vigil` command line: a thin layer over the library. It parses arguments, reads and writes
//! files, draws progress bars and prints results; all the work is in `vigil::*`.

mod api_cli;
mod cli;
mod cli_stream;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: scoring a record allocates a few small strings
/// (ids, reason names), and glibc's malloc was a quarter of a scoring thread's time on the Kafka
/// path (BENCHMARKS.md, "Kafka path"). Its `override` feature (Cargo.toml) also replaces
/// `malloc`/`free` for C code, so librdkafka's per-message allocations use it as well.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
