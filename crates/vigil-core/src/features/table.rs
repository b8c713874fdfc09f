//! Entity state storage: an open-addressing table of entities, each with one heap block holding
//! its running aggregates followed by its events, stored column by column.
//!
//! # Why this layout
//!
//! At a million cards, nearly every event's state is a cache miss, and a miss costs far more
//! than the arithmetic of an event (BENCHMARKS.md, "Figures moved from code comments
//! (vigil-core)"), so what sets the speed is how many cache lines an event touches and how many
//! of those loads depend on each other:
//!
//! 1. The [`EntityBlock`] (64 bytes, one cache line) sits directly in the table, at the slot
//!    the key hashes to (linear probing at most half full, so it is nearly always the home
//!    slot). Its address is known from the hash alone, so [`EntityTable::prefetch_home`] can
//!    start that load before anything else.
//! 2. Everything else about the entity is one contiguous block: first the running aggregates
//!    of each window length and each risk window, then the events **column by column** (times,
//!    amounts, and only the other columns the table's features read, see [`Columns`]). Moving a
//!    window edge reads one time and one amount; as columns, eight times and sixteen amounts
//!    share a cache line, so a merchant's seven window edges cost a fraction of a line each
//!    instead of a line each; a card's distinct-merchant scan reads 4 bytes per event, not a
//!    whole event.
//!
//! Events leave from the front by bumping `head`; the columns are compacted when the dead
//! prefix is at least as long as the live part, so removal is amortised O(1).
//!
//! Keys are 64-bit hashes of the entity ids; 0 marks an empty slot (a real hash of 0 is stored
//! as 1, see [`key_of_hash`]).
//!
//! # Access
//!
//! A block can only be read with the layout it was allocated with, its table's. So the table
//! hands entities out as [`EntityRef`] / [`EntityMut`], which pair an entity with that layout:
//! callers never pass a layout, and no safe code can pass the wrong one. The handles are two
//! pointers, as the `(entity, layout)` pair they replace, and every method on them is inlined
//! into a call of the block's own (`unsafe`, private) method.

use std::mem::size_of;

use super::snapshot::{Bad, Reader, Writer};

/// `known_at` of an event without a label.
pub(super) const NO_LABEL: i64 = i64::MAX;

/// Bit 31 of [`Ev::bits`]: the latest label says fraud.
pub(super) const FRAUD_BIT: u32 = 1 << 31;

/// One event, as the engine builds it and as slow paths read it back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Ev {
    /// Window time (the event time, or the clamped time of a too-late event).
    pub ts: i64,
    /// When the label became known; [`NO_LABEL`] when there is none.
    pub known_at: i64,
    pub amount: f32,
    /// High 32 bits of the transaction-id hash: finds the event again for a label or a
    /// duplicate (always together with its exact time, so a collision needs the same entity,
    /// the same millisecond and the same 32 bits).
    pub tag: u32,
    /// NaN when the transaction has no location.
    pub lat: f32,
    pub lon: f32,
    /// Hashes of the card, merchant and country ids (0 when missing or not read by the spec).
    pub attrs: [u32; 3],
    /// Bits 0-15: MCC + 1 (0 when missing); bit 31: [`FRAUD_BIT`].
    pub bits: u32,
}

impl Ev {
    pub fn located(&self) -> bool {
        !self.lat.is_nan()
    }
}

/// Which optional per-event columns a table stores (times and amounts always are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Columns {
    /// `known_at` (risk features).
    pub known_at: bool,
    /// `bits` (risk features: fraud; distinct MCC).
    pub bits: bool,
    /// `tag` (labels, de-duplication).
    pub tag: bool,
    /// `lat`, `lon` (travel speed).
    pub loc: bool,
    /// `attrs[i]` (distinct counts, "changed" flags).
    pub attrs: [bool; 3],
}

/// Running aggregates of one window length over `events[start..]` (indices relative to the
/// live events). 48 bytes with explicit padding.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub(super) struct RunWin {
    pub start: u32,
    pub n: u32,
    /// `events[start].ts`, or `i64::MAX` when the window is empty: lets an unchanged window
    /// edge be checked without touching event memory.
    pub exit_ts: i64,
    pub sum: f64,
    pub sumsq: f64,
    pub max: f32,
    /// 0 when the element holding `max` left; the next advance rescans.
    pub max_ok: u32,
    pub _pad: [u64; 1],
}

/// Running counts of one delayed risk window over `events[lo..hi]`. 48 bytes with explicit
/// padding.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub(super) struct RunRisk {
    pub lo: u32,
    pub hi: u32,
    /// `events[lo].ts` when `lo < hi`, else `i64::MAX`.
    pub lo_ts: i64,
    /// `events[hi].ts`, or `i64::MAX` when `hi` is past the end.
    pub hi_ts: i64,
    pub n: u32,
    /// Events in the window whose latest label says fraud (whatever its `known_at`).
    pub fraud: u32,
    pub _pad: [u64; 2],
}

const AGG_BYTES: usize = 48;

const _: () = {
    assert!(size_of::<RunWin>() == AGG_BYTES);
    assert!(size_of::<RunRisk>() == AGG_BYTES);
    assert!(size_of::<EntityBlock>() == 64);
};

/// Byte offsets of a block's parts for a given capacity.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    ts: usize,
    known_at: usize,
    amount: usize,
    bits: usize,
    tag: usize,
    lat: usize,
    lon: usize,
    attrs: [usize; 3],
    /// Total bytes.
    end: usize,
}

/// The block layout of a table: aggregate counts and columns, fixed at construction.
///
/// A column's byte offset in a block of capacity `cap` is `aggs_bytes + before * cap`, where
/// `before` is the summed value size of the stored columns ahead of it: one multiply-add.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    n_wins: usize,
    n_risks: usize,
    cols: Columns,
    aggs_bytes: usize,
    /// `before` of each column, in [`Offsets`] field order (ts, known_at, amount, bits, tag,
    /// lat, lon, attrs 0-2), then the row size.
    before: [usize; 11],
    /// Value size of each column in the same order, 0 for a column the table does not store.
    sizes: [usize; 10],
}

impl Layout {
    pub fn new(n_wins: usize, n_risks: usize, cols: Columns) -> Layout {
        let c = cols;
        let sizes = [
            (true, 8),
            (c.known_at, 8),
            (true, 4),
            (c.bits, 4),
            (c.tag, 4),
            (c.loc, 4),
            (c.loc, 4),
            (c.attrs[0], 4),
            (c.attrs[1], 4),
            (c.attrs[2], 4),
        ];
        let mut before = [0usize; 11];
        let mut stored = [0usize; 10];
        let mut acc = 0;
        for (i, &(present, size)) in sizes.iter().enumerate() {
            before[i] = acc;
            if present {
                stored[i] = size;
                acc += size;
            }
        }
        before[10] = acc;
        Layout {
            n_wins,
            n_risks,
            cols,
            aggs_bytes: (n_wins + n_risks) * AGG_BYTES,
            before,
            sizes: stored,
        }
    }

    /// `(byte offset, value size)` of every stored column in a block of capacity `cap`: what
    /// moving, copying or prefetching whole rows goes over.
    #[inline(always)]
    fn stored(&self, cap: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.sizes
            .iter()
            .zip(&self.before)
            .filter(|(&size, _)| size > 0)
            .map(move |(&size, &before)| (self.aggs_bytes + before * cap, size))
    }

    #[inline(always)]
    fn offsets(&self, cap: usize) -> Offsets {
        let at = |i: usize| self.aggs_bytes + self.before[i] * cap;
        Offsets {
            ts: at(0),
            known_at: at(1),
            amount: at(2),
            bits: at(3),
            tag: at(4),
            lat: at(5),
            lon: at(6),
            attrs: [at(7), at(8), at(9)],
            end: at(10),
        }
    }

    /// Byte offset of the time column.
    #[inline(always)]
    fn ts_offset(&self) -> usize {
        self.aggs_bytes
    }
}

/// The live events of an entity as column slices (all of the same length, or empty for a
/// column the table does not store).
#[derive(Debug, Clone, Copy)]
pub(super) struct Events<'a> {
    pub ts: &'a [i64],
    pub known_at: &'a [i64],
    pub amount: &'a [f32],
    pub bits: &'a [u32],
    pub tag: &'a [u32],
    pub lat: &'a [f32],
    pub lon: &'a [f32],
    pub attrs: [&'a [u32]; 3],
}

impl Events<'_> {
    /// No events (an entity not seen yet).
    pub const EMPTY: Events<'static> = Events {
        ts: &[],
        known_at: &[],
        amount: &[],
        bits: &[],
        tag: &[],
        lat: &[],
        lon: &[],
        attrs: [&[], &[], &[]],
    };

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn fraud(&self, i: usize) -> bool {
        self.bits[i] & FRAUD_BIT != 0
    }

    pub fn located(&self, i: usize) -> bool {
        !self.lat[i].is_nan()
    }

    /// Index of the first event with `ts > t` among the first `end`.
    #[inline]
    pub fn after(&self, t: i64, end: usize) -> usize {
        self.ts[..end].partition_point(|&x| x <= t)
    }
}

/// An entity: its key, event-time bookkeeping and its block. One cache line.
///
/// The block's parts sit at offsets its table's [`Layout`] computes, and reading them with any
/// other layout would read out of bounds or misaligned. So the methods that read or write the
/// block are private and `unsafe`, and outside this file an entity is only ever reached through
/// [`EntityRef`] / [`EntityMut`], which pair it with its own table's layout. Nothing outside
/// gets a `&mut EntityBlock` (it could be swapped into another table), only `&EntityBlock` for
/// the bookkeeping fields below.
#[repr(C, align(64))]
pub(super) struct EntityBlock {
    /// Hash of the entity id; 0 = empty slot.
    pub key: u64,
    /// The time the running aggregates' lower edges are positioned for, or `i64::MIN` when
    /// they must be rebuilt by a scan before use. Set through [`EntityMut::set_t_run`].
    pub t_run: i64,
    /// Time of the oldest held event, `i64::MAX` when none: eviction is checked against it
    /// without touching the block.
    pub front_ts: i64,
    /// Largest time among held events, `i64::MIN` when none: the sweep drops entities whose
    /// newest event has expired without touching their blocks.
    pub last_ts: i64,
    /// Index (in rows) of the first live event.
    head: u32,
    /// Rows in use (dead prefix included).
    rows: u32,
    /// Capacity in rows.
    cap: u32,
    /// Aggregates then columns, see [`Layout`]. 8-byte words so every column is aligned.
    block: Box<[u64]>,
}

impl std::fmt::Debug for EntityBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityBlock")
            .field("key", &self.key)
            .field("events", &self.len())
            .finish_non_exhaustive()
    }
}

/// Where an entity's live rows are, for building an [`Events`] view.
#[derive(Debug, Clone, Copy)]
struct RowsView {
    cap: usize,
    head: usize,
    len: usize,
}

impl RowsView {
    /// The live events read from `part`, the block from word `base_words` on (which must not
    /// cut into the event columns).
    ///
    /// # Safety
    /// `layout` and `self` must describe the block `part` is cut from (its table's layout, its
    /// own capacity and rows).
    #[inline]
    unsafe fn events_in<'a>(
        &self,
        layout: &Layout,
        part: &'a [u64],
        base_words: usize,
    ) -> Events<'a> {
        let o = layout.offsets(self.cap);
        let (h, n) = (self.head, self.len);
        let c = layout.cols;
        let base = base_words * 8;
        let opt = |present: bool| if present { n } else { 0 };
        // Absent columns have length 0 and any in-bounds offset.
        let at = |off: usize, size: usize, present: bool| {
            if present {
                off - base + size * h
            } else {
                0
            }
        };
        // SAFETY: the offsets come from the same layout and capacity the block was built with
        // (contract); every stored column holds `cap >= rows = h + n` values, so `[h, h + n)`
        // is inside; `part` starts at `base`, before every column; offsets of 8-byte columns
        // are multiples of 8 and of 4-byte ones multiples of 4 (and `base` is a multiple of 8).
        unsafe {
            Events {
                ts: col::<i64>(part, at(o.ts, 8, true), n),
                known_at: col::<i64>(part, at(o.known_at, 8, c.known_at), opt(c.known_at)),
                amount: col::<f32>(part, at(o.amount, 4, true), n),
                bits: col::<u32>(part, at(o.bits, 4, c.bits), opt(c.bits)),
                tag: col::<u32>(part, at(o.tag, 4, c.tag), opt(c.tag)),
                lat: col::<f32>(part, at(o.lat, 4, c.loc), opt(c.loc)),
                lon: col::<f32>(part, at(o.lon, 4, c.loc), opt(c.loc)),
                attrs: [
                    col::<u32>(part, at(o.attrs[0], 4, c.attrs[0]), opt(c.attrs[0])),
                    col::<u32>(part, at(o.attrs[1], 4, c.attrs[1]), opt(c.attrs[1])),
                    col::<u32>(part, at(o.attrs[2], 4, c.attrs[2]), opt(c.attrs[2])),
                ],
            }
        }
    }
}

/// Typed view of `len` values at byte offset `off` of a block.
///
/// # Safety
/// `off + len * size_of::<T>()` must be within `block`, `off` aligned for `T`, and `T` an
/// integer or float type (every bit pattern valid; blocks are always fully initialised).
#[inline(always)]
unsafe fn col<T>(block: &[u64], off: usize, len: usize) -> &[T] {
    debug_assert!(off + len * size_of::<T>() <= block.len() * 8);
    debug_assert_eq!(off % std::mem::align_of::<T>(), 0);
    // SAFETY: forwarded contract; u64 words are 8-aligned, so `off` aligned for T in the block is
    // aligned in memory.
    unsafe { std::slice::from_raw_parts(block.as_ptr().cast::<u8>().add(off).cast::<T>(), len) }
}

/// Mutable [`col`].
///
/// # Safety
/// As for [`col`].
#[inline(always)]
unsafe fn col_mut<T>(block: &mut [u64], off: usize, len: usize) -> &mut [T] {
    debug_assert!(off + len * size_of::<T>() <= block.len() * 8);
    // SAFETY: forwarded contract.
    unsafe {
        std::slice::from_raw_parts_mut(block.as_mut_ptr().cast::<u8>().add(off).cast::<T>(), len)
    }
}

impl EntityBlock {
    fn empty() -> EntityBlock {
        EntityBlock {
            key: 0,
            t_run: i64::MIN,
            front_ts: i64::MAX,
            last_ts: i64::MIN,
            head: 0,
            rows: 0,
            cap: 0,
            block: Box::new([]),
        }
    }

    fn new(key: u64, layout: &Layout, block: Option<Box<[u64]>>, cap: u32) -> EntityBlock {
        let (block, cap) = match block {
            Some(mut b) => {
                // Recycled: clear the aggregates (columns are written before they are read).
                let aggs = (layout.n_wins + layout.n_risks) * AGG_BYTES / 8;
                b[..aggs].fill(0);
                (b, cap)
            }
            None => {
                let cap = 4;
                let words = layout.offsets(cap).end.div_ceil(8);
                (vec![0u64; words].into_boxed_slice(), cap as u32)
            }
        };
        EntityBlock {
            key,
            t_run: i64::MIN,
            front_ts: i64::MAX,
            last_ts: i64::MIN,
            head: 0,
            rows: 0,
            cap,
            block,
        }
    }

    /// Number of live events.
    pub fn len(&self) -> usize {
        (self.rows - self.head) as usize
    }

    /// The times of the live events.
    ///
    /// # Safety
    /// `layout` must be the layout of the table this block belongs to (the one it was allocated
    /// with); [`EntityRef`] and [`EntityMut`] are the only callers, and they carry that layout.
    #[inline]
    unsafe fn times(&self, layout: &Layout) -> &[i64] {
        // SAFETY: with this block's layout (contract), the time column starts right after the
        // aggregates and holds `cap >= rows` values; `[head, rows)` is inside; its offset is a
        // multiple of 8.
        unsafe {
            col::<i64>(
                &self.block,
                layout.ts_offset() + 8 * self.head as usize,
                self.len(),
            )
        }
    }

    /// The live events, column by column.
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    #[inline]
    unsafe fn events(&self, layout: &Layout) -> Events<'_> {
        // SAFETY: the whole block, with its own rows and layout (contract).
        unsafe { self.rows_view().events_in(layout, &self.block, 0) }
    }

    fn rows_view(&self) -> RowsView {
        RowsView {
            cap: self.cap as usize,
            head: self.head as usize,
            len: self.len(),
        }
    }

    /// The running aggregates, mutably.
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    #[inline]
    unsafe fn aggs_mut(&mut self, layout: &Layout) -> (&mut [RunWin], &mut [RunRisk]) {
        let aggs_words = layout.aggs_bytes / 8;
        let (w, r) = self.block[..aggs_words].split_at_mut(layout.n_wins * AGG_BYTES / 8);
        // SAFETY: see `parts_mut`.
        unsafe {
            (
                col_mut::<RunWin>(w, 0, layout.n_wins),
                col_mut::<RunRisk>(r, 0, layout.n_risks),
            )
        }
    }

    /// The times and transaction tags of the live events (the table must store tags).
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    #[inline]
    unsafe fn times_and_tags(&self, layout: &Layout) -> (&[i64], &[u32]) {
        let (h, n) = (self.head as usize, self.len());
        let cap = self.cap as usize;
        let tag_off = layout.aggs_bytes + layout.before[4] * cap + 4 * h;
        let n_tags = if layout.cols.tag { n } else { 0 };
        // SAFETY: as in `times`, and the tag column (when stored) holds `cap` values from its
        // 4-aligned offset.
        unsafe { (self.times(layout), col::<u32>(&self.block, tag_off, n_tags)) }
    }

    /// The running aggregates (mutable) and the live events.
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    #[inline]
    unsafe fn parts_mut(&mut self, layout: &Layout) -> (&mut [RunWin], &mut [RunRisk], Events<'_>) {
        let aggs_words = (layout.n_wins + layout.n_risks) * AGG_BYTES / 8;
        let rows = self.rows_view();
        // The events live after the aggregates: split the block so the borrows are disjoint.
        let (aggs, rest) = self.block.split_at_mut(aggs_words);
        // SAFETY: the aggregate prefix holds `n_wins` windows then `n_risks` risks, 48 bytes
        // each, 8-aligned, all-integer/float types (see `col`).
        let (wins, risks) = unsafe {
            let (w, r) = aggs.split_at_mut(layout.n_wins * AGG_BYTES / 8);
            (
                col_mut::<RunWin>(w, 0, layout.n_wins),
                col_mut::<RunRisk>(r, 0, layout.n_risks),
            )
        };
        // SAFETY: `rest` is the block from word `aggs_words` on, the end of the aggregates and
        // before every column; `rows` and `layout` are this block's (contract).
        let events = unsafe { rows.events_in(layout, rest, aggs_words) };
        (wins, risks, events)
    }

    /// The running aggregates and the live events (read-only).
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    #[inline]
    unsafe fn parts(&self, layout: &Layout) -> (&[RunWin], &[RunRisk], Events<'_>) {
        // SAFETY: as in `parts_mut`.
        let (wins, risks) = unsafe {
            (
                col::<RunWin>(&self.block, 0, layout.n_wins),
                col::<RunRisk>(&self.block, layout.n_wins * AGG_BYTES, layout.n_risks),
            )
        };
        // SAFETY: forwarded contract.
        (wins, risks, unsafe { self.events(layout) })
    }

    /// Writes `ev` into row `r` (`r < cap`).
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    unsafe fn write_row(&mut self, layout: &Layout, r: usize, ev: &Ev) {
        let o = layout.offsets(self.cap as usize);
        let c = layout.cols;
        let cap = self.cap as usize;
        let b = &mut self.block;
        // SAFETY: `r < cap` and every column holds `cap` values (see `events`).
        unsafe {
            col_mut::<i64>(b, o.ts, cap)[r] = ev.ts;
            col_mut::<f32>(b, o.amount, cap)[r] = ev.amount;
            if c.known_at {
                col_mut::<i64>(b, o.known_at, cap)[r] = ev.known_at;
            }
            if c.bits {
                col_mut::<u32>(b, o.bits, cap)[r] = ev.bits;
            }
            if c.tag {
                col_mut::<u32>(b, o.tag, cap)[r] = ev.tag;
            }
            if c.loc {
                col_mut::<f32>(b, o.lat, cap)[r] = ev.lat;
                col_mut::<f32>(b, o.lon, cap)[r] = ev.lon;
            }
            for (i, &present) in c.attrs.iter().enumerate() {
                if present {
                    col_mut::<u32>(b, o.attrs[i], cap)[r] = ev.attrs[i];
                }
            }
        }
    }

    /// Moves rows `[from, to)` of every column to start at row `dest` (within capacity).
    fn move_rows(&mut self, layout: &Layout, from: usize, to: usize, dest: usize) {
        let cap = self.cap as usize;
        let len = self.block.len() * 8;
        // SAFETY: the whole block as bytes (u8 has no alignment or validity requirement).
        let bytes = unsafe { col_mut::<u8>(&mut self.block, 0, len) };
        for (off, size) in layout.stored(cap) {
            // Rows are within `cap` (callers) and every column holds `cap` values, so the
            // ranges are inside the block (bounds-checked anyway).
            bytes.copy_within(off + size * from..off + size * to, off + size * dest);
        }
    }

    /// Makes room for one more row at the end: compacts the dead prefix if it is long enough,
    /// else grows the block (doubling), copying the live rows to the start.
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    unsafe fn reserve_one(&mut self, layout: &Layout) {
        if self.rows < self.cap {
            return;
        }
        let (h, n) = (self.head as usize, self.len());
        if h > 0 && h >= n {
            self.move_rows(layout, h, h + n, 0);
            self.head = 0;
            self.rows = n as u32;
            return;
        }
        let new_cap = (2 * n).max(4);
        let new_o = layout.offsets(new_cap);
        let mut block = vec![0u64; new_o.end.div_ceil(8)].into_boxed_slice();
        let aggs_words = (layout.n_wins + layout.n_risks) * AGG_BYTES / 8;
        block[..aggs_words].copy_from_slice(&self.block[..aggs_words]);
        let old_cols = layout.stored(self.cap as usize);
        for ((doff, size), (soff, _)) in layout.stored(new_cap).zip(old_cols) {
            // SAFETY: with this block's layout (contract), byte ranges inside both blocks (live
            // rows `h..h+n` of the old column, rows `0..n` of the new one, `n <= new_cap`);
            // non-overlapping allocations.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.block.as_ptr().cast::<u8>().add(soff + size * h),
                    block.as_mut_ptr().cast::<u8>().add(doff),
                    size * n,
                );
            }
        }
        self.block = block;
        self.cap = new_cap as u32;
        self.head = 0;
        self.rows = n as u32;
    }

    /// Inserts `ev` at live index `p` (`p <= len`).
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    unsafe fn insert(&mut self, layout: &Layout, p: usize, ev: &Ev) {
        // SAFETY: forwarded contract.
        unsafe { self.reserve_one(layout) };
        let at = self.head as usize + p;
        let end = self.rows as usize;
        if at < end {
            self.move_rows(layout, at, end, at + 1);
        }
        // SAFETY: forwarded contract; `at < rows + 1 <= cap` after `reserve_one`.
        unsafe { self.write_row(layout, at, ev) };
        self.rows += 1;
        self.front_ts = self.front_ts.min(ev.ts);
        self.last_ts = self.last_ts.max(ev.ts);
    }

    /// Sets the label of live event `i`.
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    unsafe fn set_label(&mut self, layout: &Layout, i: usize, fraud: bool, known_at: i64) {
        let o = layout.offsets(self.cap as usize);
        let c = layout.cols;
        let r = self.head as usize + i;
        let cap = self.cap as usize;
        assert!(
            c.bits && c.known_at && r < self.rows as usize,
            "label columns"
        );
        // SAFETY: `r < rows <= cap`; the table stores both columns (asserted), at the offsets of
        // this block's layout (contract).
        unsafe {
            let bits = &mut col_mut::<u32>(&mut self.block, o.bits, cap)[r];
            *bits = (*bits & !FRAUD_BIT) | if fraud { FRAUD_BIT } else { 0 };
            col_mut::<i64>(&mut self.block, o.known_at, cap)[r] = known_at;
        }
    }

    /// Drops the first `k` live events (`k <= len`).
    ///
    /// # Safety
    /// As for [`times`](Self::times): `layout` is this block's own table's.
    unsafe fn drop_front(&mut self, layout: &Layout, k: usize) {
        self.head += k as u32;
        if self.len() == 0 {
            self.head = 0;
            self.rows = 0;
            self.front_ts = i64::MAX;
            self.last_ts = i64::MIN;
            // Give memory back from blocks that grew large in a burst (keeping the aggregates,
            // which stay valid for an empty entity).
            if self.cap > 64 {
                let cap = 4;
                let mut block = vec![0u64; layout.offsets(cap).end.div_ceil(8)].into_boxed_slice();
                let aggs_words = (layout.n_wins + layout.n_risks) * AGG_BYTES / 8;
                block[..aggs_words].copy_from_slice(&self.block[..aggs_words]);
                self.block = block;
                self.cap = cap as u32;
            }
            return;
        }
        // SAFETY: forwarded contract.
        self.front_ts = unsafe { self.times(layout) }[0];
    }

    /// Address of the byte `off` into the block (for prefetching; may be past the end).
    #[inline]
    fn addr(&self, off: usize) -> *const u8 {
        self.block.as_ptr().cast::<u8>().wrapping_add(off)
    }

    /// Prefetches the aggregates and the newest row of every stored column (what "previous
    /// event" features read, and where the event is appended). A hint only: safe whatever the
    /// layout, which only decides which addresses are hinted.
    #[inline]
    fn prefetch_front_matter(&self, layout: &Layout) {
        let aggs = (layout.n_wins + layout.n_risks) * AGG_BYTES;
        let mut line = 0;
        while line < aggs {
            prefetch(self.addr(line));
            line += 64;
        }
        let last = (self.rows as usize).saturating_sub(1);
        for (off, size) in layout.stored(self.cap as usize) {
            prefetch(self.addr(off + size * last));
        }
    }

    /// Prefetches the time and amount of live event `i` (a hint, like
    /// [`prefetch_front_matter`](Self::prefetch_front_matter)).
    #[inline]
    fn prefetch_event(&self, layout: &Layout, i: usize) {
        let o = layout.offsets(self.cap as usize);
        let r = self.head as usize + i;
        prefetch(self.addr(o.ts + 8 * r));
        prefetch(self.addr(o.amount + 4 * r));
        if layout.cols.bits {
            prefetch(self.addr(o.bits + 4 * r));
        }
    }

    /// Heap bytes of the block.
    pub fn heap_bytes(&self) -> usize {
        self.block.len() * 8
    }
}

/// An entity of a table, read-only, together with that table's [`Layout`]: the only way code
/// outside this file reads an entity's block, so the layout used is always the block's own.
/// Derefs to the [`EntityBlock`] for its bookkeeping fields.
#[derive(Clone, Copy)]
pub(super) struct EntityRef<'a> {
    block: &'a EntityBlock,
    layout: &'a Layout,
}

/// An entity of a table, mutable, together with that table's [`Layout`] (see [`EntityRef`]).
/// Derefs (read-only) to the [`EntityBlock`]; its only field to set is
/// [`set_t_run`](Self::set_t_run).
pub(super) struct EntityMut<'a> {
    block: &'a mut EntityBlock,
    layout: &'a Layout,
}

impl std::ops::Deref for EntityRef<'_> {
    type Target = EntityBlock;
    #[inline(always)]
    fn deref(&self) -> &EntityBlock {
        self.block
    }
}

impl std::ops::Deref for EntityMut<'_> {
    type Target = EntityBlock;
    #[inline(always)]
    fn deref(&self) -> &EntityBlock {
        self.block
    }
}

// SAFETY (every `unsafe` call below): a handle is only built by `EntityTable`, from one of its
// own entities and its own layout, the layout every block of that table was allocated with.
impl<'a> EntityRef<'a> {
    /// The times and transaction tags of the live events (the table must store tags).
    #[inline]
    pub fn times_and_tags(self) -> (&'a [i64], &'a [u32]) {
        // SAFETY: see above the impl.
        unsafe { self.block.times_and_tags(self.layout) }
    }

    /// The running aggregates and the live events.
    #[inline]
    pub fn parts(self) -> (&'a [RunWin], &'a [RunRisk], Events<'a>) {
        // SAFETY: see above the impl.
        unsafe { self.block.parts(self.layout) }
    }

    /// Prefetches the aggregates and the newest row of every stored column (what "previous
    /// event" features read, and where the event is appended).
    #[inline]
    pub fn prefetch_front_matter(self) {
        self.block.prefetch_front_matter(self.layout);
    }

    /// Prefetches the time and amount of live event `i`.
    #[inline]
    pub fn prefetch_event(self, i: usize) {
        self.block.prefetch_event(self.layout, i);
    }
}

impl EntityMut<'_> {
    /// Sets the time the running aggregates are positioned for (`i64::MIN`: rebuild them by a
    /// scan before use).
    #[inline]
    pub fn set_t_run(&mut self, t: i64) {
        self.block.t_run = t;
    }

    /// The times of the live events.
    #[inline]
    pub fn times(&self) -> &[i64] {
        // SAFETY: see above the `EntityRef` impl.
        unsafe { self.block.times(self.layout) }
    }

    /// The live events, column by column.
    #[inline]
    pub fn events(&self) -> Events<'_> {
        // SAFETY: see above the `EntityRef` impl.
        unsafe { self.block.events(self.layout) }
    }

    /// The running aggregates, mutably.
    #[inline]
    pub fn aggs_mut(&mut self) -> (&mut [RunWin], &mut [RunRisk]) {
        // SAFETY: see above the `EntityRef` impl.
        unsafe { self.block.aggs_mut(self.layout) }
    }

    /// The running aggregates (mutable) and the live events.
    #[inline]
    pub fn parts_mut(&mut self) -> (&mut [RunWin], &mut [RunRisk], Events<'_>) {
        // SAFETY: see above the `EntityRef` impl.
        unsafe { self.block.parts_mut(self.layout) }
    }

    /// Inserts `ev` at live index `p` (`p <= len`).
    #[inline]
    pub fn insert(&mut self, p: usize, ev: &Ev) {
        // SAFETY: see above the `EntityRef` impl.
        unsafe { self.block.insert(self.layout, p, ev) }
    }

    /// Sets the label of live event `i`.
    ///
    /// # Panics
    /// If `i` is not a live event or the table stores no label columns (a programming error:
    /// labels only go to tables with risk features).
    #[inline]
    pub fn set_label(&mut self, i: usize, fraud: bool, known_at: i64) {
        // SAFETY: see above the `EntityRef` impl.
        unsafe { self.block.set_label(self.layout, i, fraud, known_at) }
    }

    /// Drops the first `k` live events (`k <= len`).
    #[inline]
    pub fn drop_front(&mut self, k: usize) {
        // SAFETY: see above the `EntityRef` impl.
        unsafe { self.block.drop_front(self.layout, k) }
    }
}

/// Maps a 64-bit id hash to a table key (0 is reserved for empty slots).
#[inline]
pub(super) fn key_of_hash(h: u64) -> u64 {
    h.max(1)
}

/// Open-addressing (linear probing) table of entities, at most half full.
#[derive(Debug)]
pub(super) struct EntityTable {
    slots: Vec<EntityBlock>,
    mask: usize,
    len: usize,
    /// The layout every block of this table was allocated with; fixed at construction, and
    /// handed out only inside [`EntityRef`] / [`EntityMut`].
    layout: Layout,
    /// Blocks of removed entities (with their capacities), reused by new ones: entities come
    /// and go all the time (a card is dropped when its last event expires and comes back with
    /// its next one), and recycling their blocks keeps that off the allocator.
    pool: Vec<(Box<[u64]>, u32)>,
}

/// Most blocks kept for reuse, and the largest capacity (rows) worth keeping.
const POOL_MAX: usize = 4096;
const POOL_CAP_MAX: u32 = 64;

impl EntityTable {
    pub fn new(layout: Layout) -> EntityTable {
        const INITIAL: usize = 64;
        EntityTable {
            slots: (0..INITIAL).map(|_| EntityBlock::empty()).collect(),
            mask: INITIAL - 1,
            len: 0,
            layout,
            pool: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // Keys are FxHash outputs, whose `finish` already rotates the well-mixed high bits of
        // the product down to the low ones (what hashbrown indexes with too).
        (key as usize) & self.mask
    }

    /// Hints the CPU to load the home slot of `key`. Never faults; changes nothing.
    #[inline]
    pub fn prefetch_home(&self, key: u64) {
        prefetch(self.slots.as_ptr().wrapping_add(self.home(key)).cast());
    }

    #[inline]
    fn find_slot(&self, key: u64) -> Result<usize, usize> {
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Ok(i);
            }
            if k == 0 {
                return Err(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The entity for `key`.
    pub fn get(&self, key: u64) -> Option<EntityRef<'_>> {
        self.find_slot(key).ok().map(|i| EntityRef {
            block: &self.slots[i],
            layout: &self.layout,
        })
    }

    /// The entity for `key`, mutably.
    pub fn get_mut(&mut self, key: u64) -> Option<EntityMut<'_>> {
        match self.find_slot(key) {
            Ok(i) => Some(EntityMut {
                block: &mut self.slots[i],
                layout: &self.layout,
            }),
            Err(_) => None,
        }
    }

    /// The entity for `key`, created empty if absent.
    pub fn get_or_insert(&mut self, key: u64) -> EntityMut<'_> {
        let i = match self.find_slot(key) {
            Ok(i) => i,
            Err(mut i) => {
                if 2 * (self.len + 1) > self.slots.len() {
                    self.grow();
                    i = match self.find_slot(key) {
                        Ok(i) | Err(i) => i,
                    };
                }
                let (block, cap) = match self.pool.pop() {
                    Some((b, cap)) => (Some(b), cap),
                    None => (None, 0),
                };
                self.slots[i] = EntityBlock::new(key, &self.layout, block, cap);
                self.len += 1;
                i
            }
        };
        EntityMut {
            block: &mut self.slots[i],
            layout: &self.layout,
        }
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        let old = std::mem::replace(
            &mut self.slots,
            (0..cap).map(|_| EntityBlock::empty()).collect(),
        );
        self.mask = cap - 1;
        for e in old.into_iter().filter(|e| e.key != 0) {
            let i = match self.find_slot(e.key) {
                Ok(i) | Err(i) => i,
            };
            self.slots[i] = e;
        }
    }

    /// Visits every entity; those for which `keep` returns false are removed. One pass over
    /// the slots with backward-shift deletion, so no tombstones are ever left.
    pub fn retain(&mut self, mut keep: impl FnMut(&EntityBlock) -> bool) {
        if self.len == 0 {
            return;
        }
        // Start right after an empty slot, so no probe run wraps around the start of the pass.
        let Some(start) = self.slots.iter().position(|e| e.key == 0) else {
            return;
        };
        let cap = self.slots.len();
        let mut visited = 0;
        let mut i = (start + 1) & self.mask;
        while visited < cap {
            if self.slots[i].key != 0 && !keep(&self.slots[i]) {
                self.remove_at(i);
                // The slot now holds the next element of the run (or is empty): look again.
                if self.slots[i].key != 0 {
                    continue;
                }
            }
            i = (i + 1) & self.mask;
            visited += 1;
        }
    }

    /// Removes the entity at slot `i` and shifts later members of its probe run back.
    fn remove_at(&mut self, mut i: usize) {
        let removed = std::mem::replace(&mut self.slots[i], EntityBlock::empty());
        if self.pool.len() < POOL_MAX && removed.cap > 0 && removed.cap <= POOL_CAP_MAX {
            self.pool.push((removed.block, removed.cap));
        }
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let key = self.slots[j].key;
            if key == 0 {
                return;
            }
            let home = self.home(key);
            // Move `j` back into the hole at `i` unless its home lies cyclically in (i, j].
            let in_between = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !in_between {
                self.slots.swap(i, j);
                i = j;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &EntityBlock> {
        self.slots.iter().filter(|e| e.key != 0)
    }

    /// Heap bytes: the slots plus every block.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * size_of::<EntityBlock>()
            + self.iter().map(EntityBlock::heap_bytes).sum::<usize>()
    }
}

/// Snapshots (see [`super::snapshot`]). Event columns are written as their bytes in memory,
/// which are little-endian on every platform vigil builds for (x86_64, aarch64).
impl EntityTable {
    fn layout_code(&self) -> [u64; 3] {
        let c = self.layout.cols;
        let bits = [
            c.known_at, c.bits, c.tag, c.loc, c.attrs[0], c.attrs[1], c.attrs[2],
        ]
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, &b)| acc | (u64::from(b) << i));
        [self.layout.n_wins as u64, self.layout.n_risks as u64, bits]
    }

    /// Every entity: bookkeeping, running aggregates, live events column by column.
    pub(super) fn encode(&self, w: &mut Writer) {
        for v in self.layout_code() {
            w.u64(v);
        }
        w.u64(self.len as u64);
        let aggs_words = self.layout.aggs_bytes / 8;
        for e in self.iter() {
            w.u64(e.key);
            w.i64(e.t_run);
            w.i64(e.front_ts);
            w.i64(e.last_ts);
            let (h, n) = (e.head as usize, e.len());
            w.u32(n as u32);
            for &word in &e.block[..aggs_words] {
                w.u64(word);
            }
            // SAFETY: the whole block as bytes (u8 has no alignment or validity requirement).
            let bytes = unsafe { col::<u8>(&e.block, 0, e.block.len() * 8) };
            for (off, size) in self.layout.stored(e.cap as usize) {
                w.bytes(&bytes[off + size * h..off + size * (h + n)]);
            }
        }
    }

    /// Fills this (empty) table with the entities [`encode`](Self::encode) wrote, refusing
    /// bytes of another layout or with events out of time order. Running aggregates that do
    /// not fit their entity's events are dropped (rebuilt by a scan on the entity's next
    /// event, which is exact).
    pub(super) fn decode(&mut self, r: &mut Reader<'_>) -> Result<(), Bad> {
        let code = [r.u64()?, r.u64()?, r.u64()?];
        if code != self.layout_code() {
            return Err(Bad(format!(
                "an entity table's layout {code:?} is not the spec's {:?}",
                self.layout_code()
            )));
        }
        let layout = self.layout;
        let aggs_words = layout.aggs_bytes / 8;
        let row_bytes = layout.before[10];
        let n = r.count(36 + aggs_words * 8)?;
        let slots = (2 * n).next_power_of_two().max(64);
        self.slots = (0..slots).map(|_| EntityBlock::empty()).collect();
        self.mask = slots - 1;
        self.len = 0;
        for _ in 0..n {
            let key = r.u64()?;
            let t_run = r.i64()?;
            let front_ts = r.i64()?;
            let last_ts = r.i64()?;
            let len = r.u32()? as usize;
            if aggs_words * 8 + len.saturating_mul(row_bytes) > r.rest_len() {
                return Err(Bad(format!("an entity's {len} events are truncated")));
            }
            let cap = len.max(4);
            let mut block = vec![0u64; layout.offsets(cap).end.div_ceil(8)].into_boxed_slice();
            for word in &mut block[..aggs_words] {
                *word = r.u64()?;
            }
            {
                // SAFETY: the whole block as bytes (u8 has no alignment or validity requirement).
                let n_bytes = block.len() * 8;
                let bytes = unsafe { col_mut::<u8>(&mut block, 0, n_bytes) };
                for (off, size) in layout.stored(cap) {
                    bytes[off..off + size * len].copy_from_slice(r.take(size * len)?);
                }
            }
            let slot = match self.find_slot(key) {
                _ if key == 0 => return Err(Bad("an entity key is 0".into())),
                Ok(_) => return Err(Bad(format!("entity key {key:#x} appears twice"))),
                Err(i) => i,
            };
            self.slots[slot] = EntityBlock {
                key,
                t_run,
                front_ts,
                last_ts,
                head: 0,
                rows: len as u32,
                cap: cap as u32,
                block,
            };
            self.len += 1;
            let mut e = EntityMut {
                block: &mut self.slots[slot],
                layout: &self.layout,
            };
            let times = e.times();
            let sorted = times.windows(2).all(|p| p[0] <= p[1]);
            let ends = times.first().map_or((i64::MAX, i64::MIN), |&f| {
                (f, times.last().copied().unwrap_or(f))
            });
            if !sorted || (e.front_ts, e.last_ts) != ends {
                return Err(Bad(format!(
                    "entity {key:#x}: events out of time order or bounds mismatch"
                )));
            }
            if e.t_run != i64::MIN && !aggregates_fit(e.parts_mut()) {
                e.set_t_run(i64::MIN);
            }
        }
        Ok(())
    }
}

/// Whether restored running aggregates agree with their entity's events in everything the fast
/// path relies on (indices in range, counts, cached edge times, fraud counts), so no later
/// update can underflow or index out of bounds.
fn aggregates_fit((wins, risks, ev): (&mut [RunWin], &mut [RunRisk], Events<'_>)) -> bool {
    let n = ev.len();
    let ts_at = |i: usize| ev.ts.get(i).copied().unwrap_or(i64::MAX);
    let wins_fit = wins.iter().all(|w| {
        let start = w.start as usize;
        start <= n && w.n as usize == n - start && w.exit_ts == ts_at(start)
    });
    let risks_fit = risks.iter().all(|r| {
        let (lo, hi) = (r.lo as usize, r.hi as usize);
        if lo > hi || hi > n || r.n as usize != hi - lo || r.hi_ts != ts_at(hi) {
            return false;
        }
        if lo < hi && r.lo_ts != ev.ts[lo] {
            return false;
        }
        let fraud = if ev.bits.len() == n {
            (lo..hi).filter(|&i| ev.fraud(i)).count()
        } else {
            0
        };
        r.fraud as usize == fraud
    });
    wins_fit && risks_fit
}

/// Hints the CPU to load the cache line at `p`. Never faults, changes nothing observable.
#[inline(always)]
pub(super) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching has no memory-safety requirement; any address is fine (SSE is
    // baseline on x86_64).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64) -> Ev {
        Ev {
            ts,
            known_at: NO_LABEL,
            amount: ts as f32,
            tag: ts as u32,
            lat: f32::NAN,
            lon: f32::NAN,
            attrs: [ts as u32, 0, 7],
            bits: 0,
        }
    }

    fn all_columns() -> Layout {
        Layout::new(
            2,
            1,
            Columns {
                known_at: true,
                bits: true,
                tag: true,
                loc: true,
                attrs: [true, false, true],
            },
        )
    }

    #[test]
    fn table_inserts_finds_and_removes_with_backward_shift() {
        let layout = Layout::new(1, 1, Columns::default());
        let mut t = EntityTable::new(layout);
        let keys: Vec<u64> = (1..=5000u64)
            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &k in &keys {
            t.get_or_insert(k).insert(0, &ev(k as i64 & 0xffff));
        }
        assert_eq!(t.len(), keys.len());
        for &k in &keys {
            assert_eq!(t.get(k).map(|e| e.key), Some(k));
        }
        t.retain(|e| e.key % 3 != 0);
        for &k in &keys {
            assert_eq!(t.get(k).is_some(), k % 3 != 0, "key {k}");
        }
        assert_eq!(t.len(), keys.iter().filter(|&&k| k % 3 != 0).count());
        assert_eq!(t.iter().count(), t.len());
    }

    #[test]
    fn entity_columns_keep_aggregates_and_events_apart() {
        let mut t = EntityTable::new(all_columns());
        let mut e = t.get_or_insert(7);
        for ts in 0..10 {
            let n = e.len();
            e.insert(n, &ev(ts));
        }
        e.insert(3, &ev(2));
        {
            let (wins, risks, events) = e.parts_mut();
            assert_eq!((wins.len(), risks.len(), events.len()), (2, 1, 11));
            wins[1].n = 42;
            risks[0].fraud = 3;
        }
        e.drop_front(6);
        e.set_label(1, true, 99);
        // Growth after dropping compacts instead of growing.
        for ts in 10..20 {
            let n = e.len();
            e.insert(n, &ev(ts));
        }
        let e = t.get(7).expect("inserted");
        let (wins, risks, events) = e.parts();
        assert_eq!(wins[1].n, 42);
        assert_eq!(risks[0].fraud, 3);
        let ts: Vec<i64> = events.ts.to_vec();
        assert_eq!(ts, (5..20).collect::<Vec<i64>>());
        assert_eq!(events.amount[2], 7.0);
        assert_eq!(events.attrs[0][2], 7);
        assert_eq!(events.attrs[2][2], 7);
        assert!(events.attrs[1].is_empty());
        assert!(events.fraud(1) && !events.fraud(2));
        assert_eq!(events.known_at[1], 99);
        assert!(events.lat[0].is_nan());
        assert_eq!((e.front_ts, e.last_ts), (5, 19));
        let mut e = t.get_mut(7).expect("inserted");
        e.drop_front(15);
        assert_eq!(e.len(), 0);
        assert_eq!((e.front_ts, e.last_ts), (i64::MAX, i64::MIN));
    }
}
