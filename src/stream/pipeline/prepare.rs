//! What a newly assigned partition goes through before its records are scored: its window
//! state is kept (still exact at the committed offset), started fresh, or rebuilt — restored
//! from a snapshot plus the tail after it, or replayed in full.
//!
//! A rebuild runs on its own thread and never on the reader's: the partition is paused from
//! the moment it is assigned (inside the rebalance callback, before anything is fetched for
//! it), the reader goes on polling (so the group membership outlives any rebuild, whatever
//! `max.poll.interval.ms` is) and scoring the other partitions, and when the rebuild is done
//! the reader seeks the partition to its committed offset and resumes it. At most
//! [`rebuild_threads`] partitions rebuild at once; the others wait their turn, paused.
//!
//! While a partition rebuilds:
//! - the core refuses gRPC calls for its cards ([`ScoringCore::set_rebuilding`]), so nothing is
//!   written into a state under replay, and takes no snapshot of it;
//! - a record of it that still reaches the reader (fetched before the pause took hold) is
//!   dropped unread: the seek on resume fetches it again;
//! - a revocation stops the rebuild and drops the half-built state; so does the shutdown.
//!
//! [`ScoringCore::set_rebuilding`]: crate::scoring::ScoringCore::set_rebuilding

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::shutdown::Shutdown;
use crate::state::OnShortHistory;
use crate::stream::rebuild;
use crate::stream::StreamError;
use crate::telemetry;

use super::rebalance::{Guarantee, ReaderContext, Shared};

/// How many partitions rebuild at once: one per core (a replay is CPU-bound: decoding and
/// updating the windows).
pub(super) fn rebuild_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The rebuilds in progress, by partition, and the permits that bound how many run at once.
pub(super) struct Rebuilds {
    running: Mutex<HashMap<i32, Rebuild>>,
    permits: Arc<Permits>,
}

/// One partition's rebuild on its own thread.
struct Rebuild {
    /// The offset its state is being brought to (where the partition resumes).
    committed: i64,
    /// Its own stop: triggered by a revocation of the partition or by the shutdown.
    stop: Shutdown,
    /// How it ended (with the partition's `/readyz` line).
    thread: JoinHandle<Result<Outcome, StreamError>>,
}

impl Rebuilds {
    pub(super) fn new(threads: usize) -> Rebuilds {
        Rebuilds {
            running: Mutex::new(HashMap::new()),
            permits: Arc::new(Permits::new(threads.max(1))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Rebuild>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the rebuilds of `parts` (all of them when `None`) and waits for their threads;
    /// the half-built states are dropped. Returns the partitions stopped.
    pub(super) fn stop<G: Guarantee>(&self, shared: &Shared<G>, parts: Option<&[i32]>) -> Vec<i32> {
        let stopped: Vec<(i32, Rebuild)> = {
            let mut running = self.lock();
            let which: Vec<i32> = running
                .keys()
                .copied()
                .filter(|p| parts.is_none_or(|ps| ps.contains(p)))
                .collect();
            which
                .into_iter()
                .filter_map(|p| running.remove(&p).map(|r| (p, r)))
                .collect()
        };
        for (_, r) in &stopped {
            r.stop.trigger();
        }
        let mut done = Vec::with_capacity(stopped.len());
        for (p, r) in stopped {
            let _ = r.thread.join();
            shared.core.reset_partition(p as u32);
            shared.core.set_rebuilding(p as u32, false);
            tracing::info!(
                partition = p,
                "state rebuild stopped; its partial state dropped"
            );
            done.push(p);
        }
        shared.status.set_rebuilding(self.lock().len());
        done
    }
}

/// A counting semaphore whose wait gives up when a stop is triggered.
struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    /// Takes a permit, or `None` once `stop` is triggered.
    fn acquire(self: &Arc<Self>, stop: &Shutdown) -> Option<Permit> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if stop.is_triggered() {
                return None;
            }
            if *free > 0 {
                *free -= 1;
                return Some(Permit(Arc::clone(self)));
            }
            free = self
                .freed
                .wait_timeout(free, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Returned to its [`Permits`] when dropped.
struct Permit(Arc<Permits>);

impl Drop for Permit {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// After each poll: prepares the partitions the last rebalance assigned (starting their
/// rebuilds) and resumes those whose rebuild has finished. An error is fatal (a rebuild that
/// failed, not one that was stopped).
pub(super) fn prepare_assigned<G: Guarantee>(
    shared: &Arc<Shared<G>>,
    consumer: &BaseConsumer<ReaderContext<G>>,
) -> Result<(), StreamError> {
    let newly: Vec<i32> = std::mem::take(&mut *shared.lock_newly());
    if !newly.is_empty() {
        match on_assigned(shared, consumer, &newly) {
            Ok(()) => {}
            Err(e) if shared.shutdown.is_triggered() => {
                tracing::info!("stopping while preparing assigned partitions: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    resume_rebuilt(shared, consumer)
}

/// Resumes each partition whose rebuild thread has finished: seeks it to its committed offset
/// (anything fetched before the pause is fetched again), resumes it, and from then on its
/// records are scored.
fn resume_rebuilt<G: Guarantee>(
    shared: &Shared<G>,
    consumer: &BaseConsumer<ReaderContext<G>>,
) -> Result<(), StreamError> {
    let finished: Vec<(i32, Rebuild)> = {
        let mut running = shared.rebuilds.lock();
        let done: Vec<i32> = running
            .iter()
            .filter(|(_, r)| r.thread.is_finished())
            .map(|(p, _)| *p)
            .collect();
        done.into_iter()
            .filter_map(|p| running.remove(&p).map(|r| (p, r)))
            .collect()
    };
    if finished.is_empty() {
        return Ok(());
    }
    shared.status.set_rebuilding(shared.rebuilds.lock().len());
    let topic = &shared.cfg.kafka.transactions_topic;
    for (p, r) in finished {
        let line = match r.thread.join() {
            Ok(Ok(Outcome::Ready(line))) => line,
            Ok(Ok(Outcome::Refused(line))) => {
                // Stays paused and marked rebuilding (gRPC refused too) until it is revoked.
                shared.status.set_partition(p, line);
                shared.status.set_refused(p, true);
                continue;
            }
            Ok(Err(e)) if r.stop.is_triggered() || shared.shutdown.is_triggered() => {
                tracing::info!(partition = p, "state rebuild stopped: {e}");
                continue;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StreamError::Rebuild(format!(
                    "partition {p}: the rebuild thread panicked"
                )))
            }
        };
        resume(consumer, topic, p, Some(r.committed))?;
        shared.core.set_rebuilding(p as u32, false);
        shared.status.set_partition(p, line);
        shared.mark_ready(p);
    }
    Ok(())
}

/// Resumes a paused partition, first seeking it to `at` when given.
fn resume<C: Consumer<ReaderContext<G>>, G: Guarantee>(
    consumer: &C,
    topic: &str,
    partition: i32,
    at: Option<i64>,
) -> Result<(), StreamError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer
        .resume(&tpl)
        .map_err(|e| StreamError::Client(format!("resuming partition {partition}: {e}")))?;
    if let Some(offset) = at {
        consumer
            .seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
            .map_err(|e| {
                StreamError::Client(format!(
                    "seeking partition {partition} to offset {offset}: {e}"
                ))
            })?;
    }
    Ok(())
}

/// Prepares newly assigned (and paused) partitions: tracking, then their window state kept
/// when it is exact at the committed offset, or started fresh (both resume at once), or
/// rebuilt on a thread of its own (resumed when done).
fn on_assigned<G: Guarantee>(
    shared: &Arc<Shared<G>>,
    consumer: &BaseConsumer<ReaderContext<G>>,
    parts: &[i32],
) -> Result<(), StreamError> {
    let cfg = &shared.cfg;
    let topic = &cfg.kafka.transactions_topic;
    let mut query = TopicPartitionList::new();
    for &p in parts {
        query.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(query, Duration::from_secs(30))
        .map_err(|e| StreamError::Client(format!("reading committed offsets: {e}")))?;
    for &p in parts {
        if p as u32 >= shared.core.partitions() {
            return Err(StreamError::Client(format!(
                "partition {p} of {topic} is beyond the {} partitions vigil was started with \
                 (partitions were added): restart to size the state for them",
                shared.core.partitions()
            )));
        }
        shared.tracker.assign(p);
        let at = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let exact = shared.take_exact_upto(p);
        let ready = match at {
            _ if !cfg.pipeline.rebuild => {
                shared.core.reset_partition(p as u32);
                telemetry::restored("fresh", Duration::ZERO);
                "scoring (fresh state: pipeline.rebuild is off)".to_string()
            }
            Some(c) if exact == Some(c) => {
                tracing::info!(partition = p, offset = c, "state still exact, no rebuild");
                telemetry::restored("exact", Duration::ZERO);
                format!("scoring (state kept, exact at offset {c})")
            }
            Some(c) => {
                start_rebuild(shared, p, c)?;
                continue;
            }
            None => {
                shared.core.reset_partition(p as u32);
                telemetry::restored("fresh", Duration::ZERO);
                "scoring (fresh state: no committed offset)".to_string()
            }
        };
        resume(consumer, topic, p, None)?;
        shared.status.set_partition(p, ready);
        shared.mark_ready(p);
    }
    Ok(())
}

/// Starts rebuilding `partition`'s state up to `committed` on a thread of its own.
fn start_rebuild<G: Guarantee>(
    shared: &Arc<Shared<G>>,
    partition: i32,
    committed: i64,
) -> Result<(), StreamError> {
    shared.core.set_rebuilding(partition as u32, true);
    shared
        .status
        .set_partition(partition, "waiting for a rebuild thread");
    let stop = Shutdown::new();
    let (job_shared, job_stop) = (Arc::clone(shared), stop.clone());
    let permits = Arc::clone(&shared.rebuilds.permits);
    let thread = std::thread::Builder::new()
        .name(format!("vigil-rebuild-{partition}"))
        .spawn(move || {
            let Some(_permit) = permits.acquire(&job_stop) else {
                return Err(StreamError::Rebuild(format!(
                    "partition {partition}: stopped before it started"
                )));
            };
            rebuild_state(&job_shared, partition, committed, &job_stop)
        })
        .map_err(|e| StreamError::Client(format!("starting a rebuild thread: {e}")))?;
    let mut running = shared.rebuilds.lock();
    running.insert(
        partition,
        Rebuild {
            committed,
            stop,
            thread,
        },
    );
    shared.status.set_rebuilding(running.len());
    Ok(())
}

/// How a rebuild ended.
pub(super) enum Outcome {
    /// The state is ready: resume the partition. Its `/readyz` line.
    Ready(String),
    /// The topic could not supply the history and `[state] on_short_history = "refuse"`: the
    /// partition stays paused. Its `/readyz` line.
    Refused(String),
}

/// Brings `partition`'s state to `committed` (on its rebuild thread): from the newest usable
/// snapshot and the tail after it, or by a full replay; then checks that the topic held the
/// history the windows need and applies `[state] on_short_history` when it did not.
fn rebuild_state<G: Guarantee>(
    shared: &Shared<G>,
    p: i32,
    c: i64,
    stop: &Shutdown,
) -> Result<Outcome, StreamError> {
    let cfg = &shared.cfg;
    let started = Instant::now();
    shared.status.set_partition(p, "preparing its state");
    let (rebuilt, how) = if let Some(from) = restore(shared, p, c) {
        let r = rebuild::replay_tail(cfg, &shared.core, p, from, c, stop, &shared.status)?;
        let took = started.elapsed();
        telemetry::restored("snapshot", took);
        tracing::info!(
            partition = p,
            snapshot_offset = from,
            offset = c,
            tail_records = r.records,
            seconds = took.as_secs_f64(),
            "state restored from a snapshot and its tail replayed"
        );
        let how = format!(
            "restored from the snapshot at offset {from} + {} records replayed, {:.1} s",
            r.records,
            took.as_secs_f64()
        );
        (r, how)
    } else {
        shared.core.reset_partition(p as u32);
        let r = rebuild::rebuild_partition(cfg, &shared.core, p, c, stop, &shared.status)?;
        let took = started.elapsed();
        telemetry::restored("replay", took);
        tracing::info!(
            partition = p,
            offset = c,
            records = r.records,
            seconds = took.as_secs_f64(),
            "state rebuilt by a full replay (no usable snapshot)"
        );
        let how = format!(
            "state rebuilt by a full replay of {} records, {:.1} s",
            r.records,
            took.as_secs_f64()
        );
        (r, how)
    };
    shared.core.set_offset(p as u32, c);
    let Some(short) = rebuilt.short else {
        telemetry::history_checked(p, Duration::ZERO, None, 0);
        return Ok(Outcome::Ready(format!("scoring ({how})")));
    };
    let what = short.describe(&shared.core.model().spec);
    let missing = Duration::from_millis(short.missing_ms() as u64);
    let unscored = short.unscored.map_or(0, |(a, b)| (b - a).max(0) as u64);
    match cfg.state.on_short_history() {
        OnShortHistory::Warn => {
            telemetry::history_checked(p, missing, Some("warn"), unscored);
            tracing::warn!(partition = p, "short history, scoring anyway: {what}");
            Ok(Outcome::Ready(format!(
                "scoring ({how}) with a short history: {what}"
            )))
        }
        OnShortHistory::Refuse => {
            telemetry::history_checked(p, missing, Some("refuse"), unscored);
            tracing::error!(
                partition = p,
                "short history, partition kept paused ([state] on_short_history = \"refuse\"): \
                 {what}"
            );
            Ok(Outcome::Refused(format!(
                "refused, kept paused (on_short_history = \"refuse\"; set \"warn\" to score \
                 with the state it has): {what}"
            )))
        }
    }
}

/// Restores `partition` from its newest usable snapshot at or before `committed`: returns the
/// snapshot's offset (the tail to replay starts there), or `None` when there is none (the
/// caller replays the whole window). A snapshot that is refused (another spec or partition
/// count, damaged) is logged with the reason and the next older one is tried.
fn restore<G: Guarantee>(shared: &Shared<G>, partition: i32, committed: i64) -> Option<i64> {
    let snapshots = shared.snapshots.as_ref()?;
    let p = partition as u32;
    let candidates = match snapshots.candidates(p, committed) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(partition, "listing snapshots: {e}; replaying instead");
            return None;
        }
    };
    if candidates.is_empty() {
        tracing::info!(partition, committed, store = %snapshots.describe(), "no snapshot at or before the committed offset");
    }
    for stored in candidates {
        let bytes = match snapshots.load(&stored) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(partition, snapshot = %stored.name, "reading a snapshot: {e}");
                continue;
            }
        };
        let started = Instant::now();
        shared
            .status
            .set_partition(partition, format!("loading the snapshot {}", stored.name));
        match shared.core.restore_partition(p, &bytes) {
            Ok(info) => {
                tracing::info!(
                    partition,
                    snapshot = %stored.name,
                    offset = info.offset,
                    entities = info.entities,
                    events = info.events,
                    bytes = bytes.len(),
                    decode_seconds = started.elapsed().as_secs_f64(),
                    "state loaded from a snapshot"
                );
                return Some(info.offset);
            }
            Err(e) => {
                telemetry::restored("refused_snapshot", started.elapsed());
                tracing::warn!(partition, snapshot = %stored.name, "snapshot refused: {e}");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_bound_concurrency_and_a_stop_ends_the_wait() {
        let permits = Arc::new(Permits::new(1));
        let stop = Shutdown::new();
        let first = permits.acquire(&stop).expect("a free permit");
        let waiter = {
            let (permits, stop) = (Arc::clone(&permits), stop.clone());
            std::thread::spawn(move || permits.acquire(&stop).is_some())
        };
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !waiter.is_finished(),
            "the second waits while the first holds"
        );
        drop(first);
        assert!(waiter.join().expect("no panic"), "freed permit taken");
        let _held = permits.acquire(&stop).expect("returned on drop");
        let blocked = {
            let (permits, stop) = (Arc::clone(&permits), stop.clone());
            std::thread::spawn(move || permits.acquire(&stop).is_none())
        };
        stop.trigger();
        assert!(blocked.join().expect("no panic"), "a stop ends the wait");
    }
}
