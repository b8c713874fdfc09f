//! `vigil demo`: the whole streaming pipeline on an in-process Kafka mock cluster
//! (`vigil::demo`), with alerts printed as they arrive and a summary at the end.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use vigil::decision::Decision;
use vigil::demo::{score_example, Demo, DemoOptions};
use vigil::record::format_timestamp;
use vigil::serve::BindError;

use super::offline::{read_history, HistoryArgs, DEFAULT_MODEL};
use super::progress::Bars;
use super::serve::bind_error;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Show at most this many alerts (all are counted).
    #[arg(long, default_value_t = 25)]
    pub show: usize,
    /// Records per second the built-in producer replays (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// host:port of /metrics, /healthz, /readyz while the demo runs (empty: off).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Partitions of the demo's transactions topic (default: as many as the model was trained
    /// with, so it is served exactly the features it learned from).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// host:port of the gRPC API while the demo runs, on the same scoring state as the Kafka
    /// path (port 0 picks a free one; empty: off). A busy port stops the demo at once.
    #[arg(long, default_value = vigil::api::config::DEFAULT_ADDR)]
    pub grpc_addr: String,
}

pub fn cmd_demo(a: DemoArgs) -> Result<()> {
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            anyhow::bail!("--rate {r}: expected a positive number of records per second");
        }
    }
    // The cluster and the server first, so a busy port or a bad model is reported at once.
    let demo = Demo::start(&DemoOptions {
        model: a.model.clone(),
        partitions: a.partitions,
        metrics_addr: a.metrics_addr.clone(),
        grpc_addr: a.grpc_addr.clone(),
    })
    .map_err(|e| match e.downcast::<BindError>() {
        Ok(b) => bind_error(&b, "--grpc-addr", "--metrics-addr", true),
        Err(e) => e,
    })?;
    let bars = Bars::new();
    let txs = Arc::new(read_history(&a.history, &bars)?.transactions);
    let model = Arc::clone(demo.server().model());
    outln!(
        "vigil demo: mock Kafka cluster at {}; replaying {} transactions from {} to `transactions`;\n\
         scoring with {} (review >= {:.3}, decline >= {:.3}); alerts (non-approve verdicts) below as they arrive{}\n",
        demo.brokers(),
        txs.len(),
        a.history.data.display(),
        model.name(),
        model.header.thresholds.review,
        model.header.thresholds.decline,
        demo.server()
            .http_addr()
            .map_or(String::new(), |addr| format!("; metrics on http://{addr}/metrics"))
    );
    if let Some(local) = demo.server().grpc_addr() {
        outln!(
            "gRPC API on {local}, sharing the Kafka path's scoring state (StreamAlerts carries the \
             alerts below); while the demo runs, try\n  {}\n",
            score_example(&local.to_string(), &txs)
        );
    }
    let show = a.show;
    let mut shown = 0usize;
    let summary = demo.run(Arc::clone(&txs), a.rate, move |v, tx| {
        if v.decision == Decision::Approve || shown >= show {
            return;
        }
        shown += 1;
        let reasons: Vec<String> = v
            .reasons
            .iter()
            .map(|r| format!("{}={:.4} (+{:.3})", r.feature, r.value, r.contribution))
            .collect();
        let fraud = tx.is_some_and(|t| t.label == Some(true));
        // The demo goes on if nobody reads its output any more.
        let _ = writeln!(
            std::io::stdout(),
            "{} {:<7} score {:.3} tx {} card {} {:>9.2} [{}] p{} because {}",
            format_timestamp(v.event_time_ms),
            v.decision.as_str(),
            v.score,
            v.transaction_id,
            v.card_id,
            tx.map_or(0.0, |t| t.amount),
            if fraud { "fraud" } else { "legit" },
            v.partition,
            reasons.join(", ")
        );
    })?;
    if !model.header.training.train_to.is_empty() {
        outln!(
            "\nnote: rows before {} were this model's training data; later ones are unseen",
            model.header.training.train_to
        );
    }
    outln!(
        "\n{} transactions (+{} labels) through Kafka in {:.1}s ({:.0}/s end to end): {} verdicts, {} review, {} decline; {} of {} frauds flagged",
        summary.sent.sent,
        summary.sent.labels,
        summary.seconds,
        summary.verdicts as f64 / summary.seconds.max(1e-9),
        summary.verdicts,
        summary.review,
        summary.decline,
        summary.caught,
        summary.frauds
    );
    Ok(())
}
