//! The Kafka-facing subcommands: `serve`, `config example`, `replay` and the embedded `demo`.
//! Like the rest of the CLI, they parse arguments and print; the work is in `vigil::serve` and
//! `vigil::stream`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use vigil::config::{self, Config, Loader};
use vigil::decision::Decision;
use vigil::offline::Reporter;
use vigil::record::format_timestamp;
use vigil::serve::{self, ServeOptions};
use vigil::shutdown::Shutdown;
use vigil::stream::replay::{self, ReplayOptions};
use vigil::stream::wire::VerdictRecord;

use crate::cli::{read_history, Bars, HistoryArgs, DEFAULT_DATA, DEFAULT_MODEL};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (`vigil config example` prints one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any configuration key: `--set kafka.producer.linger.ms=10` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Bootstrap servers (kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group (kafka.group).
    #[arg(long)]
    pub group: Option<String>,
    /// kafka.transactions_topic
    #[arg(long)]
    pub transactions_topic: Option<String>,
    /// kafka.alerts_topic
    #[arg(long)]
    pub alerts_topic: Option<String>,
    /// kafka.verdicts_topic (empty: none)
    #[arg(long)]
    pub verdicts_topic: Option<String>,
    /// kafka.dlq_topic
    #[arg(long)]
    pub dlq_topic: Option<String>,
    /// kafka.labels_topic (empty: none)
    #[arg(long)]
    pub labels_topic: Option<String>,
    /// Model file (model.path).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// host:port of /metrics, /healthz, /readyz (http.metrics_addr; empty: off).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Kafka transactions (kafka.exactly_once = true).
    #[arg(long)]
    pub exactly_once: bool,
    /// Serve the gRPC API alone, without a Kafka consumer (state for `--partitions`
    /// partitions; `--grpc-addr` defaults to 127.0.0.1:50051).
    #[arg(long)]
    pub no_kafka: bool,
    /// With --no-kafka: partitions of window state (as many as the transactions topic has, so
    /// that a card's state is where the Kafka path would put it; default: as many as the model
    /// was trained with, `vigil train --partitions`).
    #[arg(long, requires = "no_kafka")]
    pub partitions: Option<u32>,
    /// With --no-kafka: worker threads of the server runtime (default: one per core).
    #[arg(long, requires = "no_kafka")]
    pub threads: Option<usize>,
    /// Alerts buffered per StreamAlerts subscriber before a slow one starts skipping.
    #[arg(long, default_value_t = vigil::service::DEFAULT_ALERT_BUFFER)]
    pub alert_buffer: usize,
    /// The gRPC API (served when --grpc-addr is given, or with --no-kafka).
    #[command(flatten)]
    pub api: crate::api_cli::ApiArgs,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a commented configuration file with every key and its default.
    Example,
    /// Print the configuration `vigil serve` would use (file, environment and flags applied).
    Show(Box<ServeArgs>),
}

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

/// The configuration from `--config`, the environment and the flags.
pub fn serve_config(a: &ServeArgs) -> Result<Config> {
    let mut l = Loader::new();
    if let Some(path) = &a.config {
        l = l.file(path)?;
    }
    l = l.env(std::env::vars())?;
    for s in &a.set {
        l = l.assign(s, "--set")?;
    }
    let named = [
        ("kafka", "brokers", "--brokers", a.brokers.clone()),
        ("kafka", "group", "--group", a.group.clone()),
        (
            "kafka",
            "transactions_topic",
            "--transactions-topic",
            a.transactions_topic.clone(),
        ),
        (
            "kafka",
            "alerts_topic",
            "--alerts-topic",
            a.alerts_topic.clone(),
        ),
        (
            "kafka",
            "verdicts_topic",
            "--verdicts-topic",
            a.verdicts_topic.clone(),
        ),
        ("kafka", "dlq_topic", "--dlq-topic", a.dlq_topic.clone()),
        (
            "kafka",
            "labels_topic",
            "--labels-topic",
            a.labels_topic.clone(),
        ),
        (
            "model",
            "path",
            "--model",
            a.model.as_ref().map(|p| p.display().to_string()),
        ),
        (
            "http",
            "metrics_addr",
            "--metrics-addr",
            a.metrics_addr.clone(),
        ),
        (
            "kafka",
            "exactly_once",
            "--exactly-once",
            a.exactly_once.then(|| "true".to_string()),
        ),
    ];
    for (section, key, flag, value) in named {
        if let Some(v) = value {
            l = l.set(section, key, &v, flag)?;
        }
    }
    Ok(l.build()?)
}

pub fn cmd_serve(a: ServeArgs) -> Result<()> {
    if a.no_kafka {
        return crate::api_cli::cmd_serve_grpc_only(crate::api_cli::GrpcOnly {
            model: serve_config(&a)?.model.path,
            partitions: a.partitions,
            alert_buffer: a.alert_buffer,
            threads: a.threads,
            api: a.api.clone(),
        });
    }
    let cfg = serve_config(&a)?;
    let mut opts = ServeOptions::default();
    if a.api.grpc_addr.is_some() {
        opts.extra.push(crate::api_cli::grpc_task(a.api.clone())?);
    }
    serve::run(cfg, opts, Shutdown::new())
}

pub fn cmd_config(c: ConfigCommand) -> Result<()> {
    match c {
        ConfigCommand::Example => print!("{}", config::EXAMPLE),
        ConfigCommand::Show(a) => print!("{}", toml::to_string(&serve_config(&a)?)?),
    }
    Ok(())
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
    println!(
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

/// The whole pipeline on librdkafka's in-process mock cluster: a producer replays the history,
/// `vigil serve` scores it, alerts are printed as they arrive on the alerts topic.
pub fn cmd_demo(a: DemoArgs) -> Result<()> {
    let model = serve::load_model(&a.model)?;
    // Bound before anything else starts, so a busy port is reported first and plainly.
    let grpc = if a.grpc_addr.trim().is_empty() {
        None
    } else {
        Some(crate::api_cli::bind_grpc(a.grpc_addr.trim())?)
    };
    let bars = Bars::new();
    let history = read_history(&a.history, &bars)?;
    let txs = Arc::new(history.transactions);
    let mock = rdkafka::mocking::MockCluster::new(1).context("starting the mock Kafka cluster")?;
    let brokers = mock.bootstrap_servers();
    let partitions = a.partitions.unwrap_or(model.header.state_partitions).max(1) as i32;
    // librdkafka's mock cluster keeps at most 5 MB per partition and drops the oldest records
    // beyond that: the verdicts of the whole sample (~22 MB of JSON) are spread over enough
    // partitions that none is dropped before the watcher reads it.
    for (topic, n) in [
        ("transactions", partitions),
        ("alerts", partitions),
        ("verdicts", partitions.max(16)),
        ("transactions.dlq", 1),
        ("labels", 2),
    ] {
        mock.create_topic(topic, n, 1)
            .with_context(|| format!("creating topic {topic} on the mock cluster"))?;
    }
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.group = "vigil-demo".into();
    cfg.kafka.verdicts_topic = "verdicts".into();
    cfg.kafka.labels_topic = "labels".into();
    cfg.model.path = a.model.clone();
    cfg.http.metrics_addr = a.metrics_addr.clone();
    cfg.validate()
        .map_err(|(k, m)| anyhow::anyhow!("demo configuration: {k}: {m}"))?;
    println!(
        "vigil demo: mock Kafka cluster at {brokers}; replaying {} transactions from {} to `transactions`;\n\
         scoring with {} (review >= {:.3}, decline >= {:.3}); alerts (non-approve verdicts) below as they arrive{}\n",
        txs.len(),
        a.history.data.display(),
        model.name(),
        model.header.thresholds.review,
        model.header.thresholds.decline,
        if a.metrics_addr.is_empty() {
            String::new()
        } else {
            format!("; metrics on http://{}/metrics", a.metrics_addr)
        }
    );
    let mut opts = ServeOptions::default();
    if let Some(listener) = grpc {
        let local = listener
            .local_addr()
            .context("the gRPC listener has no address")?;
        println!(
            "gRPC API on {local}, sharing the Kafka path's scoring state (StreamAlerts carries the \
             alerts below); while the demo runs, try\n  {}\n",
            score_example(&local.to_string(), &txs)
        );
        opts.extra.push(crate::api_cli::grpc_task_on(
            listener,
            vigil::api::ApiSettings::default(),
        )?);
    }

    let shutdown = Shutdown::new();
    let producer = {
        let txs = Arc::clone(&txs);
        let opts = ReplayOptions {
            brokers: brokers.clone(),
            topic: "transactions".into(),
            labels_topic: Some("labels".into()),
            label_latency_ms: model.spec.label_latency_ms(),
            rate: a.rate,
            producer: Vec::new(),
            format: Default::default(),
        };
        let shutdown = shutdown.clone();
        std::thread::spawn(move || replay::replay(&txs, &opts, &shutdown, |_| {}))
    };
    let watcher = {
        let (brokers, shutdown, txs) = (brokers.clone(), shutdown.clone(), Arc::clone(&txs));
        let show = a.show;
        std::thread::spawn(move || watch_outputs(&brokers, &txs, show, &shutdown))
    };
    let started = Instant::now();
    let served = serve::run(cfg, opts, shutdown.clone());
    shutdown.trigger();
    let sent = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the demo producer panicked"))??;
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the demo alert printer panicked"))??;
    served?;
    let secs = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if !model.header.training.train_to.is_empty() {
        writeln!(
            out,
            "\nnote: rows before {} were this model's training data; later ones are unseen",
            model.header.training.train_to
        )?;
    }
    writeln!(
        out,
        "\n{} transactions (+{} labels) through Kafka in {:.1}s ({:.0}/s end to end): {} verdicts, {} review, {} decline; {} of {} frauds flagged",
        sent.sent,
        sent.labels,
        secs,
        seen.verdicts as f64 / secs.max(1e-9),
        seen.verdicts,
        seen.review,
        seen.decline,
        seen.caught,
        seen.frauds
    )?;
    if seen.verdicts < txs.len() as u64 {
        bail!(
            "only {} of {} transactions got a verdict",
            seen.verdicts,
            txs.len()
        );
    }
    Ok(())
}

/// A ready-to-paste `vigil score` call for the demo's API: the history's busiest card, a minute
/// after its last transaction before two thirds of the history's time span. From the time the
/// replay gets within a month of that moment until the end, the card's windows at that time hold
/// transactions, so the call shows state the Kafka path built. A dry run: scored from that
/// state, recorded nowhere (recorded, a transaction timed ahead of the replay would make its
/// partition's later records late).
fn score_example(addr: &str, txs: &[vigil::record::Transaction]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in txs {
        *counts.entry(t.card_id.as_str()).or_default() += 1;
    }
    let busiest = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(card, _)| card);
    let (first, end) = txs.iter().fold((i64::MAX, i64::MIN), |(lo, hi), t| {
        (lo.min(t.timestamp_ms), hi.max(t.timestamp_ms))
    });
    let at = first.saturating_add(end.saturating_sub(first) / 3 * 2);
    let last = busiest.and_then(|c| {
        let card = || txs.iter().filter(move |t| t.card_id == c);
        card()
            .filter(|t| t.timestamp_ms <= at)
            .max_by_key(|t| t.timestamp_ms)
            .or_else(|| card().min_by_key(|t| t.timestamp_ms))
    });
    // Written out field by field to keep the record's order (ids, time, amount, context).
    let text = |v: &str| serde_json::Value::from(v).to_string();
    let json = match last {
        Some(t) => format!(
            r#"{{"transaction_id":"demo-try-1","timestamp":{},"card_id":{},"merchant_id":{},"amount":950.0{}}}"#,
            text(&format_timestamp(t.timestamp_ms.saturating_add(60_000))),
            text(&t.card_id),
            text(&t.merchant_id),
            t.country
                .as_deref()
                .map_or(String::new(), |c| format!(r#","country":{}"#, text(c)))
        ),
        None => r#"{"transaction_id":"demo-try-1","timestamp":"2018-06-20T10:00:00Z","card_id":"c1","merchant_id":"m1","amount":950.0}"#.to_string(),
    };
    // Single-quoted for the shell: a quote inside ends the quoting, is escaped, and reopens it.
    let quoted = json.replace('\'', r"'\''");
    format!("vigil score --addr {addr} --dry-run --features '{quoted}'")
}

#[derive(Default)]
struct Seen {
    verdicts: u64,
    review: u64,
    decline: u64,
    caught: u64,
    frauds: u64,
}

/// Prints alerts as they arrive and counts verdicts; stops the demo when every transaction has
/// one (or after a generous time-out).
fn watch_outputs(
    brokers: &str,
    txs: &[vigil::record::Transaction],
    show: usize,
    shutdown: &Shutdown,
) -> Result<Seen> {
    let by_id: HashMap<&str, &vigil::record::Transaction> =
        txs.iter().map(|t| (t.transaction_id.as_str(), t)).collect();
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "vigil-demo-watch")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("demo watcher consumer")?;
    consumer
        .subscribe(&["verdicts"])
        .context("subscribing to verdicts")?;
    let mut seen = Seen::default();
    let mut ids: HashSet<String> = HashSet::new();
    let mut shown = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut out = std::io::stdout();
    while ids.len() < txs.len() && Instant::now() < deadline && !shutdown.is_triggered() {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<VerdictRecord>(p).ok())
        else {
            continue;
        };
        if !ids.insert(v.transaction_id.clone()) {
            continue;
        }
        seen.verdicts += 1;
        let tx = by_id.get(v.transaction_id.as_str());
        let fraud = tx.is_some_and(|t| t.label == Some(true));
        seen.frauds += u64::from(fraud);
        match v.decision {
            Decision::Approve => continue,
            Decision::Review => seen.review += 1,
            Decision::Decline => seen.decline += 1,
        }
        seen.caught += u64::from(fraud);
        if shown < show {
            shown += 1;
            let reasons: Vec<String> = v
                .reasons
                .iter()
                .map(|r| format!("{}={:.4} (+{:.3})", r.feature, r.value, r.contribution))
                .collect();
            let _ = writeln!(
                out,
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
        }
    }
    shutdown.trigger();
    Ok(seen)
}
