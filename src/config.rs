//! `vigil serve` configuration: a TOML file, then environment variables, then flags, each layer
//! overriding the one before. Every key can be set in all three places:
//!
//! - file: `vigil.toml` (`vigil config example` prints a commented one; every key is optional),
//! - environment: `VIGIL_<SECTION>__<KEY>`, e.g. `VIGIL_KAFKA__BROKERS=host:9092`; librdkafka
//!   properties as `VIGIL_KAFKA__CONSUMER__FETCH_MIN_BYTES=1` (underscores become dots),
//! - flags: `--set section.key=value` for any key (`--set kafka.producer.linger.ms=5`), and named
//!   flags for the essentials (`--brokers`, `--group`, ...; see `vigil serve --help`).
//!
//! An unknown key or a value of the wrong type is refused with the key's full name and where it
//! came from (file, variable or flag). [`Config::validate`] then checks values that parse but
//! make no sense (a zero queue, an unparsable duration), again naming the key. librdkafka
//! properties are passed through untouched and checked by librdkafka when the clients are built
//! (its error names the property); the few that would break vigil's delivery guarantees are
//! refused here.
//!
//! This module only reads the file and the environment it is given; it knows nothing of Kafka
//! beyond property names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "VIGIL_";

/// The whole `vigil serve` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub model: ModelConfig,
    pub pipeline: PipelineConfig,
    pub http: HttpConfig,
}

/// Brokers, topics and client properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group of the scorers.
    pub group: String,
    pub transactions_topic: String,
    /// Every non-approve verdict.
    pub alerts_topic: String,
    /// Every verdict; empty = not published.
    pub verdicts_topic: String,
    /// Records that cannot be decoded or fail validation.
    pub dlq_topic: String,
    /// Fraud labels (transaction id, fraud, known at); empty = no labels feed.
    pub labels_topic: String,
    /// Transactional producer, offsets committed inside the transaction.
    pub exactly_once: bool,
    /// `transactional.id` with `exactly_once`; empty = `vigil-<group>-<hostname>`. Give every
    /// instance its own, stable across its restarts.
    pub transactional_id: String,
    /// Wire format of `transactions`: `json` or `protobuf` (`vigil.v1.Transaction`).
    pub input_format: String,
    /// Create missing topics at start (partitions below, replication 1; for tests and demos).
    pub create_topics: bool,
    /// Partitions of the topics `create_topics` creates.
    pub create_partitions: u32,
    /// librdkafka consumer properties, passed through.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka producer properties, passed through.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group: "vigil".into(),
            transactions_topic: "transactions".into(),
            alerts_topic: "alerts".into(),
            verdicts_topic: String::new(),
            dlq_topic: "transactions.dlq".into(),
            labels_topic: String::new(),
            exactly_once: false,
            transactional_id: String::new(),
            input_format: "json".into(),
            create_topics: false,
            create_partitions: 4,
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
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
            path: PathBuf::from("models/default.vgm"),
            watch: true,
            poll_interval: "1s".into(),
        }
    }
}

/// The scoring pipeline between the consumer and the producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Scoring threads (a partition always goes to the same one); 0 = one per core.
    pub workers: usize,
    /// Records waiting per scoring thread (held as batches of up to 256, so rounded down to a
    /// multiple of 256, at least one batch); when full, the consumer stops fetching. The
    /// consumer returns long runs of one partition's records, so a thread's queue must absorb
    /// such a run while the other threads keep working: small queues leave threads idle
    /// (BENCHMARKS.md, "Kafka path"). About 250 bytes per queued record.
    pub queue_capacity: usize,
    /// How often acknowledged offsets are committed (at-least-once).
    pub commit_interval: String,
    /// Records per Kafka transaction (exactly-once).
    pub transaction_records: usize,
    /// Longest time a Kafka transaction stays open (exactly-once).
    pub transaction_interval: String,
    /// Rebuild a partition's window state when it is assigned (see ARCHITECTURE.md).
    pub rebuild: bool,
    /// Extra record time replayed before `committed record time - retention`, for producers
    /// whose record timestamps run ahead of event time.
    pub rebuild_margin: String,
    /// How long shutdown waits for in-flight verdicts to be acknowledged.
    pub shutdown_timeout: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: 0,
            queue_capacity: 65_536,
            commit_interval: "1s".into(),
            transaction_records: 2000,
            transaction_interval: "200ms".into(),
            rebuild: true,
            rebuild_margin: "1h".into(),
            shutdown_timeout: "30s".into(),
        }
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

/// A configuration that cannot be used, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: unknown key `{key}`{hint}")]
    UnknownKey {
        origin: String,
        key: String,
        hint: String,
    },
    #[error("{origin}: key `{key}`: {message}")]
    BadValue {
        origin: String,
        key: String,
        message: String,
    },
}

/// Where a key's value came from, for error messages.
#[derive(Debug, Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn of(&self, key: &str) -> String {
        // The longest recorded prefix: a table set in the file names the file.
        let mut k = key;
        loop {
            if let Some(o) = self.0.get(k) {
                return o.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return "default".into(),
            }
        }
    }
}

/// Builds a [`Config`] from its layers. See the module docs.
#[derive(Debug)]
pub struct Loader {
    tree: toml::Table,
    defaults: toml::Table,
    origins: Origins,
}

impl Default for Loader {
    fn default() -> Self {
        Loader::new()
    }
}

fn table_of(config: &Config) -> toml::Table {
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        // The config types serialize to a table by construction.
        _ => toml::Table::new(),
    }
}

/// Whether `path` (dotted, split) names a librdkafka pass-through property.
fn passthrough(section: &str, key: &str) -> bool {
    section == "kafka" && (key == "consumer" || key == "producer")
}

impl Loader {
    /// Starts from the defaults.
    pub fn new() -> Loader {
        let defaults = table_of(&Config::default());
        Loader {
            tree: defaults.clone(),
            defaults,
            origins: Origins::default(),
        }
    }

    /// Layers a TOML file on top.
    pub fn file(self, path: &Path) -> Result<Loader, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        self.toml_text(&text, &path.display().to_string())
    }

    /// Layers TOML text on top; `origin` names it in errors.
    pub fn toml_text(mut self, text: &str, origin: &str) -> Result<Loader, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        for (section, value) in table {
            let (true, toml::Value::Table(fields)) = (self.defaults.contains_key(&section), &value)
            else {
                return Err(self.unknown_or_bad(origin, &section, None));
            };
            for (key, v) in fields {
                let path = format!("{section}.{key}");
                if passthrough(&section, key) {
                    let toml::Value::Table(props) = v else {
                        return Err(ConfigError::BadValue {
                            origin: origin.into(),
                            key: path,
                            message: "expected a table of librdkafka properties".into(),
                        });
                    };
                    for (prop, pv) in props {
                        let s = match pv {
                            toml::Value::String(s) => s.clone(),
                            toml::Value::Integer(i) => i.to_string(),
                            toml::Value::Float(f) => f.to_string(),
                            toml::Value::Boolean(b) => b.to_string(),
                            _ => {
                                return Err(ConfigError::BadValue {
                                    origin: origin.into(),
                                    key: format!("{path}.{prop}"),
                                    message: "expected a string, number or boolean".into(),
                                })
                            }
                        };
                        self.set_prop(origin, &section, key, prop, s)?;
                    }
                } else {
                    self.set_value(origin, &section, key, v.clone())?;
                }
            }
        }
        Ok(self)
    }

    /// Layers the `VIGIL_<SECTION>__<KEY>` variables of `vars` on top (pass `std::env::vars()`).
    /// Variables with the prefix but without `__` are not configuration and are ignored.
    pub fn env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loader, ConfigError> {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        vars.sort();
        for (name, value) in vars {
            let origin = format!("environment variable {name}");
            let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let parts: Vec<&str> = rest.splitn(3, "__").collect();
            match parts.as_slice() {
                [section, key, prop] if passthrough(section, key) => {
                    let prop = prop.replace('_', ".");
                    self.set_prop(&origin, section, key, &prop, value)?;
                }
                [section, key] => self.set_text(&origin, section, key, &value)?,
                _ => {
                    return Err(ConfigError::UnknownKey {
                        origin,
                        key: rest.replace("__", "."),
                        hint: String::new(),
                    })
                }
            }
        }
        Ok(self)
    }

    /// Layers one `key=value` assignment (the `--set` flag; `origin` names the flag).
    pub fn assign(mut self, assignment: &str, origin: &str) -> Result<Loader, ConfigError> {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(ConfigError::Syntax {
                origin: origin.into(),
                message: format!("`{assignment}` is not key=value (e.g. kafka.brokers=host:9092)"),
            });
        };
        let key = key.trim();
        let mut parts = key.splitn(3, '.');
        let (section, field, prop) = (parts.next(), parts.next(), parts.next());
        match (section, field, prop) {
            (Some(s), Some(f), Some(p)) if passthrough(s, f) => {
                self.set_prop(origin, s, f, p, value.to_string())?
            }
            (Some(s), Some(f), None) => self.set_text(origin, s, f, value)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.into(),
                    key: key.into(),
                    hint: String::new(),
                })
            }
        }
        Ok(self)
    }

    /// Sets `section.key` from text, typed like its default (the named flags use this).
    pub fn set(
        mut self,
        section: &str,
        key: &str,
        value: &str,
        origin: &str,
    ) -> Result<Loader, ConfigError> {
        self.set_text(origin, section, key, value)?;
        Ok(self)
    }

    fn unknown_or_bad(&self, origin: &str, section: &str, key: Option<&str>) -> ConfigError {
        let known: Vec<String> = match key {
            None => self.defaults.keys().cloned().collect(),
            Some(_) => self
                .defaults
                .get(section)
                .and_then(|v| v.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default(),
        };
        let full = match key {
            None => section.to_string(),
            Some(k) => format!("{section}.{k}"),
        };
        if key.is_none() && self.defaults.contains_key(section) {
            return ConfigError::BadValue {
                origin: origin.into(),
                key: full,
                message: "expected a table".into(),
            };
        }
        ConfigError::UnknownKey {
            origin: origin.into(),
            key: full,
            hint: format!(" (known: {})", known.join(", ")),
        }
    }

    fn default_of(&self, section: &str, key: &str) -> Option<&toml::Value> {
        self.defaults.get(section)?.as_table()?.get(key)
    }

    fn set_value(
        &mut self,
        origin: &str,
        section: &str,
        key: &str,
        value: toml::Value,
    ) -> Result<(), ConfigError> {
        let Some(default) = self.default_of(section, key) else {
            return Err(self.unknown_or_bad(origin, section, Some(key)));
        };
        if default.type_str() != value.type_str() {
            return Err(ConfigError::BadValue {
                origin: origin.into(),
                key: format!("{section}.{key}"),
                message: format!(
                    "expected a {}, found a {} ({value})",
                    default.type_str(),
                    value.type_str()
                ),
            });
        }
        if let Some(toml::Value::Table(t)) = self.tree.get_mut(section) {
            t.insert(key.to_string(), value);
        }
        self.origins
            .0
            .insert(format!("{section}.{key}"), origin.to_string());
        Ok(())
    }

    /// Sets a key from text, parsed as the type of its default.
    fn set_text(
        &mut self,
        origin: &str,
        section: &str,
        key: &str,
        text: &str,
    ) -> Result<(), ConfigError> {
        let Some(default) = self.default_of(section, key) else {
            return Err(self.unknown_or_bad(origin, section, Some(key)));
        };
        let bad = |what: &str| ConfigError::BadValue {
            origin: origin.into(),
            key: format!("{section}.{key}"),
            message: format!("`{text}` is not {what}"),
        };
        let value = match default {
            toml::Value::String(_) => toml::Value::String(text.to_string()),
            toml::Value::Integer(_) => {
                toml::Value::Integer(text.trim().parse::<i64>().map_err(|_| bad("an integer"))?)
            }
            toml::Value::Boolean(_) => match text.trim() {
                "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                _ => return Err(bad("a boolean (true/false)")),
            },
            toml::Value::Float(_) => {
                toml::Value::Float(text.trim().parse::<f64>().map_err(|_| bad("a number"))?)
            }
            _ => return Err(bad("settable from text")),
        };
        self.set_value(origin, section, key, value)
    }

    fn set_prop(
        &mut self,
        origin: &str,
        section: &str,
        key: &str,
        prop: &str,
        value: String,
    ) -> Result<(), ConfigError> {
        let path = format!("{section}.{key}.{prop}");
        if prop.is_empty() {
            return Err(ConfigError::UnknownKey {
                origin: origin.into(),
                key: path,
                hint: String::new(),
            });
        }
        let table = self
            .tree
            .get_mut(section)
            .and_then(|v| v.as_table_mut())
            .and_then(|t| {
                t.entry(key.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
            });
        if let Some(t) = table {
            t.insert(prop.to_string(), toml::Value::String(value));
        }
        self.origins.0.insert(path, origin.to_string());
        Ok(())
    }

    /// The layered configuration, checked (see [`Config::validate`]).
    pub fn build(self) -> Result<Config, ConfigError> {
        let value = toml::Value::Table(self.tree);
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::BadValue {
                origin: self.origins.of(&key),
                key,
                message: e.inner().to_string(),
            }
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::BadValue {
                origin: self.origins.of(&key),
                key,
                message,
            })?;
        Ok(config)
    }
}

/// Parses `250ms`, `5s`, `10m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) {
            return ms.parse::<u64>().ok().map(Duration::from_millis);
        }
        return None;
    }
    crate::features::parse_duration(s)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
}

/// librdkafka properties vigil sets itself, with why they cannot be overridden.
const RESERVED_CONSUMER: [(&str, &str); 5] = [
    ("bootstrap.servers", "set kafka.brokers"),
    ("group.id", "set kafka.group"),
    (
        "enable.auto.commit",
        "vigil commits only acknowledged offsets",
    ),
    (
        "enable.auto.offset.store",
        "vigil commits only acknowledged offsets",
    ),
    ("isolation.level", "set by kafka.exactly_once"),
];
const RESERVED_PRODUCER: [(&str, &str); 3] = [
    ("bootstrap.servers", "set kafka.brokers"),
    ("transactional.id", "set kafka.transactional_id"),
    (
        "partitioner",
        "verdicts are keyed by card id with Kafka's default partitioner",
    ),
];

impl Config {
    /// Checks values that parse but cannot work. Errors are `(key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let k = &self.kafka;
        for (key, v) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.group", &k.group),
            ("kafka.transactions_topic", &k.transactions_topic),
            ("kafka.alerts_topic", &k.alerts_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
        ] {
            if v.trim().is_empty() {
                return err(key, "must not be empty".into());
            }
        }
        if crate::stream::wire::InputFormat::parse(&k.input_format).is_none() {
            return err(
                "kafka.input_format",
                format!(
                    "`{}` is not a format; one of {}",
                    k.input_format,
                    crate::stream::wire::InputFormat::NAMES.join(", ")
                ),
            );
        }
        if k.create_partitions == 0 {
            return err("kafka.create_partitions", "must be at least 1".into());
        }
        for (prop, why) in RESERVED_CONSUMER {
            if k.consumer.contains_key(prop) {
                return err(
                    &format!("kafka.consumer.{prop}"),
                    format!("cannot be set here: {why}"),
                );
            }
        }
        for (prop, why) in RESERVED_PRODUCER {
            if k.producer.contains_key(prop) {
                return err(
                    &format!("kafka.producer.{prop}"),
                    format!("cannot be set here: {why}"),
                );
            }
        }
        if k.exactly_once
            && k.producer.get("enable.idempotence").map(String::as_str) == Some("false")
        {
            return err(
                "kafka.producer.enable.idempotence",
                "must stay true with kafka.exactly_once".into(),
            );
        }
        let p = &self.pipeline;
        if p.queue_capacity == 0 {
            return err("pipeline.queue_capacity", "must be at least 1".into());
        }
        if p.transaction_records == 0 {
            return err("pipeline.transaction_records", "must be at least 1".into());
        }
        for (key, v) in [
            ("model.poll_interval", &self.model.poll_interval),
            ("pipeline.commit_interval", &p.commit_interval),
            ("pipeline.transaction_interval", &p.transaction_interval),
            ("pipeline.rebuild_margin", &p.rebuild_margin),
            ("pipeline.shutdown_timeout", &p.shutdown_timeout),
        ] {
            match parse_duration(v) {
                Some(d) if !d.is_zero() || key == "pipeline.rebuild_margin" => {}
                Some(_) => return err(key, "must be longer than zero".into()),
                None => {
                    return err(
                        key,
                        format!("`{v}` is not a duration (examples: 250ms, 5s, 10m, 2h, 7d)"),
                    )
                }
            }
        }
        if !self.http.metrics_addr.is_empty()
            && self.http.metrics_addr.parse::<SocketAddr>().is_err()
        {
            return err(
                "http.metrics_addr",
                format!(
                    "`{}` is not host:port (e.g. 127.0.0.1:9464)",
                    self.http.metrics_addr
                ),
            );
        }
        Ok(())
    }

    /// A validated duration key (validation guarantees it parses).
    fn duration(&self, v: &str) -> Duration {
        parse_duration(v).unwrap_or(Duration::from_secs(1))
    }

    pub fn commit_interval(&self) -> Duration {
        self.duration(&self.pipeline.commit_interval)
    }
    pub fn transaction_interval(&self) -> Duration {
        self.duration(&self.pipeline.transaction_interval)
    }
    pub fn rebuild_margin(&self) -> Duration {
        self.duration(&self.pipeline.rebuild_margin)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        self.duration(&self.pipeline.shutdown_timeout)
    }
    pub fn model_poll_interval(&self) -> Duration {
        self.duration(&self.model.poll_interval)
    }

    /// The HTTP address, if the endpoints are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.metrics_addr.parse().ok()
    }

    /// Scoring threads: the configured number, or one per core.
    pub fn workers(&self) -> usize {
        match self.pipeline.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The transactional id for exactly-once.
    pub fn transactional_id(&self) -> String {
        if !self.kafka.transactional_id.is_empty() {
            return self.kafka.transactional_id.clone();
        }
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "local".into());
        format!("vigil-{}-{host}", self.kafka.group)
    }

    /// An optional topic: `None` when empty.
    pub fn verdicts_topic(&self) -> Option<&str> {
        Some(self.kafka.verdicts_topic.as_str()).filter(|t| !t.is_empty())
    }
    pub fn labels_topic(&self) -> Option<&str> {
        Some(self.kafka.labels_topic.as_str()).filter(|t| !t.is_empty())
    }
    /// The transactions topic's format (validated: JSON only for a config never validated).
    pub fn input_format(&self) -> crate::stream::wire::InputFormat {
        crate::stream::wire::InputFormat::parse(&self.kafka.input_format).unwrap_or_default()
    }
}

/// The commented example `vigil config example` prints. Every value is the default.
pub const EXAMPLE: &str = r#"# vigil serve configuration. Every key is optional (the value shown is the default).
# Override any key with an environment variable VIGIL_<SECTION>__<KEY> (e.g.
# VIGIL_KAFKA__BROKERS=host:9092) or a flag --set section.key=value; the essentials also have
# their own flags (vigil serve --help). Precedence: flags > environment > this file > defaults.

[kafka]
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

[http]
# /metrics (Prometheus), /healthz, /readyz; empty = off.
metrics_addr = "127.0.0.1:9464"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_valid_and_shows_the_defaults() {
        let c = Loader::new()
            .toml_text(EXAMPLE, "example")
            .and_then(Loader::build);
        assert_eq!(c.expect("example parses"), Config::default());
    }

    #[test]
    fn layers_override_in_order() {
        let c = Loader::new()
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
            Loader::new()
                .toml_text("[kafka]\nbrokerz = \"x\"\n", "vigil.toml")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("vigil.toml") && e.contains("kafka.brokerz") && e.contains("known: "),
            "{e}"
        );

        let e = error_of(
            Loader::new()
                .toml_text("[kafak]\n", "vigil.toml")
                .and_then(Loader::build),
        );
        assert!(e.contains("unknown key `kafak`"), "{e}");

        let e = error_of(
            Loader::new()
                .toml_text("[pipeline]\nworkers = \"two\"\n", "f.toml")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("pipeline.workers") && e.contains("expected a integer"),
            "{e}"
        );

        let e = error_of(
            Loader::new()
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
            Loader::new()
                .assign("pipeline.commit_interval=soon", "--set")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("--set") && e.contains("pipeline.commit_interval") && e.contains("`soon`"),
            "{e}"
        );

        let e = error_of(
            Loader::new()
                .assign("kafka.consumer.enable.auto.commit=true", "--set")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("kafka.consumer.enable.auto.commit") && e.contains("cannot be set"),
            "{e}"
        );

        let e = error_of(
            Loader::new()
                .assign("http.metrics_addr=nowhere", "--metrics-addr")
                .and_then(Loader::build),
        );
        assert!(
            e.contains("--metrics-addr") && e.contains("http.metrics_addr"),
            "{e}"
        );

        let e = error_of(
            Loader::new()
                .assign("kafka.input_format=xml", "--set")
                .and_then(Loader::build),
        );
        assert!(e.contains("kafka.input_format"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("soon"), None);
    }
}
