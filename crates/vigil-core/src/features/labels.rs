//! Labels: when they become known ([`LabelSchedule`], the rule that keeps offline features
//! equal to online ones) and where the engine finds the transaction a label names
//! ([`LabelIndex`], a second hash table beside the entity tables).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::snapshot::{Bad, Reader, Writer};
use super::table::prefetch;
use crate::record::{LabelEvent, Transaction};

/// Pending labels of a history, delivered when they become known.
///
/// A history row carries its own label; a live system would only learn it later (`label_time`,
/// else `timestamp + label_latency`). Merging the labels back into the transaction stream at
/// their `known_at` is what keeps offline features (training) equal to online ones (serving), so
/// every caller that replays history should do it the same way. [`Shard`](super::Shard) runs
/// the loop below around a [`FeatureEngine`](super::FeatureEngine) (and [`replay`](super::replay)
/// runs shards): use it rather than writing the loop again.
///
/// Typical loop: for each transaction, first deliver [`due`](Self::due)`(tx.timestamp_ms)` to the
/// engine, then process the transaction, then [`push`](Self::push) it; at the end deliver
/// [`drain_all`](Self::drain_all).
#[derive(Debug, Default)]
pub struct LabelSchedule {
    default_latency_ms: i64,
    /// Min-heap on `(known_at, insertion order)`.
    pending: BinaryHeap<Reverse<Pending>>,
    pushed: u64,
}

/// A queued label, ordered by `(known_at, seq)`; `seq` makes ties deterministic (insertion order).
#[derive(Debug)]
struct Pending {
    known_at_ms: i64,
    seq: u64,
    label: LabelEvent,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.known_at_ms, self.seq) == (other.known_at_ms, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.known_at_ms, self.seq).cmp(&(other.known_at_ms, other.seq))
    }
}

impl LabelSchedule {
    /// An empty schedule; rows without `label_time` get
    /// `known_at = timestamp + default_latency_ms`.
    pub fn new(default_latency_ms: i64) -> Self {
        LabelSchedule {
            default_latency_ms,
            pending: BinaryHeap::new(),
            pushed: 0,
        }
    }

    /// Queues the label `tx` carries, if any.
    pub fn push(&mut self, tx: &Transaction) {
        if let Some(label) = tx.label_event(self.default_latency_ms) {
            self.push_label(label);
        }
    }

    /// Queues a label that arrived on its own (the live labels feed).
    pub fn push_label(&mut self, label: LabelEvent) {
        self.pending.push(Reverse(Pending {
            known_at_ms: label.known_at_ms,
            seq: self.pushed,
            label,
        }));
        self.pushed += 1;
    }

    /// Removes and yields the labels known at or before `now_ms`, in `known_at` order (ties in
    /// insertion order). Labels not consumed from the iterator stay queued.
    pub fn due(&mut self, now_ms: i64) -> impl Iterator<Item = LabelEvent> + '_ {
        std::iter::from_fn(move || {
            if self.pending.peek()?.0.known_at_ms > now_ms {
                return None;
            }
            self.pending.pop().map(|Reverse(p)| p.label)
        })
    }

    /// Removes and yields everything still pending, in the same order as [`due`](Self::due).
    pub fn drain_all(&mut self) -> impl Iterator<Item = LabelEvent> + '_ {
        self.due(i64::MAX)
    }

    /// Number of labels still pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no label is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The schedule as snapshot bytes (pending labels with their order).
    pub(super) fn encode(&self, w: &mut Writer) {
        w.i64(self.default_latency_ms);
        w.u64(self.pushed);
        w.u64(self.pending.len() as u64);
        for Reverse(p) in &self.pending {
            w.i64(p.known_at_ms);
            w.u64(p.seq);
            w.u8(u8::from(p.label.fraud));
            w.str(&p.label.transaction_id);
        }
    }

    /// The schedule [`encode`](Self::encode) wrote.
    pub(super) fn decode(r: &mut Reader<'_>) -> Result<LabelSchedule, Bad> {
        let default_latency_ms = r.i64()?;
        let pushed = r.u64()?;
        let n = r.count(21)?;
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            let known_at_ms = r.i64()?;
            let seq = r.u64()?;
            let fraud = r.u8()? != 0;
            let transaction_id = r.str()?;
            pending.push(Reverse(Pending {
                known_at_ms,
                seq,
                label: LabelEvent {
                    transaction_id,
                    fraud,
                    known_at_ms,
                },
            }));
        }
        Ok(LabelSchedule {
            default_latency_ms,
            pending: BinaryHeap::from(pending),
            pushed,
        })
    }
}

/// Where a held transaction is, for applying its label later.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    /// Window time of the transaction.
    pub(super) ts: i64,
    /// Its entity keys, by `Entity` discriminant.
    pub(super) keys: [u64; 2],
    /// High 32 bits of its id hash (`Ev::tag`), to find it among same-time events.
    pub(super) tag: u32,
}

/// Transaction-id hash -> where the transaction is held, for labels. Split into generations by
/// the watermark at insertion, so expired entries go a whole generation at a time instead of
/// one random memory access per evicted event.
///
/// Every stored transaction is inserted, so at a million cards this is a random write into
/// ~10M entries for every event. Each generation is therefore an append-only log of entries
/// plus a small open-addressing index into it ([`HeldTable`]), whose slot for a hash is known
/// before the insert: [`LabelIndex::prefetch`] starts that miss together with the entities'.
#[derive(Debug, Default)]
pub(super) struct LabelIndex {
    /// Oldest first: (generation number, largest held time in it, entries).
    gens: VecDeque<(i64, i64, HeldTable)>,
    gen_ms: i64,
}

impl LabelIndex {
    pub(super) fn new(retention_ms: i64) -> LabelIndex {
        LabelIndex {
            gens: Default::default(),
            gen_ms: (retention_ms / 8).max(1000),
        }
    }

    /// Records that transaction-id hash `tx` is held at `held`, in the generation of
    /// `watermark`.
    #[inline]
    pub(super) fn insert(&mut self, watermark: i64, tx: u64, held: Held) {
        let g = watermark.div_euclid(self.gen_ms);
        if self.gens.back().is_none_or(|b| b.0 != g) {
            // Sized like the previous generation: traffic is steady, and growing an index of a
            // million entries by doubling would move every entry twice, each a cache miss.
            let size = self.gens.back().map_or(0, |b| b.2.len() + b.2.len() / 8);
            self.gens
                .push_back((g, i64::MIN, HeldTable::with_capacity(size)));
        }
        if let Some(back) = self.gens.back_mut() {
            back.1 = back.1.max(held.ts);
            back.2.insert(tx, held);
        }
    }

    /// Starts loading the index slot [`insert`](Self::insert) will probe first for `tx`.
    #[inline]
    pub(super) fn prefetch(&self, tx: u64) {
        if let Some(back) = self.gens.back() {
            back.2.prefetch(tx);
        }
    }

    /// The latest processed transaction with this id hash.
    #[inline]
    pub(super) fn get(&self, tx: u64) -> Option<&Held> {
        self.gens.iter().rev().find_map(|g| g.2.get(tx))
    }

    /// Drops generations whose every entry is at or before `horizon`.
    #[inline]
    pub(super) fn expire(&mut self, horizon: i64) {
        while self.gens.front().is_some_and(|g| g.1 <= horizon) && self.gens.len() > 1 {
            self.gens.pop_front();
        }
        if self.gens.len() == 1 && self.gens[0].1 <= horizon {
            self.gens.clear();
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.gens.iter().map(|g| g.2.heap_bytes()).sum()
    }

    /// The index as snapshot bytes: each generation's entries in insertion order.
    pub(super) fn encode(&self, w: &mut Writer) {
        w.i64(self.gen_ms);
        w.u64(self.gens.len() as u64);
        for (g, max_ts, table) in &self.gens {
            w.i64(*g);
            w.i64(*max_ts);
            w.u64(table.entries.len() as u64);
            for (tx, held) in &table.entries {
                w.u64(*tx);
                w.i64(held.ts);
                w.u64(held.keys[0]);
                w.u64(held.keys[1]);
                w.u32(held.tag);
            }
        }
    }

    /// The index [`encode`](Self::encode) wrote, for a spec whose generations are `gen_ms`
    /// long (refused otherwise).
    pub(super) fn decode(r: &mut Reader<'_>, retention_ms: i64) -> Result<LabelIndex, Bad> {
        let mut index = LabelIndex::new(retention_ms);
        let gen_ms = r.i64()?;
        if gen_ms != index.gen_ms {
            return Err(Bad(format!(
                "label index generations of {gen_ms} ms, the spec's are {} ms",
                index.gen_ms
            )));
        }
        let n = r.count(24)?;
        for _ in 0..n {
            let g = r.i64()?;
            let max_ts = r.i64()?;
            let len = r.count(36)?;
            let mut table = HeldTable::with_capacity(len);
            for _ in 0..len {
                let tx = r.u64()?;
                let held = Held {
                    ts: r.i64()?,
                    keys: [r.u64()?, r.u64()?],
                    tag: r.u32()?,
                };
                table.insert(tx, held);
            }
            index.gens.push_back((g, max_ts, table));
        }
        Ok(index)
    }
}

/// One label-index generation: entries in insertion order, and a linear-probing index (at most
/// half full) of 8-byte slots: the high 32 bits of the hash and 1 + the entry's position, 0 for
/// an empty slot. Eight slots share a cache line, so a probe sequence rarely leaves the home
/// line. A slot whose 32 bits match is confirmed against the entry's full hash.
#[derive(Debug, Default)]
struct HeldTable {
    slots: Vec<u64>,
    entries: Vec<(u64, Held)>,
}

impl HeldTable {
    fn with_capacity(n: usize) -> HeldTable {
        HeldTable {
            slots: vec![0; (n * 2).next_power_of_two().max(64)],
            entries: Vec::with_capacity(n),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 8 + self.entries.capacity() * std::mem::size_of::<(u64, Held)>()
    }

    #[inline]
    fn home(&self, tx: u64) -> usize {
        // FxHash outputs: the well-mixed high bits are rotated down to the low ones already.
        (tx as usize) & (self.slots.len() - 1)
    }

    #[inline]
    fn prefetch(&self, tx: u64) {
        if !self.slots.is_empty() {
            prefetch(self.slots.as_ptr().wrapping_add(self.home(tx)).cast());
        }
    }

    /// Index of the slot holding `tx`, or of the empty slot where it would go.
    #[inline]
    fn find(&self, tx: u64) -> usize {
        let mask = self.slots.len() - 1;
        let fp = tx >> 32;
        let mut i = self.home(tx);
        loop {
            let s = self.slots[i];
            if s == 0 || (s >> 32 == fp && self.entries[(s as u32 - 1) as usize].0 == tx) {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Inserts, or points an existing hash at the new entry (a reused id means its latest
    /// transaction).
    #[inline]
    fn insert(&mut self, tx: u64, held: Held) {
        if self.slots.is_empty() || (self.entries.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let i = self.find(tx);
        self.entries.push((tx, held));
        // Generations hold an eighth of the retention; u32 positions are plenty.
        let pos = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.slots[i] = (tx >> 32) << 32 | u64::from(pos);
    }

    #[inline]
    fn get(&self, tx: u64) -> Option<&Held> {
        if self.slots.is_empty() {
            return None;
        }
        match self.slots[self.find(tx)] {
            0 => None,
            s => self.entries.get((s as u32 - 1) as usize).map(|e| &e.1),
        }
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        let mask = cap - 1;
        for s in old.into_iter().filter(|&s| s != 0) {
            let tx = self.entries[(s as u32 - 1) as usize].0;
            let mut i = self.home(tx);
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(id: &str, ts: i64, label: Option<bool>, label_time: Option<i64>) -> Transaction {
        Transaction {
            transaction_id: id.to_string(),
            timestamp_ms: ts,
            card_id: "c".to_string(),
            merchant_id: "m".to_string(),
            amount: 1.0,
            label,
            label_time_ms: label_time,
            currency: None,
            mcc: None,
            country: None,
            channel: None,
            lat: None,
            lon: None,
        }
    }

    fn ids(it: impl Iterator<Item = LabelEvent>) -> Vec<String> {
        it.map(|l| l.transaction_id).collect()
    }

    #[test]
    fn label_schedule_orders_by_known_at_then_insertion() {
        let mut s = LabelSchedule::new(100);
        s.push(&tx("a", 0, Some(true), None)); // known 100
        s.push(&tx("b", 10, Some(false), Some(50))); // known 50
        s.push(&tx("c", 20, None, None)); // unlabelled: not queued
        s.push(&tx("d", 30, Some(true), Some(100))); // known 100, after "a"
        s.push(&tx("e", 40, Some(true), None)); // known 140
        assert_eq!(s.len(), 4);
        assert!(ids(s.due(49)).is_empty());
        assert_eq!(ids(s.due(50)), ["b"]);
        assert_eq!(ids(s.due(100)), ["a", "d"]);
        let rest: Vec<LabelEvent> = s.drain_all().collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].transaction_id, "e");
        assert_eq!(rest[0].known_at_ms, 140);
        assert!(rest[0].fraud);
        assert!(s.is_empty());
    }

    #[test]
    fn label_schedule_keeps_unconsumed_labels() {
        let mut s = LabelSchedule::new(0);
        s.push(&tx("a", 1, Some(true), None));
        s.push(&tx("b", 2, Some(true), None));
        assert_eq!(s.due(5).next().map(|l| l.transaction_id), Some("a".into()));
        assert_eq!(ids(s.drain_all()), ["b"]);
    }

    fn held(ts: i64) -> Held {
        Held {
            ts,
            keys: [ts as u64, 0],
            tag: 0,
        }
    }

    /// The label index's table against a `HashMap` model: growth from empty, replaced ids,
    /// hashes sharing their high 32 bits (the slots' fingerprint) or their home slot, and 0.
    #[test]
    fn held_table_matches_a_map() {
        let mut table = HeldTable::with_capacity(0);
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut prev = 0u64;
        for i in 0..20_000i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            const HI: u64 = 0xFFFF_FFFF_0000_0000;
            let tx = match i % 6 {
                // The previous hash's fingerprint, another home slot.
                0 => (prev & HI) | (x & 0xFFFF),
                // The previous hash's fingerprint and home slot (the index has at most 2^16
                // slots here), another hash.
                1 => prev | (1 << 31),
                // A reused id.
                2 if i > 100 => *model.keys().next().expect("non-empty"),
                3 if i == 3 => 0,
                _ => x,
            };
            table.insert(tx, held(i));
            model.insert(tx, i);
            prev = tx;
        }
        assert_eq!(table.len(), 20_000);
        assert!(table.slots.len() <= 1 << 16);
        for (&tx, &ts) in &model {
            assert_eq!(table.get(tx).map(|h| h.ts), Some(ts), "hash {tx:#x}");
        }
        assert!(table.get(0xDEAD_BEEF).is_none());
    }
}
