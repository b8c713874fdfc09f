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
//! With a snapshot (see [`crate::state`]) only step 3 runs, from the snapshot's offset:
//! [`replay_tail`].
//!
//! This relies on record timestamps not running ahead of event time by more than
//! `rebuild_margin`; when a topic holds history replayed faster than real time (record
//! timestamps seconds apart for months of event time), step 2 lands at the start of the
//! partition and the whole partition is replayed, which is exact. Replaying more than needed is
//! harmless: the engine never reads events at or before its retention horizon.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::config::StreamConfig;
use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::telemetry;

use super::kafka;
use super::wire::decode_transaction_as;
use super::{Status, StreamError};

/// What a rebuild did: the records it replayed and, when the topic could not supply them all,
/// what was missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rebuilt {
    pub records: u64,
    pub short: Option<ShortHistory>,
}

/// History the topic no longer holds (deleted by its retention) that a partition's state
/// needed: the state is built from what is left, and the features reaching into the gap are
/// wrong until the windows have moved past it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShortHistory {
    pub partition: i32,
    /// The record time of the newest record the state holds (times here are record
    /// timestamps, which the topic's retention goes by).
    pub newest_ms: i64,
    /// The time the windows need history from, and the time of the oldest record left
    /// (`None`: nothing is left before the committed offset).
    pub needed_from_ms: i64,
    pub available_from_ms: Option<i64>,
    /// The oldest offset left.
    pub first_offset: i64,
    /// Records deleted before they were scored (offsets `from..to`): they never had a verdict.
    pub unscored: Option<(i64, i64)>,
}

impl ShortHistory {
    /// Time missing from the windows, in ms.
    pub fn missing_ms(&self) -> i64 {
        (self.available_from_ms.unwrap_or(self.newest_ms) - self.needed_from_ms).max(0)
    }

    /// One sentence for the log and `/readyz`: the partition, the missing span, the features
    /// affected.
    pub fn describe(&self, spec: &crate::features::FeatureSpec) -> String {
        let newest_ms = self.newest_ms;
        let days = |ms: i64| format!("{:.1} days", ms as f64 / 86_400_000.0);
        let fmt = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms).map_or_else(
                || ms.to_string(),
                |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            )
        };
        let available = newest_ms - self.available_from_ms.unwrap_or(newest_ms);
        let affected = spec.features_beyond(available);
        let mut text = format!(
            "partition {}: the topic no longer holds {} of the history its windows need ({} to \
             {}; the oldest record left is at offset {}); {} of {} features read into the gap \
             until the windows move past it: {}",
            self.partition,
            days(self.missing_ms()),
            fmt(self.needed_from_ms),
            fmt(self.available_from_ms.unwrap_or(newest_ms)),
            self.first_offset,
            affected.len(),
            spec.n_features(),
            affected.join(", ")
        );
        if let Some((from, to)) = self.unscored {
            text.push_str(&format!(
                "; records {from}..{to} were deleted before they were scored (they have no \
                 verdict)"
            ));
        }
        text
    }
}

/// What [`replay_range`] read: how many records, the offset and record time of the first,
/// the record time of the last.
#[derive(Debug, Default)]
struct Replayed {
    records: u64,
    first: Option<(i64, i64)>,
    last_ms: Option<i64>,
}

/// How long the rebuild waits for the next record before giving up.
const STALL: Duration = Duration::from_secs(60);

/// Replays `partition` up to (not including) `committed` into `core` (whose state for the
/// partition should be fresh). Returns the number of records replayed.
pub fn rebuild_partition(
    cfg: &StreamConfig,
    core: &ScoringCore,
    partition: i32,
    committed: i64,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<Rebuilt, StreamError> {
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
    if end <= 0 {
        return Ok(Rebuilt::default());
    }
    let retention = core.model().spec.retention_ms();
    // 1. The record timestamp of the last committed record. When it is gone (the topic's
    //    retention deleted everything up to the committed offset, and maybe beyond), so is the
    //    whole window.
    tracing::debug!(
        partition,
        low,
        end,
        "rebuild: reading the last committed record"
    );
    let (last_offset, last) = if end <= low {
        (low, None)
    } else {
        let m = Reader::open(&consumer, shutdown, topic, partition, end - 1, low)?.next()?;
        (m.offset(), m.timestamp().to_millis())
    };
    tracing::debug!(partition, last_offset, ?last, "rebuild: its timestamp");
    if last_offset >= end {
        // Nothing before the committed offset is left; records from it to the first one left
        // (when that is beyond it) were never scored.
        let newest = last.unwrap_or_else(super::wire::now_ms);
        let short = ShortHistory {
            partition,
            newest_ms: newest,
            needed_from_ms: newest.saturating_sub(retention),
            available_from_ms: None,
            first_offset: last_offset,
            unscored: (last_offset > end).then_some((end, last_offset)),
        };
        core.set_offset(partition as u32, end);
        return Ok(Rebuilt {
            records: 0,
            short: Some(short),
        });
    }
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
    tracing::info!(partition, from = start, to = end, "rebuilding state");
    let Replayed { records, first, .. } = replay_range(
        cfg,
        &consumer,
        core,
        partition,
        start..end,
        low,
        shutdown,
        status,
    )?;
    // 4. Did the topic hold the whole window? The oldest record replayed must be at or before
    //    the time the windows need, unless it is the partition's very first record.
    let short = match (last, first) {
        (Some(newest), Some((first_offset, first_ms)))
            if first_offset > 0 && first_ms > newest.saturating_sub(retention) =>
        {
            // Records before it may still be there (a quiet spell in the traffic): the oldest
            // record left says. (Kafka's low watermark says as much; tansu 0.6 deletes
            // records without moving it.)
            let oldest = if start <= low {
                first_offset
            } else {
                Reader::open(&consumer, shutdown, topic, partition, low, low)?
                    .next()?
                    .offset()
            };
            (oldest >= first_offset).then_some(ShortHistory {
                partition,
                newest_ms: newest,
                needed_from_ms: newest.saturating_sub(retention),
                available_from_ms: Some(first_ms),
                first_offset,
                unscored: None,
            })
        }
        _ => None,
    };
    Ok(Rebuilt { records, short })
}

/// Replays `partition`'s records `from .. to` into `core` after its state was restored from a
/// snapshot taken at `from`: the tail the snapshot does not hold. Returns the number of records
/// replayed (0 when the snapshot is at the committed offset).
pub fn replay_tail(
    cfg: &StreamConfig,
    core: &ScoringCore,
    partition: i32,
    from: i64,
    to: i64,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<Rebuilt, StreamError> {
    if from >= to {
        return Ok(Rebuilt::default());
    }
    let consumer: BaseConsumer =
        kafka::create(&kafka::consumer_config(cfg, None), "rebuild consumer")?;
    let low = consumer
        .fetch_watermarks(
            &cfg.kafka.transactions_topic,
            partition,
            Duration::from_secs(30),
        )
        .map(|(low, _)| low.max(0))
        .unwrap_or(0);
    let Replayed {
        records,
        first,
        last_ms,
    } = replay_range(
        cfg,
        &consumer,
        core,
        partition,
        from.max(low)..to,
        low,
        shutdown,
        status,
    )?;
    // Records after the snapshot that the topic no longer holds: the state misses them.
    let first_left = match first {
        Some((offset, _)) => offset,
        None => low.max(from),
    };
    let short = (first_left > from).then(|| {
        let newest = last_ms.unwrap_or_else(super::wire::now_ms);
        tracing::warn!(
            partition,
            snapshot_offset = from,
            first_left,
            "records {from}..{first_left} after the snapshot are no longer in the topic: the \
             state misses them"
        );
        ShortHistory {
            partition,
            newest_ms: newest,
            needed_from_ms: newest.saturating_sub(core.model().spec.retention_ms()),
            available_from_ms: first.map(|(_, ms)| ms),
            first_offset: first_left,
            unscored: (first_left > to).then_some((to, first_left)),
        }
    });
    Ok(Rebuilt { records, short })
}

/// Replays offsets `range` of `partition` (`low` is the partition's low watermark) into
/// `core` as state only; records that do not decode are skipped, as they were dead letters.
/// Returns the records replayed, the offset and record time of the first one read and the
/// record time of the last.
#[allow(clippy::too_many_arguments)]
fn replay_range(
    cfg: &StreamConfig,
    consumer: &BaseConsumer,
    core: &ScoringCore,
    partition: i32,
    range: std::ops::Range<i64>,
    low: i64,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<Replayed, StreamError> {
    let (start, end) = (range.start, range.end);
    if start >= end {
        return Ok(Replayed::default());
    }
    let topic = &cfg.kafka.transactions_topic;
    let format = cfg.input_format();
    let mut reader = Reader::open(consumer, shutdown, topic, partition, start, low)?;
    let total = (end - start) as u64;
    let mut replayed = 0u64;
    let mut first = None;
    let mut last_ms = None;
    let mut reported = Instant::now();
    let mut shown = Instant::now();
    status.set_partition(
        partition,
        format!("replaying offsets {start}..{end}: 0 of {total} records"),
    );
    let pace = replay_pace();
    loop {
        let m = reader.next().map_err(|e| {
            StreamError::Rebuild(format!(
                "{e} (replaying offsets {start}..{end}, at {replayed} of {total})"
            ))
        })?;
        if m.offset() >= end {
            break;
        }
        let record_ms = m.timestamp().to_millis();
        if first.is_none() {
            first = Some((m.offset(), record_ms.unwrap_or(0)));
        }
        last_ms = record_ms;
        if let Ok(tx) = decode_transaction_as(format, m.key(), m.payload()) {
            // The first pass refused a future-dated record by its record timestamp; so does
            // the replay (without counting it again).
            let received = m
                .timestamp()
                .to_millis()
                .unwrap_or_else(super::wire::now_ms);
            if core.is_timely(&tx, received) {
                core.warm_in(partition as u32, &tx);
            }
        }
        replayed += 1;
        if m.offset() >= end - 1 {
            break;
        }
        if let Some(pause) = pace {
            std::thread::sleep(pause);
        }
        if replayed.is_multiple_of(4096) || shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            status.set_partition(
                partition,
                format!("replaying offsets {start}..{end}: {replayed} of {total} records"),
            );
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            reported = Instant::now();
            tracing::info!(partition, replayed, total, "replaying state");
        }
    }
    core.set_offset(partition as u32, end);
    telemetry::rebuilt(replayed);
    Ok(Replayed {
        records: replayed,
        first,
        last_ms,
    })
}

/// The test hook that slows a replay down: `VIGIL_FAILPOINT_REPLAY_RECORD_MS` = N sleeps N ms
/// after each replayed record, so a test can make a rebuild outlast `max.poll.interval.ms`
/// with a few thousand records.
fn replay_pace() -> Option<Duration> {
    let ms: u64 = std::env::var("VIGIL_FAILPOINT_REPLAY_RECORD_MS")
        .ok()?
        .parse()
        .ok()?;
    tracing::warn!("VIGIL_FAILPOINT_REPLAY_RECORD_MS={ms}: replays sleep after each record");
    Some(Duration::from_millis(ms))
}

/// How long a read waits for records at its offset before it starts further back.
///
/// tansu 0.6 serves a fetch only from offsets up to the high watermark it believes in, which is
/// the base offset of the partition's newest batch + 1: an offset inside the newest batch (the
/// last committed record of a caught-up partition, typically) gets nothing until more records
/// arrive, so a restart with no new traffic waited forever. A fetch from the batch's base offset
/// or earlier gets the whole batch; Kafka itself serves any offset and never needs this.
const RESEEK_AFTER: Duration = Duration::from_millis(500);

/// Reads one partition in offset order from `from` on, skipping anything before it; when
/// nothing arrives for [`RESEEK_AFTER`], it fetches again from further back (four times as far each
/// time, never before `low`).
struct Reader<'c> {
    consumer: &'c BaseConsumer,
    shutdown: &'c Shutdown,
    topic: &'c str,
    partition: i32,
    /// The next offset wanted.
    from: i64,
    low: i64,
    /// How far before `from` the current fetch started.
    back: i64,
    /// When a record (wanted or skipped) last arrived, or the fetch last moved.
    active: Instant,
    /// When a record last arrived at all.
    progress: Instant,
}

impl<'c> Reader<'c> {
    fn open(
        consumer: &'c BaseConsumer,
        shutdown: &'c Shutdown,
        topic: &'c str,
        partition: i32,
        from: i64,
        low: i64,
    ) -> Result<Reader<'c>, StreamError> {
        let reader = Reader {
            consumer,
            shutdown,
            topic,
            partition,
            from,
            low,
            back: 0,
            active: Instant::now(),
            progress: Instant::now(),
        };
        reader.assign(from)?;
        Ok(reader)
    }

    fn assign(&self, offset: i64) -> Result<(), StreamError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(offset))
            .and_then(|()| self.consumer.assign(&tpl))
            .map_err(|e| StreamError::Rebuild(format!("partition {}: assign: {e}", self.partition)))
    }

    /// The next record at or after the wanted offset; an error after [`STALL`] without any
    /// record at all, or as soon as the shutdown is triggered.
    fn next(&mut self) -> Result<BorrowedMessage<'c>, StreamError> {
        loop {
            if self.shutdown.is_triggered() {
                return Err(StreamError::Rebuild(format!(
                    "partition {}: stopped by the shutdown at offset {}",
                    self.partition, self.from
                )));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    self.active = Instant::now();
                    self.progress = self.active;
                    if m.offset() >= self.from {
                        self.from = m.offset() + 1;
                        return Ok(m);
                    }
                    tracing::trace!(
                        partition = self.partition,
                        offset = m.offset(),
                        "rebuild: skipping"
                    );
                }
                Some(Err(e)) => tracing::warn!(partition = self.partition, "rebuild consumer: {e}"),
                None if self.progress.elapsed() > STALL => {
                    return Err(StreamError::Rebuild(format!(
                        "partition {}: could not read offset {} within {}s",
                        self.partition,
                        self.from,
                        STALL.as_secs()
                    )));
                }
                None if self.active.elapsed() >= RESEEK_AFTER
                    && self.from - self.back > self.low =>
                {
                    self.back = (self.back * 4).max(1024);
                    let at = (self.from - self.back).max(self.low);
                    tracing::debug!(
                        partition = self.partition,
                        wanted = self.from,
                        at,
                        "rebuild: nothing at the wanted offset yet, fetching from further back"
                    );
                    self.assign(at)?;
                    self.active = Instant::now();
                }
                None => {}
            }
        }
    }
}
