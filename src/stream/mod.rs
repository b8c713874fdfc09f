//! The Kafka front end: transactions in, verdicts out. Everything that knows Kafka lives here;
//! scoring itself is [`crate::scoring::ScoringCore`], which knows nothing of Kafka.
//!
//! - [`pipeline`]: the consume -> score -> produce loop (at-least-once or exactly-once),
//!   rebalances, backpressure, shutdown.
//! - [`offsets`]: which consumed offsets are finished (all their outputs acknowledged).
//! - [`rebuild`]: window state rebuilt from the topic when a partition is assigned.
//! - [`labels`]: the labels feed.
//! - [`replay`]: a history file produced to a topic (`vigil replay`, the load generator).
//! - [`wire`]: record encodings (transactions, labels, verdicts, dead-letter headers).
//! - [`kafka`]: client settings, topic creation, partition counts.
//!
//! Invariants: every record read ends as a verdict or a dead letter before its offset is
//! committed; every channel is bounded; one partition's records are scored in offset order by
//! one thread; nothing here panics on a record's content.

pub mod config;
pub mod kafka;
pub mod labels;
pub mod offsets;
pub mod pipeline;
pub mod rebuild;
pub mod replay;
pub mod wire;

use std::sync::atomic::AtomicBool;

pub use pipeline::run;

/// What stops the Kafka front end.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A client could not be created or a cluster call failed (the message names which).
    #[error("kafka: {0}")]
    Client(String),
    /// An output was not acknowledged; its record was not committed and will be scored again.
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// A Kafka transaction failed (exactly-once); its records will be scored again.
    #[error("transaction failed: {0}")]
    Transaction(String),
    /// A partition's state could not be rebuilt.
    #[error("state rebuild failed: {0}")]
    Rebuild(String),
}

/// Live status of the pipeline, for `/readyz`.
#[derive(Debug, Default)]
pub struct Status {
    /// At least one partition is assigned and its state rebuilt (ready also needs none being
    /// rebuilt or refused: see `serve::http`).
    pub assigned: AtomicBool,
    /// What each assigned partition's state is doing (being restored or replayed, with its
    /// progress, or scoring), by partition.
    partitions: std::sync::Mutex<std::collections::BTreeMap<i32, String>>,
    /// Partitions kept paused because the topic could not supply their history
    /// (`[state] on_short_history = "refuse"`): the process is not ready while there are any.
    refused: std::sync::Mutex<std::collections::BTreeSet<i32>>,
    /// Assigned partitions whose state is being rebuilt: the process is not ready while there
    /// are any (gRPC calls for their cards would be refused).
    rebuilding: std::sync::atomic::AtomicUsize,
}

impl Status {
    /// Records what `partition`'s state is doing (one line of `/readyz`).
    pub fn set_partition(&self, partition: i32, what: impl Into<String>) {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, what.into());
    }

    /// Forgets a revoked partition.
    pub fn remove_partition(&self, partition: i32) {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
        self.set_refused(partition, false);
    }

    /// How many assigned partitions are being rebuilt now (also `vigil_rebuilding_partitions`).
    pub fn set_rebuilding(&self, n: usize) {
        self.rebuilding
            .store(n, std::sync::atomic::Ordering::Release);
        crate::telemetry::rebuilding_partitions(n);
    }

    /// [`set_rebuilding`](Self::set_rebuilding)'s count.
    pub fn rebuilding(&self) -> usize {
        self.rebuilding.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks `partition` as refused (kept paused: its history is short) or not.
    pub fn set_refused(&self, partition: i32, refused: bool) {
        let mut set = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused {
            set.insert(partition);
        } else {
            set.remove(&partition);
        }
    }

    /// The partitions refused ([`set_refused`](Self::set_refused)).
    pub fn refused(&self) -> Vec<i32> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// One line per assigned partition: `partition N: <what it is doing>`.
    pub fn partition_lines(&self) -> String {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, what)| format!("partition {p}: {what}\n"))
            .collect()
    }
}

/// Counts of one pipeline run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the transactions topic.
    pub records: u64,
    /// Records turned into a verdict or a dead letter.
    pub scored: u64,
}
