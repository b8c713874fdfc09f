//! Rebuilding a partition's window state from the topic itself, without emitting anything.
//!
//! The committed offset `C` of a partition says which records already have verdicts. The state a
//! scorer that never stopped would hold at `C` depends only on records before `C` whose event
//! time is within the feature spec's retention (longest look-back + allowed lateness) of the
//! newest event time. So the rebuild:
//!
//! 1. reads record `C - 1` and takes its record (broker) timestamp `T`,
//! 2. finds with offsets-for-times the first offset `S` whose timestamp is at or after
//!    `T - retention - rebuild_margin`,
//! 3. replays `S .. C` through [`ScoringCore::warm_in`] (state only; records that do not decode
//!    are skipped, as they were dead letters the first time).
//!
//! This relies on record timestamps not running ahead of event time by more than
//! `rebuild_margin`; when a topic holds history replayed faster than real time (record
//! timestamps seconds apart for months of event time), step 2 lands at the start of the
//! partition and the whole partition is replayed, which is exact. Replaying more than needed is
//! harmless: the engine never reads events at or before its retention horizon. Snapshots of
//! state were the alternative; replay needs no extra storage and cannot go stale.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::config::StreamConfig;
use crate::scoring::ScoringCore;
use crate::telemetry;

use super::kafka;
use super::wire::decode_transaction_as;
use super::StreamError;

/// How long the rebuild waits for the next record before giving up.
const STALL: Duration = Duration::from_secs(60);

/// Replays `partition` up to (not including) `committed` into `core` (whose state for the
/// partition should be fresh). Returns the number of records replayed.
pub fn rebuild_partition(
    cfg: &StreamConfig,
    core: &ScoringCore,
    partition: i32,
    committed: i64,
) -> Result<u64, StreamError> {
    let topic = &cfg.kafka.transactions_topic;
    let consumer: BaseConsumer =
        kafka::create(&kafka::consumer_config(cfg, None), "rebuild consumer")?;
    let err = |what: &str, e: rdkafka::error::KafkaError| {
        StreamError::Rebuild(format!("partition {partition}: {what}: {e}"))
    };
    // The committed offset is the end. (The high watermark is not used: tansu 0.6 answers
    // ListOffsets(latest) wrongly; the low watermark only bounds the start.)
    let end = committed;
    let low = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map(|(low, _)| low.max(0))
        .unwrap_or(0);
    if end <= low {
        return Ok(0);
    }
    // 1. The record timestamp of the last committed record.
    tracing::debug!(
        partition,
        low,
        end,
        "rebuild: reading the last committed record"
    );
    let last = read_one(&consumer, topic, partition, end - 1)?;
    tracing::debug!(partition, ?last, "rebuild: its timestamp");
    let retention = core.model().spec.retention_ms();
    let margin = i64::try_from(cfg.rebuild_margin().as_millis()).unwrap_or(i64::MAX);
    // 2. Where to start.
    let start = match last {
        Some(ts) if ts >= 0 => {
            let target = ts.saturating_sub(retention).saturating_sub(margin).max(0);
            let mut q = TopicPartitionList::new();
            q.add_partition_offset(topic, partition, Offset::Offset(target))
                .map_err(|e| err("offsets-for-times query", e))?;
            let found = consumer
                .offsets_for_times(q, Duration::from_secs(30))
                .map_err(|e| err("offsets-for-times", e))?;
            match found.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.clamp(low, end - 1),
                _ => low,
            }
        }
        _ => low,
    };
    // 3. Replay.
    let format = cfg.input_format();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(|e| err("assign", e))?;
    consumer.assign(&tpl).map_err(|e| err("assign", e))?;
    let total = (end - start) as u64;
    tracing::info!(partition, from = start, to = end, "rebuilding state");
    let mut replayed = 0u64;
    let mut last_progress = Instant::now();
    let mut reported = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.offset() >= end {
                    break;
                }
                if let Ok(tx) = decode_transaction_as(format, m.key(), m.payload()) {
                    core.warm_in(partition as u32, &tx);
                }
                replayed += 1;
                if m.offset() >= end - 1 {
                    break;
                }
                if reported.elapsed() >= Duration::from_secs(5) {
                    reported = Instant::now();
                    tracing::info!(partition, replayed, total, "rebuilding state");
                }
            }
            Some(Err(e)) => tracing::warn!(partition, "rebuild consumer: {e}"),
            None if last_progress.elapsed() > STALL => {
                return Err(StreamError::Rebuild(format!(
                "partition {partition}: no record for {}s while replaying offsets {start}..{end} \
                     (at {replayed} of {total})",
                STALL.as_secs()
            )))
            }
            None => {}
        }
    }
    telemetry::rebuilt(replayed);
    Ok(replayed)
}

/// The record timestamp at `offset` (`None` if the record is gone).
fn read_one(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, StreamError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .and_then(|()| consumer.assign(&tpl))
        .map_err(|e| StreamError::Rebuild(format!("partition {partition}: assign: {e}")))?;
    let deadline = Instant::now() + STALL;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.offset() >= offset => return Ok(m.timestamp().to_millis()),
            Some(Ok(m)) => tracing::trace!(partition, offset = m.offset(), "rebuild: skipping"),
            None => {}
            Some(Err(e)) => tracing::warn!(partition, "rebuild consumer: {e}"),
        }
    }
    Err(StreamError::Rebuild(format!(
        "partition {partition}: could not read offset {offset} within {}s",
        STALL.as_secs()
    )))
}
