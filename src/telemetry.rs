//! Metric names and the events that emit them: the one place that knows what vigil reports.
//!
//! Metrics go through the `metrics` facade; `vigil serve` installs the Prometheus recorder
//! ([`install_prometheus`]) and serves its rendering on `/metrics`. Without a recorder (library
//! use, tests) every call is a no-op. Names are stable: dashboards depend on them.
//!
//! The hot path (one transaction) uses [`StreamMetrics`], which resolves its handles once, so a
//! transaction costs a few atomic adds, not registry look-ups.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};

use crate::decision::Decision;

pub const TRANSACTIONS_IN: &str = "vigil_transactions_in_total";
pub const VERDICTS: &str = "vigil_verdicts_total";
pub const DEAD_LETTERS: &str = "vigil_dead_letters_total";
pub const END_TO_END_LATENCY: &str = "vigil_end_to_end_latency_seconds";
pub const SCORING_LATENCY: &str = "vigil_scoring_latency_seconds";
pub const SCORE: &str = "vigil_score";
pub const CONSUMER_LAG: &str = "vigil_consumer_lag";
pub const MODEL_INFO: &str = "vigil_model_info";
pub const MODEL_RELOADS: &str = "vigil_model_reloads_total";
pub const LABELS_IN: &str = "vigil_labels_in_total";
pub const REBUILT_RECORDS: &str = "vigil_rebuild_records_total";
pub const ASSIGNED_PARTITIONS: &str = "vigil_assigned_partitions";
pub const REBUILDING_PARTITIONS: &str = "vigil_rebuilding_partitions";
pub const SHORT_HISTORY: &str = "vigil_short_history_total";
pub const REDELIVERED: &str = "vigil_redelivered_records_total";
pub const MISSING_HISTORY_SECONDS: &str = "vigil_missing_history_seconds";
pub const UNSCORED_DELETED: &str = "vigil_deleted_unscored_records_total";
pub const OFFSET_COMMITS: &str = "vigil_offset_commits_total";
pub const DELIVERY_ERRORS: &str = "vigil_delivery_errors_total";
pub const IN_FLIGHT: &str = "vigil_in_flight_records";
pub const SNAPSHOT_SECONDS: &str = "vigil_snapshot_seconds";
pub const SNAPSHOT_BYTES: &str = "vigil_snapshot_bytes";
pub const SNAPSHOTS: &str = "vigil_snapshots_total";
pub const RESTORE_SECONDS: &str = "vigil_restore_seconds";
pub const RESTORES: &str = "vigil_restores_total";
pub const FUTURE_TIMESTAMPS: &str = "vigil_future_timestamps_total";

/// Latency buckets, seconds: 50 us to 30 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Score buckets: tenths, finer near the top where decisions are made.
const SCORE_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
];

/// Installs the Prometheus recorder (histograms with the buckets above) and returns the handle
/// whose `render()` is the `/metrics` body.
pub fn install_prometheus(
) -> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError>
{
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(END_TO_END_LATENCY.into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SCORING_LATENCY.into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SCORE.into()), &SCORE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SNAPSHOT_SECONDS.into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RESTORE_SECONDS.into()), &LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(TRANSACTIONS_IN, "Records read from the transactions topic");
    describe_counter!(
        VERDICTS,
        "Verdicts made, by decision and by the path that scored them (kafka, grpc)"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Records sent to the dead-letter topic, by reason"
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "From the input record's broker timestamp (from=broker) or event time (from=event) to its verdict acknowledged by the broker"
    );
    describe_histogram!(
        SCORING_LATENCY,
        Unit::Seconds,
        "Features + forest + reasons per transaction, by path"
    );
    describe_histogram!(SCORE, "Distribution of fraud scores, by path");
    describe_gauge!(
        CONSUMER_LAG,
        "Records behind the end of each assigned partition"
    );
    describe_gauge!(
        MODEL_INFO,
        "1 for the serving model (labels model_id, version)"
    );
    describe_counter!(MODEL_RELOADS, "Model reload attempts, by result");
    describe_counter!(LABELS_IN, "Labels read from the labels topic, by result");
    describe_counter!(REBUILT_RECORDS, "Records replayed to rebuild window state");
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Partitions of the transactions topic assigned to this process and scoring"
    );
    describe_counter!(
        REDELIVERED,
        "Records the consumer delivered again within one assignment (offsets at or before one \
         already read), skipped, by partition"
    );
    describe_counter!(
        SHORT_HISTORY,
        "Partition rebuilds that found the topic missing history their windows need, by \
         partition and what was done (warn: scored anyway; refuse: kept paused)"
    );
    describe_gauge!(
        MISSING_HISTORY_SECONDS,
        "Event time of history missing from a partition's state at its last rebuild (0: none)"
    );
    describe_counter!(
        UNSCORED_DELETED,
        "Records deleted by the topic's retention before they were scored, by partition"
    );
    describe_gauge!(
        REBUILDING_PARTITIONS,
        "Assigned partitions whose state is being restored or replayed (paused meanwhile)"
    );
    describe_counter!(OFFSET_COMMITS, "Offset commits, by result");
    describe_counter!(
        DELIVERY_ERRORS,
        "Verdicts or dead letters the broker did not acknowledge"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Records read whose outputs are not yet acknowledged"
    );
    describe_histogram!(
        SNAPSHOT_SECONDS,
        "State snapshot time, by phase: encode (scoring of the partition paused), write (to the \
         state store, scoring goes on)"
    );
    describe_gauge!(
        SNAPSHOT_BYTES,
        "Size of the latest state snapshot written, by partition"
    );
    describe_counter!(SNAPSHOTS, "State snapshots written, by result");
    describe_counter!(
        FUTURE_TIMESTAMPS,
        "Transactions refused for an event time beyond max_future_skew, by path"
    );
    describe_histogram!(
        RESTORE_SECONDS,
        "Time to bring an assigned partition's state up to its committed offset, by how \
         (snapshot: load + tail replay; replay: full replay)"
    );
    describe_counter!(
        RESTORES,
        "Partition state preparations, by how (snapshot, replay, refused_snapshot, exact, fresh)"
    );
}

/// Which front end scored a transaction: the `path` label of the verdict metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoringPath {
    /// A record of the transactions topic (`vigil serve`, `vigil demo`).
    Kafka,
    /// A `Score` or `ScoreBatch` call.
    Grpc,
}

impl ScoringPath {
    pub const ALL: [ScoringPath; 2] = [ScoringPath::Kafka, ScoringPath::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            ScoringPath::Kafka => "kafka",
            ScoringPath::Grpc => "grpc",
        }
    }
}

/// Pre-resolved handles for the verdicts of one [`ScoringPath`], recorded by the scoring core
/// for every transaction it scores (dry runs excepted: they decide nothing).
///
/// Handles bind to the recorder installed when they are created: create them after
/// [`install_prometheus`] (`vigil serve` does), or they stay no-ops.
#[derive(Clone)]
pub struct ScoringMetrics {
    approve: Counter,
    review: Counter,
    decline: Counter,
    scoring: Histogram,
    score: Histogram,
}

impl ScoringMetrics {
    pub fn new(path: ScoringPath) -> ScoringMetrics {
        let p = path.as_str();
        let verdict = |d: Decision| counter!(VERDICTS, "decision" => d.as_str(), "path" => p);
        ScoringMetrics {
            approve: verdict(Decision::Approve),
            review: verdict(Decision::Review),
            decline: verdict(Decision::Decline),
            scoring: histogram!(SCORING_LATENCY, "path" => p),
            score: histogram!(SCORE, "path" => p),
        }
    }

    /// One verdict: its decision, its score and how long scoring took (features, forest,
    /// reasons, including the wait for the partition's lock).
    pub fn verdict(&self, decision: Decision, score: f32, scoring: Duration) {
        match decision {
            Decision::Approve => &self.approve,
            Decision::Review => &self.review,
            Decision::Decline => &self.decline,
        }
        .increment(1);
        self.score.record(f64::from(score));
        self.scoring.record(scoring.as_secs_f64());
    }
}

/// Pre-resolved handles for the Kafka path's per-record events.
#[derive(Clone)]
pub struct StreamMetrics {
    transactions_in: Counter,
    dead_decode: Counter,
    dead_validation: Counter,
    dead_key: Counter,
    e2e_broker: Histogram,
    e2e_event: Histogram,
    delivery_errors: Counter,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        StreamMetrics::new()
    }
}

impl StreamMetrics {
    pub fn new() -> StreamMetrics {
        let dead = |r: &'static str| counter!(DEAD_LETTERS, "reason" => r);
        StreamMetrics {
            transactions_in: counter!(TRANSACTIONS_IN),
            dead_decode: dead("decode"),
            dead_validation: dead("validation"),
            dead_key: dead("key_mismatch"),
            e2e_broker: histogram!(END_TO_END_LATENCY, "from" => "broker"),
            e2e_event: histogram!(END_TO_END_LATENCY, "from" => "event"),
            delivery_errors: counter!(DELIVERY_ERRORS),
        }
    }

    pub fn record_in(&self) {
        self.transactions_in.increment(1);
    }

    /// A record sent to the dead-letter topic; `reason` is its `vigil.reason` header value
    /// (`decode`, `validation`, `key_mismatch`).
    pub fn dead_letter(&self, reason: &str) {
        match reason {
            "decode" => &self.dead_decode,
            "validation" => &self.dead_validation,
            _ => &self.dead_key,
        }
        .increment(1);
    }

    /// A verdict acknowledged at `now_ms` for a record with broker timestamp `broker_ms` and
    /// event time `event_ms` (epoch ms; negative = unknown).
    pub fn acknowledged(&self, now_ms: i64, broker_ms: i64, event_ms: i64) {
        if broker_ms >= 0 {
            self.e2e_broker
                .record((now_ms.saturating_sub(broker_ms)).max(0) as f64 / 1000.0);
        }
        if event_ms >= 0 {
            self.e2e_event
                .record((now_ms.saturating_sub(event_ms)).max(0) as f64 / 1000.0);
        }
    }

    pub fn delivery_error(&self) {
        self.delivery_errors.increment(1);
    }
}

/// The serving model changed (or is first loaded).
pub fn model_serving(model_id: &str, version: &str, previous: Option<(&str, &str)>) {
    if let Some((id, v)) = previous {
        gauge!(MODEL_INFO, "model_id" => id.to_string(), "version" => v.to_string()).set(0.0);
    }
    gauge!(MODEL_INFO, "model_id" => model_id.to_string(), "version" => version.to_string())
        .set(1.0);
}

/// A reload attempt: `result` is `ok`, `invalid` or `spec_mismatch`.
pub fn model_reload(result: &'static str) {
    counter!(MODEL_RELOADS, "result" => result).increment(1);
}

pub fn label_in(result: &'static str) {
    counter!(LABELS_IN, "result" => result).increment(1);
}

pub fn rebuilt(records: u64) {
    counter!(REBUILT_RECORDS).increment(records);
}

/// A snapshot of `partition`: `encode` is how long its scoring paused, `write` how long the
/// store took (`None`: the write failed).
pub fn snapshot_written(
    partition: u32,
    encode: std::time::Duration,
    write: Option<std::time::Duration>,
    bytes: usize,
) {
    histogram!(SNAPSHOT_SECONDS, "phase" => "encode").record(encode.as_secs_f64());
    match write {
        Some(w) => {
            histogram!(SNAPSHOT_SECONDS, "phase" => "write").record(w.as_secs_f64());
            gauge!(SNAPSHOT_BYTES, "partition" => partition.to_string()).set(bytes as f64);
            counter!(SNAPSHOTS, "result" => "ok").increment(1);
        }
        None => counter!(SNAPSHOTS, "result" => "error").increment(1),
    }
}

/// A transaction refused for a future event time.
pub fn future_timestamp(path: ScoringPath) {
    counter!(FUTURE_TIMESTAMPS, "path" => path.as_str()).increment(1);
}

/// How an assigned partition's state was prepared, and how long it took.
pub fn restored(how: &'static str, took: std::time::Duration) {
    counter!(RESTORES, "how" => how).increment(1);
    if matches!(how, "snapshot" | "replay") {
        histogram!(RESTORE_SECONDS, "how" => how).record(took.as_secs_f64());
    }
}

pub fn assigned_partitions(n: usize) {
    gauge!(ASSIGNED_PARTITIONS).set(n as f64);
}

/// A rebuild's history check: `missing` of event time missing (zero when none), what was done
/// about it, and how many records were deleted unscored.
pub fn history_checked(
    partition: i32,
    missing: std::time::Duration,
    action: Option<&'static str>,
    unscored: u64,
) {
    let p = partition.to_string();
    gauge!(MISSING_HISTORY_SECONDS, "partition" => p.clone()).set(missing.as_secs_f64());
    if let Some(action) = action {
        counter!(SHORT_HISTORY, "partition" => p.clone(), "action" => action).increment(1);
    }
    if unscored > 0 {
        counter!(UNSCORED_DELETED, "partition" => p).increment(unscored);
    }
}

pub fn redelivered(partition: i32) {
    counter!(REDELIVERED, "partition" => partition.to_string()).increment(1);
}

pub fn rebuilding_partitions(n: usize) {
    gauge!(REBUILDING_PARTITIONS).set(n as f64);
}

pub fn offset_commit(ok: bool) {
    counter!(OFFSET_COMMITS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn consumer_lag(partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(lag as f64);
}

pub fn in_flight(n: usize) -> Gauge {
    let g = gauge!(IN_FLIGHT);
    g.set(n as f64);
    g
}
