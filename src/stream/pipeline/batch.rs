//! Reader-side batching: records on their way from the reader thread to the scoring threads
//! (at-least-once), or the one record the exactly-once reader scores inline.

use std::ops::Range;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use crate::stream::offsets::Slot;

/// Most records handed from the reader to a worker at once. The reader hands over a partial
/// batch as soon as the consumer has nothing more ready, so batching adds no waiting; under load
/// it turns one thread wake-up, one allocation and one tracker lock per record into one per
/// batch.
pub(super) const MAX_BATCH: usize = 256;

/// Longest a record waits in a partial batch while the consumer keeps returning records of other
/// partitions.
pub(super) const MAX_BATCH_DELAY: Duration = Duration::from_millis(2);

/// One record handed from the reader to a worker; its bytes live in its [`Batch`].
pub(super) struct Job {
    pub(super) slot: Slot,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    pub(super) broker_ms: i64,
}

/// Records handed from the reader to a worker together, their keys and payloads in one buffer.
#[derive(Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    pub(super) jobs: Vec<Job>,
}

impl Batch {
    pub(super) fn push(
        &mut self,
        slot: Slot,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        broker_ms: i64,
    ) {
        let key = key.map(|k| append(&mut self.bytes, k));
        let payload = payload.map(|p| append(&mut self.bytes, p));
        self.jobs.push(Job {
            slot,
            key,
            payload,
            broker_ms,
        });
    }

    /// Empties the batch, keeping its buffers for the next records.
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.jobs.clear();
    }

    pub(super) fn key(&self, job: &Job) -> Option<&[u8]> {
        job.key.clone().and_then(|r| self.bytes.get(r))
    }

    pub(super) fn payload(&self, job: &Job) -> Option<&[u8]> {
        job.payload.clone().and_then(|r| self.bytes.get(r))
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }
}

/// Appends `bytes` to `buf`; returns where they are.
pub(super) fn append(buf: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = buf.len();
    buf.extend_from_slice(bytes);
    start..buf.len()
}

/// The reader's batches on their way to the workers. Lives in the state shared with the
/// rebalance callbacks because a revocation (inside `poll`) must hand over what is pending
/// before it waits for the revoked partitions.
pub(super) struct Pending {
    batches: Vec<Batch>,
    senders: Vec<SyncSender<Batch>>,
}

impl Pending {
    /// One partial batch per worker queue in `senders` (at least one).
    pub(super) fn new(senders: Vec<SyncSender<Batch>>) -> Pending {
        Pending {
            batches: (0..senders.len()).map(|_| Batch::default()).collect(),
            senders,
        }
    }

    /// Queues a record for the worker that owns its partition; hands the batch over when full.
    pub(super) fn push(
        &mut self,
        slot: Slot,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        broker_ms: i64,
    ) -> Result<(), ()> {
        let w = (slot.partition.unsigned_abs() as usize) % self.senders.len();
        self.batches[w].push(slot, key, payload, broker_ms);
        if self.batches[w].len() >= MAX_BATCH {
            self.flush(w)?;
        }
        Ok(())
    }

    fn flush(&mut self, w: usize) -> Result<(), ()> {
        if self.batches[w].jobs.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batches[w]);
        // Blocks while the worker's queue is full: backpressure reaches the consumer.
        self.senders[w].send(batch).map_err(|_| ())
    }

    /// Hands every partial batch to its worker; `Err` if a worker has stopped.
    pub(super) fn flush_all(&mut self) -> Result<(), ()> {
        let mut result = Ok(());
        for w in 0..self.batches.len() {
            if self.flush(w).is_err() {
                result = Err(());
            }
        }
        result
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.iter().all(|b| b.jobs.is_empty())
    }
}
