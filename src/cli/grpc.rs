//! The gRPC clients: `score` (call a server with transactions and print the verdicts) and
//! `load-grpc` (the Score load generator). The server side is `vigil serve` (`cli/serve.rs`).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use vigil::api::client::ClientOptions;
use vigil::api::load::{LoadOptions, RequestStream};
use vigil::api::{self};
use vigil::proto::{self as pb, codec};
use vigil::record::{self, format_timestamp, RawTransaction, ReadOptions};

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Client-side connection flags.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Server address: HOST:PORT or http(s)://HOST:PORT.
    #[arg(long, env = "VIGIL_ADDR", default_value = api::config::DEFAULT_ADDR)]
    pub addr: String,
    /// Bearer token.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (its first non-comment line).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server with (turns TLS on).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name expected in the server certificate (default: the address's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// Deadline of each call, ms.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

impl ConnectArgs {
    fn options(&self) -> Result<ClientOptions> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}: cannot read", path.display()))?;
                let token = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .with_context(|| format!("--token-file {}: no token in it", path.display()))?;
                Some(token.to_string())
            }
            (None, None) => None,
        };
        Ok(ClientOptions {
            addr: self.addr.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_domain: self.tls_domain.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
            token,
            connect_timeout: Some(Duration::from_millis(self.timeout_ms.max(1))),
        })
    }
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The transaction as a JSON object (the README's record fields). Without it, JSON objects
    /// are read from stdin, one per line.
    pub json: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Score without adding the transaction to the state.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the feature vector too.
    #[arg(long)]
    pub features: bool,
    /// Print each response as one JSON object.
    #[arg(long)]
    pub json_output: bool,
}

pub fn cmd_score(a: ScoreArgs) -> Result<()> {
    let inputs: Vec<String> = match &a.json {
        Some(j) => vec![j.clone()],
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read stdin")?;
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        }
    };
    if inputs.is_empty() {
        bail!("no transaction: give one as an argument or as JSON lines on stdin");
    }
    let mut requests = Vec::with_capacity(inputs.len());
    for (i, line) in inputs.iter().enumerate() {
        let raw: RawTransaction = serde_json::from_str(line)
            .with_context(|| format!("transaction {}: not a JSON transaction", i + 1))?;
        let t = codec::raw_to_pb(raw).map_err(|e| anyhow::anyhow!("transaction {}: {e}", i + 1))?;
        requests.push(pb::ScoreRequest {
            transaction: Some(t),
            dry_run: a.dry_run,
            include_features: a.features,
        });
    }
    let opts = a.connect.options()?;
    let timeout = Duration::from_millis(a.connect.timeout_ms.max(1));
    runtime(Some(1))?.block_on(async move {
        let mut client = opts.connect().await?;
        for req in requests {
            let mut req = tonic::Request::new(req);
            req.set_timeout(timeout);
            let resp = client.score(req).await.map_err(|s| {
                anyhow::anyhow!(
                    "the server refused the call: {:?}: {}",
                    s.code(),
                    s.message()
                )
            })?;
            print_response(resp.into_inner(), a.json_output)?;
        }
        Ok(())
    })
}

fn placement_name(p: i32) -> &'static str {
    match pb::Placement::try_from(p) {
        Ok(pb::Placement::InOrder) => "in order",
        Ok(pb::Placement::Late) => "late",
        Ok(pb::Placement::TooLate) => "too late",
        Ok(pb::Placement::Duplicate) => "duplicate (already counted)",
        Ok(pb::Placement::NotRecorded) => "dry run (not recorded)",
        _ => "unknown",
    }
}

fn print_response(r: pb::ScoreResponse, json: bool) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::new();
    let v = r
        .verdict
        .context("the server answered without a verdict")
        .and_then(|v| codec::verdict_from_pb(v).map_err(|e| anyhow::anyhow!("bad verdict: {e}")))?;
    if json {
        let features: serde_json::Map<String, serde_json::Value> = r
            .features
            .iter()
            .map(|f| (f.name.clone(), serde_json::json!(f.value)))
            .collect();
        let mut out = serde_json::json!({
            "verdict": v,
            "placement": placement_name(r.placement),
            "partition": r.partition,
        });
        if !features.is_empty() {
            out["features"] = serde_json::Value::Object(features);
        }
        let _ = writeln!(text, "{out}");
        return write_stdout(&text);
    }
    let _ = writeln!(
        text,
        "{} score {:.4}  tx {} card {} merchant {} at {}",
        v.decision.as_str(),
        v.score,
        v.transaction_id,
        v.card_id,
        v.merchant_id,
        format_timestamp(v.event_time_ms)
    );
    for reason in &v.reasons {
        let _ = writeln!(
            text,
            "  because {} = {:.4} (+{:.3})",
            reason.feature, reason.value, reason.contribution
        );
    }
    let _ = writeln!(
        text,
        "  model {}@{}, partition {}, {}",
        v.model_id,
        v.model_version,
        r.partition,
        placement_name(r.placement)
    );
    for f in &r.features {
        let _ = writeln!(text, "  feature {} = {}", f.name, f.value);
    }
    write_stdout(&text)
}

/// Writes to stdout; a reader that went away (`vigil score ... | head`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing the verdict to stdout"))
        }
        _ => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// History whose rows make the requests (replayed in passes with shifted timestamps).
    #[arg(long, default_value = "data/sample.csv")]
    pub data: PathBuf,
    /// Requests per second (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds sent first and not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_load(a: LoadArgs) -> Result<()> {
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        bail!("--rate {}: expected a number >= 0", a.rate);
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        bail!("--duration {}: expected seconds > 0", a.duration);
    }
    if !(a.warmup >= 0.0 && a.warmup.is_finite()) {
        bail!("--warmup {}: expected seconds >= 0", a.warmup);
    }
    if a.concurrency == 0 || a.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    let history = record::read_history(&a.data, ReadOptions::default())
        .with_context(|| format!("--data {}", a.data.display()))?;
    let stream = Arc::new(RequestStream::new(history.transactions));
    if stream.is_empty() {
        bail!("--data {}: no transactions", a.data.display());
    }
    let opts = a.connect.options()?;
    let load = LoadOptions {
        rate: (a.rate > 0.0).then_some(a.rate),
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        concurrency: a.concurrency,
        timeout: Duration::from_millis(a.connect.timeout_ms.max(1)),
    };
    let report = runtime(Some(a.threads))?.block_on(async move {
        let mut clients = Vec::with_capacity(a.connections);
        for _ in 0..a.connections {
            clients.push(opts.connect().await?);
        }
        anyhow::Ok(api::load::run(clients, stream, load).await)
    })?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let rate = if a.rate > 0.0 {
            format!("{} req/s", a.rate)
        } else {
            "max".to_string()
        };
        outln!(
            "rate {rate}, concurrency {}, connections {}, {:.0}s measured after {:.0}s warm-up",
            a.concurrency,
            a.connections,
            a.duration,
            a.warmup
        );
        outln!(
            "ok {} errors {}  throughput {:.0} req/s  (approve {}, review {}, decline {})",
            report.ok,
            report.errors,
            report.throughput,
            report.approve,
            report.review,
            report.decline
        );
        let l = &report.latency_us;
        outln!(
            "latency us: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        if a.rate > 0.0 {
            let s = &report.schedule_lag_us;
            outln!(
                "schedule lag us (send time behind due time): p50 {:.0}  p99 {:.0}  max {:.0}",
                s.p50,
                s.p99,
                s.max
            );
        }
        outln!("calls answered including warm-up: {}", report.total_calls);
        for e in &report.error_samples {
            outln!("error: {e}");
        }
    }
    if report.ok == 0 {
        bail!("no call succeeded");
    }
    Ok(())
}
