//! The `vigil` command line: one file per command group. Each command parses its arguments,
//! reads and writes files, draws progress and prints results; the work is in the `vigil`
//! library. Results go to stdout through [`outln!`], so a reader that goes away
//! (`vigil model inspect m.vgm | head -1`) ends the command quietly instead of a panic.
//!
//! - [`offline`]: `generate`, `train`, `evaluate`, `features` (histories and models on disk).
//! - [`model`]: `model inspect`.
//! - [`serve`]: `serve`, `config example|show` (one configuration: file, environment, flags).
//! - [`replay`]: `replay` (a history produced to Kafka; also the load generator).
//! - [`grpc`]: `score`, `load-grpc` (clients of a running server).
//! - [`demo`]: `demo` (the whole pipeline on an in-process Kafka mock cluster).
//! - [`progress`]: progress bars on stderr.

/// `println!` that returns an error instead of panicking when stdout is closed: the caller's
/// `?` ends the command, and `main` treats a broken pipe as a quiet, successful end.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `print!` with the same error handling as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, $($arg)*)?;
        stdout.flush()?
    }};
}

/// `eprintln!` that never panics: a closed stderr is no reason to fail a command.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod demo;
mod grpc;
mod model;
mod offline;
mod progress;
mod replay;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// vigil: real-time fraud scoring with sliding-window features and random forests.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a seeded synthetic transaction history (CSV, labelled).
    Generate(offline::GenerateArgs),
    /// Train a random-forest model from a history file with a time-based split.
    Train(Box<offline::TrainArgs>),
    /// Score a period of a history file with a model and report AUC, AP, card precision@k.
    Evaluate(offline::EvaluateArgs),
    /// Write the feature matrix of a history file (for debugging and other tools).
    Features(offline::FeaturesArgs),
    /// Model file tools.
    Model {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// The whole streaming pipeline on an in-process Kafka mock cluster: the sample history is
    /// replayed to `transactions`, scored, and alerts are shown with reasons as they arrive.
    Demo(demo::DemoArgs),
    /// Score the transactions topic of a Kafka cluster: verdicts to `alerts` (and `verdicts`),
    /// dead letters to `transactions.dlq`; /metrics, /healthz, /readyz over HTTP; with
    /// `--grpc-addr`, the gRPC API on the same state; with `--no-kafka`, the gRPC API alone.
    Serve(Box<serve::ServeArgs>),
    /// The configuration of `vigil serve`: a commented example, or what a command line uses.
    Config {
        #[command(subcommand)]
        command: Box<serve::ConfigCommand>,
    },
    /// Produce a history file to a Kafka topic in event-time order, optionally at a fixed rate
    /// (also the load generator).
    Replay(replay::ReplayArgs),
    /// Score a transaction (JSON) with a running server and print the verdict.
    Score(grpc::ScoreArgs),
    /// Load-test a server's Score call: throughput, or latency at a fixed rate.
    LoadGrpc(grpc::LoadArgs),
}

impl Cli {
    /// Log filter without `RUST_LOG`: a service logs what it does; the other commands only
    /// warnings (they print their own results).
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Serve(_) => "info,rdkafka=warn",
            _ => "warn",
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => offline::cmd_generate(a),
        Command::Train(a) => offline::cmd_train(*a),
        Command::Evaluate(a) => offline::cmd_evaluate(a),
        Command::Features(a) => offline::cmd_features(a),
        Command::Model { command } => model::run(command),
        Command::Demo(a) => demo::cmd_demo(a),
        Command::Serve(a) => serve::cmd_serve(*a),
        Command::Config { command } => serve::cmd_config(*command),
        Command::Replay(a) => replay::cmd_replay(a),
        Command::Score(a) => grpc::cmd_score(a),
        Command::LoadGrpc(a) => grpc::cmd_load(a),
    }
}

/// Whether `e` is a write to a reader that went away (`vigil ... | head`): not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
