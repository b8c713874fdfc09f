//! `vigil replay`: a history file produced to a Kafka topic in event-time order, optionally at a
//! fixed rate (the demo's producer and the Kafka benchmark's load generator too).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use vigil::offline::Reporter;
use vigil::shutdown::Shutdown;
use vigil::stream::replay::{self, ReplayOptions};

use super::offline::{read_history, HistoryArgs, DEFAULT_DATA};
use super::progress::Bars;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// History CSV to produce, in event-time order.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// Count and skip invalid rows instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic to produce to.
    #[arg(long, default_value = "transactions")]
    pub topic: String,
    /// Records per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Encoding of the transactions: json, or protobuf (vigil.v1.Transaction; the scorer needs
    /// `kafka.input_format = "protobuf"`).
    #[arg(long, default_value = "json", value_parser = ["json", "protobuf"])]
    pub format: String,
    /// Also produce each row's label to this topic when it becomes known.
    #[arg(long)]
    pub labels_topic: Option<String>,
    /// Create the topics first if missing, with this many partitions.
    #[arg(long)]
    pub create_partitions: Option<u32>,
    /// Produce only the first N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// librdkafka producer property (repeatable): `-X compression.type=lz4`.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub producer: Vec<String>,
}

fn properties(list: &[String]) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("-X `{s}`: expected a librdkafka property as key=value"),
        })
        .collect()
}

pub fn cmd_replay(a: ReplayArgs) -> Result<()> {
    let bars = Bars::new();
    let mut history = read_history(
        &HistoryArgs {
            data: a.data.clone(),
            skip_invalid: a.skip_invalid,
            // Replaying forwards history as it is; the scorer judges each record's time.
            max_future_skew: "0s".into(),
        },
        &bars,
    )?;
    if let Some(n) = a.limit {
        history.transactions.truncate(n);
    }
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate {r}: expected a positive number of records per second");
        }
    }
    if let Some(p) = a.create_partitions {
        let mut topics = vec![a.topic.as_str()];
        topics.extend(a.labels_topic.as_deref());
        vigil::stream::kafka::ensure_topics(&a.brokers, &topics, p.max(1))?;
    }
    let opts = ReplayOptions {
        brokers: a.brokers.clone(),
        topic: a.topic.clone(),
        labels_topic: a.labels_topic.clone(),
        label_latency_ms: vigil::features::parse_duration("7d").unwrap_or(0),
        rate: a.rate,
        producer: properties(&a.producer)?,
        format: vigil::stream::wire::InputFormat::parse(&a.format).unwrap_or_default(),
    };
    let shutdown = Shutdown::new();
    let n = history.transactions.len() as u64;
    bars.stage("replay", n);
    let summary = replay::replay(&history.transactions, &opts, &shutdown, |sent| {
        bars.progress(sent)
    })?;
    bars.finish();
    outln!(
        "sent {} records to {} in {:.1}s ({:.0}/s): {} acknowledged, {} failed{}",
        summary.sent,
        a.topic,
        summary.seconds,
        summary.sent as f64 / summary.seconds.max(1e-9),
        summary.acknowledged,
        summary.failed,
        if summary.labels > 0 {
            format!(
                "; {} labels to {}",
                summary.labels,
                a.labels_topic.as_deref().unwrap_or("")
            )
        } else {
            String::new()
        }
    );
    if summary.failed > 0 || summary.acknowledged < summary.sent {
        bail!(
            "{} records were not acknowledged by the broker",
            summary.sent - summary.acknowledged
        );
    }
    Ok(())
}
