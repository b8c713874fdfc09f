//! `vigil serve` and `vigil config example|show`. The flags are one layer of the one
//! configuration (`vigil::serve::config`): file (`--config`), then `VIGIL_<SECTION>__<KEY>`,
//! then `--set section.key=value`, then the named flags below, each naming its key in errors.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use vigil::config::Loader;
use vigil::serve::config::{Config, EXAMPLE};
use vigil::serve::{BindError, Listener, Server};
use vigil::shutdown::Shutdown;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML configuration file (`vigil config example` prints one with every key).
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
    /// Directory of the partition state snapshots (state.dir; default: <temp dir>/vigil-state).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Kafka transactions (kafka.exactly_once = true).
    #[arg(long)]
    pub exactly_once: bool,
    /// Serve the gRPC API alone, without a Kafka consumer (kafka.enabled = false,
    /// grpc.enabled = true; state for --partitions partitions).
    #[arg(long)]
    pub no_kafka: bool,
    /// With --no-kafka: partitions of window state (scoring.partitions; as many as the
    /// transactions topic has, so that a card's state is where the Kafka path would put it;
    /// default: as many as the model was trained with, `vigil train --partitions`).
    #[arg(long, requires = "no_kafka")]
    pub partitions: Option<u32>,
    /// Worker threads of the runtime serving gRPC and HTTP (grpc.threads; default: one per
    /// core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Alerts buffered per StreamAlerts subscriber before a slow one starts skipping
    /// (scoring.alert_buffer).
    #[arg(long)]
    pub alert_buffer: Option<usize>,
    /// The gRPC API (served when --grpc-addr is given, or with --no-kafka).
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The gRPC API's flags: each is the `[grpc]` key of the same name without `--grpc-`
/// (`--grpc-max-batch` is `grpc.max_batch`, also `VIGIL_GRPC__MAX_BATCH`).
#[derive(Args, Debug, Clone, Default)]
pub struct ApiArgs {
    /// Address the gRPC API listens on (HOST:PORT; port 0 picks a free one); turns the API on
    /// (grpc.enabled). Default with --no-kafka: 127.0.0.1:50051.
    #[arg(long)]
    pub grpc_addr: Option<String>,
    /// Server certificate chain (PEM): serve TLS only.
    #[arg(long, requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to: mutual TLS.
    #[arg(long, requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens, one per line (`#` comments): calls without one are refused.
    #[arg(long)]
    pub grpc_token_file: Option<PathBuf>,
    /// Name of an environment variable holding bearer tokens, comma-separated.
    #[arg(long)]
    pub grpc_tokens_env: Option<String>,
    /// Largest request or response message, bytes.
    #[arg(long)]
    pub grpc_max_message_bytes: Option<usize>,
    /// Unary calls in progress at once (more wait for a slot until their deadline).
    #[arg(long)]
    pub grpc_max_concurrent_requests: Option<usize>,
    /// How long a call without a deadline waits for a slot, ms.
    #[arg(long)]
    pub grpc_queue_timeout_ms: Option<u64>,
    /// Longest any call may take, ms (applies without a client deadline, caps a longer one).
    #[arg(long)]
    pub grpc_request_timeout_ms: Option<u64>,
    /// Most transactions in one ScoreBatch call.
    #[arg(long)]
    pub grpc_max_batch: Option<usize>,
    /// Most StreamAlerts subscribers at once.
    #[arg(long)]
    pub grpc_max_alert_subscribers: Option<usize>,
}

impl ApiArgs {
    /// `(key, flag, value)` of every gRPC flag given.
    fn keys(&self) -> Vec<(&'static str, &'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let num = |n: Option<u64>| n.map(|n| n.to_string());
        let size = |n: Option<usize>| n.map(|n| n.to_string());
        [
            ("addr", "--grpc-addr", self.grpc_addr.clone()),
            ("tls_cert", "--grpc-tls-cert", path(&self.grpc_tls_cert)),
            ("tls_key", "--grpc-tls-key", path(&self.grpc_tls_key)),
            (
                "tls_client_ca",
                "--grpc-tls-client-ca",
                path(&self.grpc_tls_client_ca),
            ),
            (
                "token_file",
                "--grpc-token-file",
                path(&self.grpc_token_file),
            ),
            (
                "tokens_env",
                "--grpc-tokens-env",
                self.grpc_tokens_env.clone(),
            ),
            (
                "max_message_bytes",
                "--grpc-max-message-bytes",
                size(self.grpc_max_message_bytes),
            ),
            (
                "max_concurrent_requests",
                "--grpc-max-concurrent-requests",
                size(self.grpc_max_concurrent_requests),
            ),
            (
                "queue_timeout_ms",
                "--grpc-queue-timeout-ms",
                num(self.grpc_queue_timeout_ms),
            ),
            (
                "request_timeout_ms",
                "--grpc-request-timeout-ms",
                num(self.grpc_request_timeout_ms),
            ),
            ("max_batch", "--grpc-max-batch", size(self.grpc_max_batch)),
            (
                "max_alert_subscribers",
                "--grpc-max-alert-subscribers",
                size(self.grpc_max_alert_subscribers),
            ),
        ]
        .into_iter()
        .filter_map(|(key, flag, v)| v.map(|v| (key, flag, v)))
        .collect()
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a commented configuration file with every key and its default.
    Example,
    /// Print the configuration `vigil serve` would use with these flags (file, environment
    /// and flags applied; secrets redacted).
    Show(Box<ServeArgs>),
}

/// The configuration from `--config`, the environment and the flags, in that order.
pub fn serve_config(a: &ServeArgs) -> Result<Config> {
    let mut l = Loader::<Config>::new();
    if let Some(path) = &a.config {
        l = l.file(path)?;
    }
    l = l.env(std::env::vars())?;
    for s in &a.set {
        l = l.assign(s, "--set")?;
    }
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let flag = |on: bool| on.then(|| "true".to_string());
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
            "kafka",
            "exactly_once",
            "--exactly-once",
            flag(a.exactly_once),
        ),
        (
            "kafka",
            "enabled",
            "--no-kafka",
            a.no_kafka.then(|| "false".into()),
        ),
        ("grpc", "enabled", "--no-kafka", flag(a.no_kafka)),
        (
            "grpc",
            "enabled",
            "--grpc-addr",
            flag(a.api.grpc_addr.is_some()),
        ),
        ("model", "path", "--model", path(&a.model)),
        ("state", "dir", "--state-dir", path(&a.state_dir)),
        (
            "http",
            "metrics_addr",
            "--metrics-addr",
            a.metrics_addr.clone(),
        ),
        (
            "scoring",
            "partitions",
            "--partitions",
            a.partitions.map(|n| n.to_string()),
        ),
        (
            "scoring",
            "alert_buffer",
            "--alert-buffer",
            a.alert_buffer.map(|n| n.to_string()),
        ),
        (
            "grpc",
            "threads",
            "--threads",
            a.threads.map(|n| n.to_string()),
        ),
    ];
    for (section, key, flag, value) in named {
        if let Some(v) = value {
            l = l.set(section, key, &v, flag)?;
        }
    }
    for (key, flag, value) in a.api.keys() {
        l = l.set("grpc", key, &value, flag)?;
    }
    Ok(l.build()?)
}

pub fn cmd_serve(a: ServeArgs) -> Result<()> {
    let cfg = serve_config(&a)?;
    let server = Server::bind(cfg).map_err(|e| {
        if let Some(b) = e.downcast_ref::<BindError>() {
            return bind_error(b, "--grpc-addr", "--metrics-addr", false);
        }
        match e.downcast::<vigil::api::ConfigError>() {
            // Read at start (token files, TLS material): named as key and flag.
            Ok(c) => anyhow::anyhow!("grpc.{} ({}): {}", c.key, c.flag(), c.message),
            Err(e) => e,
        }
    })?;
    if let (Some(addr), Some(security)) = (server.grpc_addr(), server.grpc_security()) {
        errln!("gRPC API listening on {addr} ({security})");
    }
    server.run(Shutdown::new())
}

/// A listener that could not be bound, in the words of the command's flags. `grpc_off` says
/// whether `--grpc-addr ''` turns the API off for this command (the demo's does).
pub fn bind_error(
    e: &BindError,
    grpc_flag: &str,
    http_flag: &str,
    grpc_off: bool,
) -> anyhow::Error {
    let (flag, off) = match e.listener {
        Listener::Grpc => (grpc_flag, grpc_off.then_some("turn the gRPC API off")),
        Listener::Http => (http_flag, Some("turn the HTTP endpoints off")),
    };
    let busy = if e.source.kind() == std::io::ErrorKind::AddrInUse {
        " (is another vigil serving there?)"
    } else {
        ""
    };
    let off = off.map_or(String::new(), |what| format!(" or {what} with `{flag} ''`"));
    anyhow::anyhow!(
        "{flag} {addr}: cannot listen: {source}{busy}; pick another address (`{flag} \
         127.0.0.1:0` takes a free port){off}",
        addr = e.addr,
        source = e.source,
    )
}

pub fn cmd_config(c: ConfigCommand) -> Result<()> {
    match c {
        ConfigCommand::Example => out!("{EXAMPLE}"),
        ConfigCommand::Show(a) => out!("{}", serve_config(&a)?.to_toml_redacted()?),
    }
    Ok(())
}
