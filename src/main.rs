//! The `vigil` binary: parse the command line, set up logging, run the command (`cli`), map the
//! result to an exit code. All the work is in the `vigil` library.

mod cli;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: scoring a record allocates a few small strings
/// (ids, reason names), and glibc's malloc was a large share of a scoring thread's time on the
/// Kafka path (BENCHMARKS.md, "Kafka path"). Its `override` feature (Cargo.toml) also replaces
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
        // Colour codes only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`vigil ... | head`): what it wanted was written.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr itself may be gone; nothing better to do then than to exit.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}
