//! The gRPC subcommands: `serve --no-kafka` (the API alone), `score` (call a server with one
//! transaction) and `load-grpc` (the Score load generator). Self-contained so that the Kafka
//! `serve` can take [`ApiArgs`] as they are.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use vigil::api::client::ClientOptions;
use vigil::api::load::{LoadOptions, RequestStream};
use vigil::api::{self, convert, pb, ApiConfig, ApiSettings, CoreSlot};
use vigil::model;
use vigil::record::{self, format_timestamp, RawTransaction, ReadOptions};
use vigil::service::ScoringCore;

/// The gRPC API's flags (each is also an `[grpc]` key of the service config: the flag minus
/// `--grpc-`, dashes as underscores; and an environment variable: `VIGIL_` and the flag in
/// capitals, e.g. `VIGIL_GRPC_MAX_BATCH`).
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address the gRPC API listens on (HOST:PORT; port 0 picks a free one). With Kafka the
    /// API is served only when this is given; with --no-kafka it defaults to 127.0.0.1:50051.
    #[arg(long, env = "VIGIL_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Server certificate chain (PEM): serve TLS only.
    #[arg(long, env = "VIGIL_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "VIGIL_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to: mutual TLS.
    #[arg(long, env = "VIGIL_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens, one per line (`#` comments): calls without one are refused.
    #[arg(long, env = "VIGIL_GRPC_TOKEN_FILE")]
    pub grpc_token_file: Option<PathBuf>,
    /// Name of an environment variable holding bearer tokens, comma-separated.
    #[arg(long, env = "VIGIL_GRPC_TOKENS_ENV")]
    pub grpc_tokens_env: Option<String>,
    /// Largest request or response message, bytes.
    #[arg(long, env = "VIGIL_GRPC_MAX_MESSAGE_BYTES", default_value_t = ApiConfig::default().max_message_bytes)]
    pub grpc_max_message_bytes: usize,
    /// Unary calls in progress at once (more wait for a slot until their deadline).
    #[arg(long, env = "VIGIL_GRPC_MAX_CONCURRENT_REQUESTS", default_value_t = ApiConfig::default().max_concurrent_requests)]
    pub grpc_max_concurrent_requests: usize,
    /// How long a call without a deadline waits for a slot, ms.
    #[arg(long, env = "VIGIL_GRPC_QUEUE_TIMEOUT_MS", default_value_t = ApiConfig::default().queue_timeout_ms)]
    pub grpc_queue_timeout_ms: u64,
    /// Longest any call may take, ms (applies without a client deadline, caps a longer one).
    #[arg(long, env = "VIGIL_GRPC_REQUEST_TIMEOUT_MS", default_value_t = ApiConfig::default().request_timeout_ms)]
    pub grpc_request_timeout_ms: u64,
    /// Most transactions in one ScoreBatch call.
    #[arg(long, env = "VIGIL_GRPC_MAX_BATCH", default_value_t = ApiConfig::default().max_batch)]
    pub grpc_max_batch: usize,
    /// Most StreamAlerts subscribers at once.
    #[arg(long, env = "VIGIL_GRPC_MAX_ALERT_SUBSCRIBERS", default_value_t = ApiConfig::default().max_alert_subscribers)]
    pub grpc_max_alert_subscribers: usize,
}

impl ApiArgs {
    pub fn config(&self) -> ApiConfig {
        ApiConfig {
            addr: self.addr(),
            tls_cert: self.grpc_tls_cert.clone(),
            tls_key: self.grpc_tls_key.clone(),
            tls_client_ca: self.grpc_tls_client_ca.clone(),
            token_file: self.grpc_token_file.clone(),
            tokens_env: self.grpc_tokens_env.clone(),
            max_message_bytes: self.grpc_max_message_bytes,
            max_concurrent_requests: self.grpc_max_concurrent_requests,
            queue_timeout_ms: self.grpc_queue_timeout_ms,
            request_timeout_ms: self.grpc_request_timeout_ms,
            max_batch: self.grpc_max_batch,
            max_alert_subscribers: self.grpc_max_alert_subscribers,
        }
    }

    /// The listen address (the default when none was given).
    pub fn addr(&self) -> String {
        self.grpc_addr
            .clone()
            .unwrap_or_else(|| api::config::DEFAULT_ADDR.to_string())
    }

    /// The checked settings; an error names the flag.
    pub fn settings(&self) -> Result<ApiSettings> {
        self.config()
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {}", e.flag(), e.message))
    }
}

/// `vigil serve --no-kafka`: the gRPC API alone.
pub struct GrpcOnly {
    pub model: PathBuf,
    /// Partitions of window state; `None`: as many as the model was trained with.
    pub partitions: Option<u32>,
    pub alert_buffer: usize,
    pub threads: Option<usize>,
    pub api: ApiArgs,
}

/// The gRPC server as an extra task of the Kafka `vigil serve` (same core, same shutdown).
pub fn grpc_task(api_args: ApiArgs) -> Result<vigil::serve::ExtraTask> {
    let settings = api_args.settings()?;
    let addr = api_args.addr();
    Ok(Box::new(move |core, shutdown| {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("--grpc-addr {addr}: cannot listen"))?;
            serve_on(core, settings, listener, shutdown, true).await
        })
    }))
}

/// Binds the gRPC address at once, so that a busy port stops the command before anything else
/// starts, with a message that says what to do about it.
pub fn bind_grpc(addr: &str) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (is another vigil serving there?)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "--grpc-addr {addr}: cannot listen: {e}{hint}; pick another address \
             (`--grpc-addr 127.0.0.1:0` takes a free port) or turn the gRPC API off with \
             `--grpc-addr ''`"
        )
    })
}

/// The gRPC server on a listener bound beforehand (see [`bind_grpc`]), as an extra task:
/// same core, same shutdown. Prints nothing; the caller announced the address.
pub fn grpc_task_on(
    listener: std::net::TcpListener,
    settings: ApiSettings,
) -> Result<vigil::serve::ExtraTask> {
    listener
        .set_nonblocking(true)
        .context("gRPC listener: cannot make it non-blocking")?;
    Ok(Box::new(move |core, shutdown| {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("gRPC listener: cannot hand it to the runtime")?;
            serve_on(core, settings, listener, shutdown, false).await
        })
    }))
}

async fn serve_on(
    core: Arc<ScoringCore>,
    settings: ApiSettings,
    listener: tokio::net::TcpListener,
    shutdown: vigil::shutdown::Shutdown,
    announce: bool,
) -> Result<()> {
    let local = listener.local_addr()?;
    if announce {
        eprintln!("gRPC API listening on {local}");
    }
    if settings.tokens.is_empty() && !local.ip().is_loopback() {
        tracing::warn!("the gRPC API accepts calls from the network without authentication");
    }
    api::serve(CoreSlot::with(core), settings, listener, async move {
        shutdown.wait().await
    })
    .await
    .context("gRPC server stopped")?;
    Ok(())
}

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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub fn cmd_serve_grpc_only(a: GrpcOnly) -> Result<()> {
    if a.partitions == Some(0) {
        bail!("--partitions must be at least 1");
    }
    let settings = a.api.settings()?;
    let rt = runtime(a.threads)?;
    rt.block_on(async move {
        let addr = a.api.addr();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("--grpc-addr {addr}: cannot listen"))?;
        let local = listener.local_addr()?;
        let tls = if settings.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        };
        let auth = if settings.tokens.is_empty() {
            "no authentication".to_string()
        } else {
            format!("{} bearer token(s)", settings.tokens.len())
        };
        eprintln!("gRPC API listening on {local} ({tls}, {auth}); loading the model");
        if settings.tokens.is_empty() && !local.ip().is_loopback() {
            tracing::warn!("the gRPC API accepts calls from the network without authentication");
        }
        let slot = CoreSlot::empty();
        let server = tokio::spawn(api::serve(
            slot.clone(),
            settings,
            listener,
            shutdown_signal(),
        ));
        let path = a.model.clone();
        let model = tokio::task::spawn_blocking(move || model::load(&path, None))
            .await
            .context("model loading task failed")?
            .with_context(|| format!("cannot use model {}", a.model.display()))?;
        let name = model.name();
        let partitions = a.partitions.unwrap_or(model.header.state_partitions).max(1);
        vigil::serve::warn_on_partition_mismatch(&model, partitions);
        slot.set(Arc::new(ScoringCore::new(
            Arc::new(model),
            partitions,
            a.alert_buffer,
        )));
        eprintln!("serving model {name} with {partitions} partition(s) on {local}");
        server
            .await
            .context("gRPC server task failed")?
            .context("gRPC server stopped")?;
        eprintln!("gRPC API stopped");
        Ok(())
    })
}

/// Client-side connection flags.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Server address: HOST:PORT or http(s)://HOST:PORT.
    #[arg(long, env = "VIGIL_GRPC_ADDR", default_value = api::config::DEFAULT_ADDR)]
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
        let t =
            convert::raw_to_pb(raw).map_err(|e| anyhow::anyhow!("transaction {}: {e}", i + 1))?;
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
        .and_then(|v| {
            convert::verdict_from_pb(v).map_err(|e| anyhow::anyhow!("bad verdict: {e}"))
        })?;
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
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let rate = if a.rate > 0.0 {
            format!("{} req/s", a.rate)
        } else {
            "max".to_string()
        };
        println!(
            "rate {rate}, concurrency {}, connections {}, {:.0}s measured after {:.0}s warm-up",
            a.concurrency, a.connections, a.duration, a.warmup
        );
        println!(
            "ok {} errors {}  throughput {:.0} req/s  (approve {}, review {}, decline {})",
            report.ok,
            report.errors,
            report.throughput,
            report.approve,
            report.review,
            report.decline
        );
        let l = &report.latency_us;
        println!(
            "latency us: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if a.rate > 0.0 {
            let s = &report.schedule_lag_us;
            println!(
                "schedule lag us (send time behind due time): p50 {:.0}  p99 {:.0}  max {:.0}",
                s.p50, s.p99, s.max
            );
        }
        println!("calls answered including warm-up: {}", report.total_calls);
        for e in &report.error_samples {
            println!("error: {e}");
        }
    }
    if report.ok == 0 {
        bail!("no call succeeded");
    }
    Ok(())
}
