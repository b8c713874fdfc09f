//! Which consumed offsets are finished, per partition: the rule behind at-least-once.
//!
//! A record is *finished* when every message it caused (alert, verdict, or dead letter; possibly
//! none, for an approved transaction without a verdicts topic) has been acknowledged by the
//! broker. The offset to commit for a partition is one past the last record of the longest
//! finished prefix: a record finished out of order (its partition's earlier verdict still in
//! flight) waits. Kafka offsets are not contiguous integers (transaction markers, compaction), so
//! the tracker follows the offsets it was actually given, in the order it was given them (which
//! is the partition's order, since one thread reads each partition).
//!
//! Acknowledgements carry the *epoch* of the assignment they belong to: after a partition is
//! revoked and assigned again, a late acknowledgement from before cannot advance the new
//! assignment's commit point.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Marks a record read but not yet processed (its number of outputs is not known yet).
const UNPROCESSED: u32 = u32::MAX;

#[derive(Debug)]
struct Entry {
    offset: i64,
    /// Outputs still waiting for their acknowledgement.
    remaining: u32,
}

#[derive(Debug, Default)]
struct PartitionState {
    epoch: u64,
    pending: VecDeque<Entry>,
    /// Next offset to commit (one past the finished prefix), once anything has finished.
    committable: Option<i64>,
    /// The last offset handed to the consumer's commit.
    committed: Option<i64>,
    /// The newest offset begun in this assignment: an offset at or before it is a record
    /// delivered again (a broker answering a fetch with records already fetched), not a new one.
    last_begun: Option<i64>,
}

impl PartitionState {
    fn advance(&mut self) {
        while self.pending.front().is_some_and(|e| e.remaining == 0) {
            if let Some(e) = self.pending.pop_front() {
                self.committable = Some(e.offset + 1);
            }
        }
    }

    /// The pending entry of `offset`. Offsets are nearly always consecutive, so the entry is
    /// found at `offset - first` without searching; a gap (transaction markers, compaction)
    /// falls back to a binary search. With many records in flight, a search per
    /// acknowledgement is a visible share of a scoring thread's time (BENCHMARKS.md).
    fn entry(&mut self, offset: i64) -> Option<&mut Entry> {
        let first = self.pending.front()?.offset;
        let guess = usize::try_from(offset.checked_sub(first)?).ok()?;
        let i = if self.pending.get(guess).is_some_and(|e| e.offset == offset) {
            guess
        } else {
            self.pending
                .binary_search_by_key(&offset, |e| e.offset)
                .ok()?
        };
        self.pending.get_mut(i)
    }
}

/// Per-partition finished-offset bookkeeping shared by the reading thread, the scoring threads
/// and the producer's delivery callback. See the module docs.
///
/// Every record costs one lock to begin, one to learn its output count (taken once per batch
/// with [`OffsetTracker::expect_many`]) and one per acknowledgement; the condition variable is
/// signalled only while someone waits in [`OffsetTracker::wait_finished`] (a notification is a
/// system call, which per record would cost more than the bookkeeping itself).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: Mutex<Parts>,
    changed: Condvar,
    failure: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Parts {
    map: HashMap<i32, PartitionState>,
    /// Threads inside `wait_finished` (read and written under the lock, so no wake-up is lost).
    waiters: usize,
}

impl std::ops::Deref for Parts {
    type Target = HashMap<i32, PartitionState>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Parts {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

/// Why [`OffsetTracker::begin`] refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its partition is not assigned here.
    NotAssigned,
    /// Its offset was already read in this assignment (up to `last`).
    Again { last: i64 },
}

/// What a token needs to acknowledge an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub partition: i32,
    pub offset: i64,
    pub epoch: u64,
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    fn lock(&self) -> MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes `wait_finished` callers, if any (called with the lock held).
    fn notify(&self, parts: &Parts) {
        if parts.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Starts tracking `partition` afresh (it was just assigned).
    pub fn assign(&self, partition: i32) {
        let mut parts = self.lock();
        let epoch = parts.get(&partition).map_or(0, |p| p.epoch) + 1;
        parts.insert(
            partition,
            PartitionState {
                epoch,
                ..PartitionState::default()
            },
        );
    }

    /// Stops tracking `partition` (revoked); its late acknowledgements are ignored.
    pub fn revoke(&self, partition: i32) {
        let mut parts = self.lock();
        if let Some(p) = parts.get_mut(&partition) {
            p.epoch += 1;
            p.pending.clear();
            p.committable = None;
            p.committed = None;
            p.last_begun = None;
        }
        self.notify(&parts);
    }

    /// A record was read. Returns its slot, or why it must not be processed: its partition is
    /// not assigned, or it is a record already read in this assignment (delivered again: the
    /// first delivery is the one that counts, so offsets never go backwards and nothing is
    /// scored twice).
    pub fn begin(&self, partition: i32, offset: i64) -> Result<Slot, Skip> {
        let mut parts = self.lock();
        let p = parts.get_mut(&partition).ok_or(Skip::NotAssigned)?;
        if let Some(last) = p.last_begun.filter(|&last| offset <= last) {
            return Err(Skip::Again { last });
        }
        p.last_begun = Some(offset);
        p.pending.push_back(Entry {
            offset,
            remaining: UNPROCESSED,
        });
        Ok(Slot {
            partition,
            offset,
            epoch: p.epoch,
        })
    }

    /// The record of `slot` was processed and caused `outputs` messages (0 finishes it now).
    /// Must be called before any of those messages is sent.
    pub fn expect(&self, slot: Slot, outputs: u32) {
        self.expect_many(&[(slot, outputs)]);
    }

    /// [`OffsetTracker::expect`] for many records under one lock.
    pub fn expect_many(&self, records: &[(Slot, u32)]) {
        let mut parts = self.lock();
        for &(slot, outputs) in records {
            let Some(p) = parts
                .get_mut(&slot.partition)
                .filter(|p| p.epoch == slot.epoch)
            else {
                continue;
            };
            if let Some(e) = p.entry(slot.offset) {
                e.remaining = outputs;
            }
            p.advance();
        }
        self.notify(&parts);
    }

    /// One output of the record of `slot` was acknowledged.
    pub fn ack(&self, slot: Slot) {
        let mut parts = self.lock();
        let Some(p) = parts
            .get_mut(&slot.partition)
            .filter(|p| p.epoch == slot.epoch)
        else {
            return;
        };
        let Some(e) = p.entry(slot.offset) else {
            return;
        };
        if e.remaining != UNPROCESSED && e.remaining > 0 {
            e.remaining -= 1;
            if e.remaining == 0 {
                p.advance();
                self.notify(&parts);
            }
        }
    }

    /// Records a failure that must stop the pipeline (an output the broker refused for good).
    /// The partition's commit point stays before the failed record.
    pub fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        drop(f);
        // Taking the lock orders this with a waiter between its check and its wait.
        let parts = self.lock();
        self.notify(&parts);
    }

    /// The first failure recorded, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Offsets to commit now: for each partition whose commit point moved since the last call,
    /// `(partition, next offset)`. Marks them as handed over.
    pub fn take_commits(&self) -> Vec<(i32, i64)> {
        let mut parts = self.lock();
        let mut out = Vec::new();
        for (&partition, p) in parts.iter_mut() {
            if let Some(c) = p.committable {
                if p.committed != Some(c) {
                    p.committed = Some(c);
                    out.push((partition, c));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// The commit points of `partitions` (those that have one), whether or not already taken.
    pub fn commit_points(&self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let parts = self.lock();
        partitions
            .iter()
            .filter_map(|p| Some((*p, parts.get(p)?.committable?)))
            .collect()
    }

    /// Records read and not finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.lock().values().map(|p| p.pending.len()).sum()
    }

    /// What is still unfinished, per partition of `partitions` (all if `None`): how many
    /// records and the oldest one's offset and outputs outstanding (`u32::MAX`: not processed
    /// yet), for the message when waiting for them timed out.
    pub fn unfinished(&self, partitions: Option<&[i32]>) -> String {
        let parts = self.lock();
        let mut out: Vec<String> = parts
            .iter()
            .filter(|(k, p)| partitions.is_none_or(|set| set.contains(k)) && !p.pending.is_empty())
            .map(|(k, p)| {
                let front = p
                    .pending
                    .front()
                    .map_or((0, 0), |e| (e.offset, e.remaining));
                format!(
                    "partition {k}: {} records, the oldest at offset {} waiting for {}",
                    p.pending.len(),
                    front.0,
                    if front.1 == UNPROCESSED {
                        "scoring".to_string()
                    } else {
                        format!("{} acknowledgements", front.1)
                    }
                )
            })
            .collect();
        out.sort();
        out.join("; ")
    }

    /// Waits until every record of `partitions` (all partitions if `None`) is finished, a failure
    /// is recorded, or `timeout` passes. Returns whether they all finished.
    pub fn wait_finished(&self, partitions: Option<&[i32]>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut parts = self.lock();
        loop {
            let busy = parts.iter().any(|(k, p)| {
                partitions.is_none_or(|set| set.contains(k)) && !p.pending.is_empty()
            });
            if !busy {
                return true;
            }
            if self.failure().is_some() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            parts.waiters += 1;
            parts = self
                .changed
                .wait_timeout(parts, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            parts.waiters -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_finished_prefix() {
        let t = OffsetTracker::new();
        t.assign(0);
        let a = t.begin(0, 10).expect("assigned");
        let b = t.begin(0, 11).expect("assigned");
        let c = t.begin(0, 13).expect("assigned"); // a gap: offset 12 does not exist
        t.expect(a, 2);
        t.expect(b, 1);
        t.expect(c, 0);
        // c is finished, but a and b are not: nothing to commit.
        assert!(t.take_commits().is_empty());
        t.ack(b);
        assert!(t.take_commits().is_empty());
        t.ack(a);
        assert!(
            t.take_commits().is_empty(),
            "a still has one output in flight"
        );
        t.ack(a);
        assert_eq!(t.take_commits(), vec![(0, 14)]);
        assert!(t.take_commits().is_empty(), "handed over once");
        assert_eq!(t.in_flight(), 0);
        assert!(t.wait_finished(None, Duration::from_millis(1)));
    }

    #[test]
    fn unprocessed_records_hold_the_commit_point() {
        let t = OffsetTracker::new();
        t.assign(3);
        let a = t.begin(3, 0).expect("assigned");
        let b = t.begin(3, 1).expect("assigned");
        t.expect(b, 0);
        // An early acknowledgement for a record not yet processed changes nothing.
        t.ack(a);
        assert!(t.take_commits().is_empty());
        assert!(!t.wait_finished(Some(&[3]), Duration::from_millis(5)));
        t.expect(a, 0);
        assert_eq!(t.take_commits(), vec![(3, 2)]);
    }

    #[test]
    fn a_record_delivered_again_is_skipped_and_commits_go_on() {
        let t = OffsetTracker::new();
        t.assign(0);
        let a = t.begin(0, 395).expect("assigned");
        let b = t.begin(0, 396).expect("assigned");
        // The broker answers a later fetch with records already delivered.
        assert_eq!(t.begin(0, 395), Err(Skip::Again { last: 396 }));
        assert_eq!(t.begin(0, 396), Err(Skip::Again { last: 396 }));
        let c = t.begin(0, 397).expect("a new record");
        for s in [a, b, c] {
            t.expect(s, 0);
        }
        assert_eq!(t.take_commits(), vec![(0, 398)]);
        assert!(
            t.wait_finished(None, Duration::ZERO),
            "{}",
            t.unfinished(None)
        );
        // A new assignment starts over.
        t.revoke(0);
        t.assign(0);
        assert!(t.begin(0, 395).is_ok());
    }

    #[test]
    fn acknowledgements_from_a_previous_assignment_are_ignored() {
        let t = OffsetTracker::new();
        t.assign(1);
        let old = t.begin(1, 5).expect("assigned");
        t.expect(old, 1);
        t.revoke(1);
        assert_eq!(t.begin(2, 0), Err(Skip::NotAssigned));
        t.assign(1);
        let new = t.begin(1, 5).expect("assigned");
        t.expect(new, 1);
        t.ack(old);
        assert!(
            t.take_commits().is_empty(),
            "stale ack must not finish the new record"
        );
        t.ack(new);
        assert_eq!(t.take_commits(), vec![(1, 6)]);
        assert_eq!(t.commit_points(&[1, 2]), vec![(1, 6)]);
    }

    #[test]
    fn waiting_ends_on_failure() {
        let t = OffsetTracker::new();
        t.assign(0);
        let a = t.begin(0, 0).expect("assigned");
        t.expect(a, 1);
        t.fail("broker refused".into());
        assert!(!t.wait_finished(None, Duration::from_secs(5)));
        assert_eq!(t.failure().as_deref(), Some("broker refused"));
    }
}
