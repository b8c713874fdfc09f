//! The Kafka front end's configuration: the `[kafka]` table (brokers, topics, delivery mode,
//! librdkafka pass-through properties) and the `[pipeline]` table (threads, queues, commits,
//! rebuilds), each checked here; [`StreamConfig`] is the pair the front end runs with.
//!
//! librdkafka properties are passed through untouched and checked by librdkafka when the clients
//! are built (its error names the property); the few that would break vigil's delivery
//! guarantees are refused here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{check_duration, duration, KeyError};

use super::wire::InputFormat;

/// Brokers, topics and client properties (`[kafka]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Consume the transactions topic (false: `vigil serve --no-kafka`, the gRPC API alone).
    pub enabled: bool,
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
            enabled: true,
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

/// The Kafka pipeline between the consumer and the producer (`[pipeline]`).
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

impl KafkaConfig {
    /// Checks values that parse but cannot work; keys are relative to `[kafka]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        for (key, v) in [
            ("brokers", &self.brokers),
            ("group", &self.group),
            ("transactions_topic", &self.transactions_topic),
            ("alerts_topic", &self.alerts_topic),
            ("dlq_topic", &self.dlq_topic),
        ] {
            if v.trim().is_empty() {
                return Err(KeyError::new(key, "must not be empty"));
            }
        }
        if InputFormat::parse(&self.input_format).is_none() {
            return Err(KeyError::new(
                "input_format",
                format!(
                    "`{}` is not a format; one of {}",
                    self.input_format,
                    InputFormat::NAMES.join(", ")
                ),
            ));
        }
        if self.create_partitions == 0 {
            return Err(KeyError::new("create_partitions", "must be at least 1"));
        }
        for (prop, why) in RESERVED_CONSUMER {
            if self.consumer.contains_key(prop) {
                return Err(KeyError::new(
                    format!("consumer.{prop}"),
                    format!("cannot be set here: {why}"),
                ));
            }
        }
        for (prop, why) in RESERVED_PRODUCER {
            if self.producer.contains_key(prop) {
                return Err(KeyError::new(
                    format!("producer.{prop}"),
                    format!("cannot be set here: {why}"),
                ));
            }
        }
        if self.exactly_once
            && self.producer.get("enable.idempotence").map(String::as_str) == Some("false")
        {
            return Err(KeyError::new(
                "producer.enable.idempotence",
                "must stay true with kafka.exactly_once",
            ));
        }
        Ok(())
    }
}

impl PipelineConfig {
    /// Checks values that parse but cannot work; keys are relative to `[pipeline]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.queue_capacity == 0 {
            return Err(KeyError::new("queue_capacity", "must be at least 1"));
        }
        if self.transaction_records == 0 {
            return Err(KeyError::new("transaction_records", "must be at least 1"));
        }
        check_duration("commit_interval", &self.commit_interval, false)?;
        check_duration("transaction_interval", &self.transaction_interval, false)?;
        check_duration("rebuild_margin", &self.rebuild_margin, true)?;
        check_duration("shutdown_timeout", &self.shutdown_timeout, false)?;
        Ok(())
    }
}

/// What the Kafka front end runs with: the `[kafka]` and `[pipeline]` tables, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamConfig {
    pub kafka: KafkaConfig,
    pub pipeline: PipelineConfig,
    /// Where partition state is snapshotted (`[state]`).
    pub state: crate::state::StateConfig,
}

impl StreamConfig {
    /// Both tables checked; keys in errors are full (`kafka.brokers`).
    pub fn validate(&self) -> Result<(), KeyError> {
        self.kafka.validate().map_err(|e| e.under("kafka"))?;
        self.pipeline.validate().map_err(|e| e.under("pipeline"))
    }

    pub fn commit_interval(&self) -> Duration {
        duration(&self.pipeline.commit_interval)
    }
    pub fn transaction_interval(&self) -> Duration {
        duration(&self.pipeline.transaction_interval)
    }
    pub fn rebuild_margin(&self) -> Duration {
        duration(&self.pipeline.rebuild_margin)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        duration(&self.pipeline.shutdown_timeout)
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
    pub fn input_format(&self) -> InputFormat {
        InputFormat::parse(&self.kafka.input_format).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(StreamConfig::default().validate(), Ok(()));
    }

    #[test]
    fn reserved_properties_and_bad_values_name_their_key() {
        let mut c = StreamConfig::default();
        c.kafka
            .consumer
            .insert("enable.auto.commit".into(), "true".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "kafka.consumer.enable.auto.commit");
        let mut c = StreamConfig::default();
        c.pipeline.rebuild_margin = "0s".into();
        assert_eq!(c.validate(), Ok(()), "a zero rebuild margin is allowed");
        c.pipeline.commit_interval = "0s".into();
        assert_eq!(c.validate().unwrap_err().key, "pipeline.commit_interval");
    }
}
