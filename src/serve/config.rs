//! The one configuration of `vigil serve` (and `vigil config example|show`): every component's
//! table in one file, layered by [`crate::config::Loader`] (file, `VIGIL_<SECTION>__<KEY>`,
//! flags). Each table is defined and checked by its component:
//!
//! | table | type | component |
//! |---|---|---|
//! | `[kafka]`, `[pipeline]` | [`KafkaConfig`], [`PipelineConfig`] | [`crate::stream`] |
//! | `[grpc]` | [`ApiConfig`] | [`crate::api`] |
//! | `[scoring]` | [`ScoringConfig`] | [`crate::scoring`] |
//! | `[state]` | [`StateConfig`] | [`crate::state`] |
//! | `[model]`, `[http]` | [`ModelConfig`], [`HttpConfig`] | this module (the serving process) |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::ApiConfig;
use crate::config::{check_duration, duration, KeyError, Layered};
use crate::scoring::ScoringConfig;
use crate::state::StateConfig;
use crate::stream::config::{KafkaConfig, PipelineConfig, StreamConfig};

pub use crate::config::{ConfigError, Loader};

/// The model a serving process loads unless told otherwise (relative to the working directory).
pub const DEFAULT_MODEL: &str = "models/default.vgm";

/// The whole `vigil serve` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub pipeline: PipelineConfig,
    pub grpc: ApiConfig,
    pub scoring: ScoringConfig,
    pub state: StateConfig,
    pub model: ModelConfig,
    pub http: HttpConfig,
}

impl Layered for Config {
    fn passthrough(section: &str, key: &str) -> bool {
        section == "kafka" && (key == "consumer" || key == "producer")
    }

    fn validate(&self) -> Result<(), KeyError> {
        self.stream().validate()?;
        self.grpc.validate().map_err(|e| e.key_error())?;
        self.scoring.validate().map_err(|e| e.under("scoring"))?;
        self.state.validate().map_err(|e| e.under("state"))?;
        self.model.validate().map_err(|e| e.under("model"))?;
        self.http.validate().map_err(|e| e.under("http"))?;
        if !self.kafka.enabled && !self.grpc.enabled {
            return Err(KeyError::new(
                "kafka.enabled",
                "is false and so is grpc.enabled: nothing to serve (turn one on, e.g. \
                 --grpc-addr 127.0.0.1:50051)",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// What the Kafka front end runs with.
    pub fn stream(&self) -> StreamConfig {
        StreamConfig {
            kafka: self.kafka.clone(),
            pipeline: self.pipeline.clone(),
            state: self.state.clone(),
        }
    }

    /// The configuration as `vigil config show` prints it: TOML, secrets redacted.
    pub fn to_toml_redacted(&self) -> Result<String, toml::ser::Error> {
        crate::config::to_toml_redacted(self)
    }
}

/// The serving model and how it is reloaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub path: PathBuf,
    /// Reload when the file changes (checked every `poll_interval`); SIGHUP always reloads.
    pub watch: bool,
    pub poll_interval: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::from(DEFAULT_MODEL),
            watch: true,
            poll_interval: "1s".into(),
        }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.path.as_os_str().is_empty() {
            return Err(KeyError::new("path", "must name the model file"));
        }
        check_duration("poll_interval", &self.poll_interval, false).map(|_| ())
    }

    pub fn poll_interval(&self) -> Duration {
        duration(&self.poll_interval)
    }
}

/// The HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port`; empty = no HTTP endpoints.
    pub metrics_addr: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            metrics_addr: "127.0.0.1:9464".into(),
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        if !self.metrics_addr.is_empty() && self.metrics_addr.parse::<SocketAddr>().is_err() {
            return Err(KeyError::new(
                "metrics_addr",
                format!(
                    "`{}` is not host:port (e.g. 127.0.0.1:9464)",
                    self.metrics_addr
                ),
            ));
        }
        Ok(())
    }

    /// The HTTP address, if the endpoints are on.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.metrics_addr.parse().ok()
    }
}

/// The commented example `vigil config example` prints. Every value is the default.
pub const EXAMPLE: &str = r#"# vigil serve configuration. Every key is optional (the value shown is the default).
# Override any key with an environment variable VIGIL_<SECTION>__<KEY> (e.g.
# VIGIL_KAFKA__BROKERS=host:9092, VIGIL_GRPC__MAX_BATCH=100) or a flag --set section.key=value;
# the essentials also have their own flags (vigil serve --help). Precedence: flags >
# environment > this file > defaults. `vigil config show` prints the result (secrets redacted).
# At least one of kafka.enabled and grpc.enabled must be true.

[kafka]
# Consume the transactions topic (--no-kafka sets false: the gRPC API alone).
enabled = true
# Bootstrap servers, host:port[,host:port...].
brokers = "127.0.0.1:9092"
# Consumer group: every vigil serve process of one deployment uses the same group and they
# split the partitions of the transactions topic between them.
group = "vigil"
# JSON transactions keyed by card id (vigil replay produces them).
transactions_topic = "transactions"
# Every non-approve verdict (JSON, keyed by card id).
alerts_topic = "alerts"
# Every verdict, approve included; empty = not published.
verdicts_topic = ""
# Records that cannot be decoded or fail validation: original bytes, and the reason, source
# partition and offset in headers.
dlq_topic = "transactions.dlq"
# Fraud labels {"transaction_id", "fraud", "known_at"}; empty = no labels feed.
labels_topic = ""
# false: at-least-once (idempotent producer, offsets committed once the verdicts of every
# earlier record of the partition are acknowledged). true: Kafka transactions, so
# read_committed subscribers see each verdict once (the broker must support transactions).
exactly_once = false
# transactional.id for exactly_once; empty = vigil-<group>-<hostname>. Give every instance
# its own id, stable across its restarts.
transactional_id = ""
# Wire format of the transactions topic: json, or protobuf (vigil.v1.Transaction from
# proto/vigil/v1/scoring.proto, validated like a gRPC request).
input_format = "json"
# Create missing topics at start (create_partitions partitions, replication factor 1).
create_topics = false
create_partitions = 4

# librdkafka consumer properties, passed through as they are
# (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md).
# bootstrap.servers, group.id, enable.auto.commit, enable.auto.offset.store and
# isolation.level are set by vigil. vigil sets fetch.wait.max.ms = 5 (brokers that hold a fetch
# for its whole max wait, like tansu, add it to every verdict's latency) and
# fetch.queue.backoff.ms = 10 (librdkafka's 1 s default idles the fetcher after a full local
# queue) unless given here.
[kafka.consumer]
# "fetch.wait.max.ms" = "100"

# librdkafka producer properties, passed through. vigil sets enable.idempotence = true and
# linger.ms = 5 unless given here; bootstrap.servers, transactional.id and partitioner are
# set by vigil.
[kafka.producer]
# "compression.type" = "lz4"

[model]
# The model file. It is reloaded when it changes (and on SIGHUP); a file that fails its checks
# or reads different features is refused and the serving model stays.
path = "models/default.vgm"
watch = true
poll_interval = "1s"

[pipeline]
# Scoring threads (each partition always goes to the same one); 0 = one per core.
workers = 0
# Records waiting per scoring thread (in batches of up to 256); when full, the consumer stops
# fetching (backpressure). Large enough to absorb a run of one partition's records while the
# other threads work (smaller queues leave threads idle); about 250 bytes per queued record.
queue_capacity = 65536
# How often acknowledged offsets are committed (at-least-once).
commit_interval = "1s"
# exactly_once: records per transaction, and the longest a transaction stays open.
transaction_records = 2000
transaction_interval = "200ms"
# Rebuild a partition's window state when it is assigned, by replaying its records from
# (record time of the last committed record - feature retention - rebuild_margin) up to the
# committed offset, without emitting verdicts.
rebuild = true
rebuild_margin = "1h"
# How long a shutdown waits for in-flight verdicts to be acknowledged.
shutdown_timeout = "30s"

[grpc]
# The gRPC API (vigil.v1.Scoring, health, reflection) on the same scoring state as the Kafka
# path. --grpc-addr (or --no-kafka) turns it on.
enabled = false
# HOST:PORT to listen on (port 0 picks a free port).
addr = "127.0.0.1:50051"
# Worker threads of the runtime serving the API and the HTTP endpoints; 0 = one per core.
threads = 0
# TLS: the server's certificate chain and private key (PEM); with tls_client_ca, clients must
# present a certificate from that CA (mutual TLS). Empty = plaintext.
tls_cert = ""
tls_key = ""
tls_client_ca = ""
# Bearer tokens (calls need `authorization: Bearer <token>`; health stays open): a file with one
# per line, and/or the name of an environment variable holding them comma-separated. Empty = no
# authentication.
token_file = ""
tokens_env = ""
# Largest request or response message, bytes.
max_message_bytes = 4194304
# Unary calls in progress at once; more wait for a slot until their deadline, or
# queue_timeout_ms without one, then get RESOURCE_EXHAUSTED.
max_concurrent_requests = 1024
queue_timeout_ms = 1000
# Longest any call may take (applies without a client deadline, caps a longer one).
request_timeout_ms = 30000
# Most transactions in one ScoreBatch call; most StreamAlerts subscribers at once.
max_batch = 1000
max_alert_subscribers = 64

[scoring]
# Partitions of window state without Kafka (with Kafka: the transactions topic's partition
# count); 0 = as many as the model was trained with.
partitions = 0
# Alerts buffered per StreamAlerts subscriber before a slow one starts skipping.
alert_buffer = 4096
# A transaction dated more than this after it was received (its Kafka record's timestamp; the
# clock for gRPC) is refused (dead letter `future_timestamp`, INVALID_ARGUMENT), so one record
# cannot move its partition's event time ahead and freeze every card's windows; 0s = off.
# `vigil train --max-future-skew` applies the same rule to history.
max_future_skew = "5m"

[state]
# Snapshots of each partition's window state, so a restart or a rebalance restores the newest
# one at or before the committed offset and replays only the records after it (false: every
# assignment replays the whole window from the topic).
snapshots = true
# Local directory of the snapshots (--state-dir); empty = <temp dir>/vigil-state.
dir = ""
# Or an object store, e.g. s3://bucket/prefix (AWS_* variables: credentials, AWS_ENDPOINT for
# an S3-compatible server, AWS_ALLOW_HTTP=true for plain http), or file:///var/lib/vigil.
url = ""
# How often each assigned partition is snapshotted when its state moved; also on revocation and
# on a clean shutdown.
interval = "5m"
# Snapshots kept per partition (a restore needs one at or before the committed offset).
keep = 3
# When the topic cannot supply the window a partition's state needs (its retention deleted
# records the windows still cover, or records not yet scored): "warn" scores with the state it
# could build (logged, vigil_short_history_total, /readyz says so); "refuse" keeps the partition
# paused and /readyz not ready until an operator decides (nothing is skipped meanwhile).
on_short_history = "warn"

[http]
# /metrics (Prometheus), /healthz, /readyz; empty = off.
metrics_addr = "127.0.0.1:9464"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_valid_and_shows_the_defaults() {
        let c = Loader::<Config>::new()
            .toml_text(EXAMPLE, "example")
            .and_then(Loader::build);
        assert_eq!(c.expect("example parses"), Config::default());
    }

    #[test]
    fn layers_override_in_order() {
        let c = Loader::<Config>::new()
            .toml_text(
                "[kafka]\nbrokers = \"file:1\"\ngroup = \"g\"\n[kafka.producer]\n\"linger.ms\" = 7\n",
                "vigil.toml",
            )
            .and_then(|l| {
                l.env([
                    ("VIGIL_KAFKA__BROKERS".into(), "env:2".into()),
                    ("VIGIL_PIPELINE__WORKERS".into(), "3".into()),
                    ("VIGIL_KAFKA__CONSUMER__FETCH_MIN_BYTES".into(), "10".into()),
                    ("VIGIL_GEN_ROWS".into(), "not config".into()),
                ])
            })
            .and_then(|l| l.assign("kafka.brokers=flag:3", "--set"))
            .and_then(|l| l.assign("kafka.producer.compression.type=lz4", "--set"))
            .and_then(Loader::build)
            .expect("valid");
        assert_eq!(c.kafka.brokers, "flag:3");
        assert_eq!(c.kafka.group, "g");
        assert_eq!(c.pipeline.workers, 3);
        assert_eq!(c.kafka.consumer["fetch.min.bytes"], "10");
        assert_eq!(c.kafka.producer["linger.ms"], "7");
        assert_eq!(c.kafka.producer["compression.type"], "lz4");
    }

    fn error_of(r: Result<Config, ConfigError>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn bad_keys_and_values_are_refused_by_name() {
        let e = error_of(
            Loader::<Config>::new()
                .toml_text("[kafka]\nbrokerz = \"x\"\n", "vigil.toml")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("vigil.toml") && e.contains("kafka.brokerz") && e.contains("known: "),
            "{e}"
        );

        let e = error_of(
            Loader::<Config>::new()
                .toml_text("[kafak]\n", "vigil.toml")
                .and_then(Loader::build),
        );
        assert!(e.contains("unknown key `kafak`"), "{e}");

        let e = error_of(
            Loader::<Config>::new()
                .toml_text("[pipeline]\nworkers = \"two\"\n", "f.toml")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("pipeline.workers") && e.contains("expected a integer"),
            "{e}"
        );

        let e = error_of(
            Loader::<Config>::new()
                .env([("VIGIL_PIPELINE__WORKERS".into(), "two".into())])
                .and_then(Loader::build),
        );
        assert!(
            e.contains("VIGIL_PIPELINE__WORKERS")
                && e.contains("pipeline.workers")
                && e.contains("`two`"),
            "{e}"
        );

        let e = error_of(
            Loader::<Config>::new()
                .assign("pipeline.commit_interval=soon", "--set")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("--set") && e.contains("pipeline.commit_interval") && e.contains("`soon`"),
            "{e}"
        );

        let e = error_of(
            Loader::<Config>::new()
                .assign("kafka.consumer.enable.auto.commit=true", "--set")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("kafka.consumer.enable.auto.commit") && e.contains("cannot be set"),
            "{e}"
        );

        let e = error_of(
            Loader::<Config>::new()
                .assign("http.metrics_addr=nowhere", "--metrics-addr")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("--metrics-addr") && e.contains("http.metrics_addr"),
            "{e}"
        );

        let e = error_of(
            Loader::<Config>::new()
                .assign("kafka.input_format=xml", "--set")
                .and_then(Loader::build),
        );
        assert!(e.contains("kafka.input_format"), "{e}");
    }

    #[test]
    fn the_grpc_table_works_in_every_layer() {
        let c = Loader::<Config>::new()
            .toml_text(
                "[grpc]\nmax_batch = 10\naddr = \"0.0.0.0:1\"\n",
                "vigil.toml",
            )
            .and_then(Loader::build)
            .expect("[grpc] is a table of the configuration");
        assert_eq!(c.grpc.max_batch, 10);
        assert_eq!(c.grpc.addr, "0.0.0.0:1");
        let c = Loader::<Config>::new()
            .toml_text("[grpc]\nmax_batch = 10\n", "vigil.toml")
            .and_then(|l| l.env([("VIGIL_GRPC__MAX_BATCH".into(), "20".into())]))
            .and_then(Loader::build)
            .expect("VIGIL_GRPC__MAX_BATCH");
        assert_eq!(c.grpc.max_batch, 20);
        let c = Loader::<Config>::new()
            .env([("VIGIL_GRPC__MAX_BATCH".into(), "20".into())])
            .and_then(|l| l.assign("grpc.max_batch=30", "--grpc-max-batch"))
            .and_then(Loader::build)
            .expect("flags last");
        assert_eq!(c.grpc.max_batch, 30);
        let e = error_of(
            Loader::<Config>::new()
                .toml_text("[grpc]\nmax_batch = 0\n", "vigil.toml")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("vigil.toml") && e.contains("grpc.max_batch"),
            "{e}"
        );
    }

    #[test]
    fn a_single_underscore_variable_is_refused_with_the_spelling_that_works() {
        let e = error_of(
            Loader::<Config>::new()
                .env([("VIGIL_GRPC_MAX_BATCH".into(), "10".into())])
                .and_then(Loader::build),
        );
        assert!(e.contains("VIGIL_GRPC__MAX_BATCH"), "{e}");
        // Variables that name no key are not configuration.
        Loader::<Config>::new()
            .env([
                ("VIGIL_TOKEN".into(), "x".into()),
                ("VIGIL_FAILPOINT_ABORT_AFTER".into(), "1".into()),
            ])
            .and_then(Loader::build)
            .expect("ignored");
    }

    #[test]
    fn nothing_to_serve_is_refused() {
        let e = error_of(
            Loader::<Config>::new()
                .assign("kafka.enabled=false", "--no-kafka")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("kafka.enabled") && e.contains("grpc.enabled"),
            "{e}"
        );
    }

    #[test]
    fn show_redacts_secrets_and_keeps_the_rest() {
        let c = Loader::<Config>::new()
            .assign("kafka.consumer.sasl.password=hunter2-consumer", "--set")
            .and_then(|l| l.assign("kafka.producer.ssl.key.password=hunter2-producer", "--set"))
            .and_then(|l| {
                l.assign(
                    "kafka.producer.sasl.oauthbearer.client.secret=s3cr3t",
                    "--set",
                )
            })
            .and_then(|l| l.assign("grpc.tokens_env=VIGIL_API_TOKENS", "--set"))
            .and_then(|l| l.assign("kafka.producer.linger.ms=7", "--set"))
            .and_then(Loader::build)
            .expect("valid");
        let shown = c.to_toml_redacted().expect("serializes");
        for secret in ["hunter2", "s3cr3t"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("\"sasl.password\" = \"<redacted>\""),
            "{shown}"
        );
        // Names of where secrets live are not secrets; other properties are shown as they are.
        assert!(
            shown.contains("tokens_env = \"VIGIL_API_TOKENS\""),
            "{shown}"
        );
        assert!(shown.contains("\"linger.ms\" = \"7\""), "{shown}");
        for section in [
            "[kafka]",
            "[pipeline]",
            "[grpc]",
            "[scoring]",
            "[state]",
            "[model]",
            "[http]",
        ] {
            assert!(shown.contains(section), "{section} missing from:\n{shown}");
        }
    }

    #[test]
    fn the_example_shows_every_key_of_every_section() {
        let defaults = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            other => panic!("not a table: {other:?}"),
        };
        let mut section = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for line in EXAMPLE.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((key, _)) = line.split_once(" = ") {
                if !line.starts_with('#') {
                    seen.insert(format!("{section}.{key}"));
                }
            }
        }
        for (name, table) in &defaults {
            for (key, value) in table.as_table().expect("sections are tables") {
                if !value.is_table() {
                    let full = format!("{name}.{key}");
                    assert!(seen.contains(&full), "`vigil config example` lacks {full}");
                }
            }
        }
    }

    #[test]
    fn durations() {
        use crate::config::parse_duration;
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("soon"), None);
    }
}
