//! Snapshots of one partition's feature state: the bytes a [`Shard`] is saved as and restored
//! from, so a restart replays only the records after the snapshot instead of the whole window.
//!
//! This module turns state into bytes and back; it does no I/O (the scorer's state store
//! writes and reads the bytes).
//!
//! # Format (version 2)
//!
//! ```text
//! "VIGILSNP"  format version (u32)  header length (u32)  header (JSON, SnapshotInfo)
//! body length (u64)  body  CRC-32 of every byte before it (u32)
//! ```
//!
//! All integers are little-endian. The header says what the state is (spec fingerprint,
//! partition and partition count, the offset it reflects, its watermark and size) so a store
//! can be listed and a snapshot refused without decoding the body. The body is the engine's
//! id-hash key (its tables are placed by it; version 2 added it), its counters and watermarks,
//! then every entity table (each entity's running aggregates and its
//! live events column by column, exactly as held), the label index (generation by generation,
//! in insertion order) and the pending label schedule. Decoding rebuilds the same state: every
//! later event gives bit-for-bit the features the saved shard would have given (a test checks
//! it), and the hash tables are rebuilt at their own sizes.
//!
//! A snapshot is refused, with a message saying why, when its magic, version or checksum is
//! wrong, when it was taken under another feature spec (fingerprint) or partition count, or
//! when its body does not fit the spec's table layouts. Decoding never panics on its bytes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::shard::Shard;
use super::spec::FeatureSpec;

const MAGIC: &[u8; 8] = b"VIGILSNP";

/// The format version written; decoding refuses any other.
pub const FORMAT_VERSION: u32 = 2;

/// What a snapshot holds, readable without decoding the state (its header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// [`FeatureSpec::fingerprint`] of the spec the state was computed with.
    pub spec_fingerprint: String,
    /// The partition of the transactions topic the state is of.
    pub partition: u32,
    /// How many partitions the topic had (card-to-partition routing depends on it).
    pub partitions: u32,
    /// The next offset of the partition not in the state: the state is that of a scorer that
    /// processed exactly the records before it.
    pub offset: i64,
    /// The state's event-time watermark (ms), if it has seen an event.
    pub watermark_ms: Option<i64>,
    /// Entities held (all entity kinds).
    pub entities: u64,
    /// Events held (all entity kinds).
    pub events: u64,
    /// Labels pending in the schedule.
    pub pending_labels: u64,
    /// Wall-clock time the snapshot was taken (ms since the epoch).
    pub created_ms: i64,
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a vigil state snapshot (bad magic bytes)")]
    Magic,
    #[error("snapshot format version {found} is not the supported version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("snapshot is truncated or corrupt: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error(
        "snapshot was taken with feature spec {found}, the model serving now reads spec {expected}: \
         its state cannot serve this model"
    )]
    Spec { expected: String, found: String },
    #[error(
        "snapshot is of partition {found_partition} of {found_partitions}, expected partition \
         {partition} of {partitions}: card routing differs"
    )]
    Partition {
        partition: u32,
        partitions: u32,
        found_partition: u32,
        found_partitions: u32,
    },
    #[error("snapshot header is invalid: {0}")]
    Header(String),
    #[error("snapshot body is invalid: {0}")]
    Body(String),
}

/// Encodes `shard` as a snapshot with header `info` (whose counts are filled in from the
/// shard). The bytes are what [`decode`] takes back.
pub fn encode(shard: &Shard, info: SnapshotInfo) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(shard, info, &mut out);
    out
}

/// [`encode`] into `out` (cleared first). Reusing one buffer for every snapshot matters: the
/// first touch of fresh memory costs more than the copy itself on virtual machines (the
/// kernel zeroes each new page), and the encoding is the part of a snapshot that holds the
/// partition's state.
pub fn encode_into(shard: &Shard, mut info: SnapshotInfo, out: &mut Vec<u8>) {
    let stats = shard.engine().stats();
    info.spec_fingerprint = shard.engine().spec().fingerprint();
    info.watermark_ms = stats.watermark_ms;
    info.entities = stats.entities as u64;
    info.events = stats.events_held as u64;
    info.pending_labels = shard.pending_labels() as u64;
    // Serialising a struct of strings and integers to JSON cannot fail.
    let header = serde_json::to_vec(&info).unwrap_or_default();
    out.clear();
    let mut w = Writer(std::mem::take(out));
    w.bytes(MAGIC);
    w.u32(FORMAT_VERSION);
    w.u32(header.len() as u32);
    w.bytes(&header);
    let len_at = w.0.len();
    w.u64(0);
    let body_start = w.0.len();
    shard.encode_body(&mut w);
    let body_len = (w.0.len() - body_start) as u64;
    w.0[len_at..len_at + 8].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&w.0);
    w.u32(crc);
    *out = w.0;
}

/// Reads a snapshot's header, checking magic, version and checksum (not the body's contents).
pub fn read_info(bytes: &[u8]) -> Result<SnapshotInfo, SnapshotError> {
    split(bytes).map(|(info, _)| info)
}

/// The header and the body of a snapshot whose magic, version and checksum are right.
fn split(bytes: &[u8]) -> Result<(SnapshotInfo, &[u8]), SnapshotError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let short = |_| SnapshotError::Header("truncated".into());
    let version = Reader::new(&bytes[8..]).u32().map_err(short)?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    let (content, tail) = bytes.split_at(bytes.len().saturating_sub(4).max(12));
    let stored = Reader::new(tail).u32().map_err(short)?;
    let computed = crc32fast::hash(content);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let mut r = Reader::new(&content[12..]);
    let header_len = r.u32().map_err(short)?;
    let header = r.take(header_len as usize).map_err(short)?;
    let info: SnapshotInfo =
        serde_json::from_slice(header).map_err(|e| SnapshotError::Header(e.to_string()))?;
    let body_len = r.u64().map_err(short)?;
    let body = r
        .take(usize::try_from(body_len).unwrap_or(usize::MAX))
        .map_err(|_| SnapshotError::Body("shorter than its length".into()))?;
    if !r.is_empty() {
        return Err(SnapshotError::Body("bytes after the body".into()));
    }
    Ok((info, body))
}

/// What a snapshot must be to be restored: of this spec, partition and partition count.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub spec: &'a Arc<FeatureSpec>,
    pub partition: u32,
    pub partitions: u32,
}

/// Decodes a snapshot into a live [`Shard`] of `expect.spec`, refusing one of another spec,
/// partition or partition count, or whose bytes are damaged.
pub fn decode(bytes: &[u8], expect: Expect<'_>) -> Result<(SnapshotInfo, Shard), SnapshotError> {
    let (info, body) = split(bytes)?;
    let fingerprint = expect.spec.fingerprint();
    if info.spec_fingerprint != fingerprint {
        return Err(SnapshotError::Spec {
            expected: fingerprint,
            found: info.spec_fingerprint,
        });
    }
    if (info.partition, info.partitions) != (expect.partition, expect.partitions) {
        return Err(SnapshotError::Partition {
            partition: expect.partition,
            partitions: expect.partitions,
            found_partition: info.partition,
            found_partitions: info.partitions,
        });
    }
    let mut r = Reader::new(body);
    let shard = Shard::decode_body(Arc::clone(expect.spec), &mut r)
        .map_err(|e| SnapshotError::Body(e.0))?;
    if !r.is_empty() {
        return Err(SnapshotError::Body("bytes after the state".into()));
    }
    Ok((info, shard))
}

/// Appends little-endian values to a byte buffer.
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }
    /// A length-prefixed string.
    pub(super) fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.bytes(s.as_bytes());
    }
}

/// What is wrong with a body (the message of [`SnapshotError::Body`]).
#[derive(Debug)]
pub(super) struct Bad(pub(super) String);

/// Reads little-endian values from a byte slice; every read checks the length.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }
    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
    pub(super) fn rest_len(&self) -> usize {
        self.rest.len()
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.rest.len() {
            return Err(Bad(format!(
                "truncated: {n} bytes wanted, {} left",
                self.rest.len()
            )));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(super) fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.array::<1>()?[0])
    }
    pub(super) fn u32(&mut self) -> Result<u32, Bad> {
        self.array().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> Result<u64, Bad> {
        self.array().map(u64::from_le_bytes)
    }
    pub(super) fn i64(&mut self) -> Result<i64, Bad> {
        self.array().map(i64::from_le_bytes)
    }
    /// A count of items of at least `min_bytes` each: refused when the rest cannot hold them
    /// (so a damaged count cannot make the decoder allocate without bound).
    pub(super) fn count(&mut self, min_bytes: usize) -> Result<usize, Bad> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| Bad(format!("count {n} too large")))?;
        if n.saturating_mul(min_bytes.max(1)) > self.rest.len() {
            return Err(Bad(format!(
                "count {n} cannot fit in the {} bytes left",
                self.rest.len()
            )));
        }
        Ok(n)
    }
    pub(super) fn str(&mut self) -> Result<String, Bad> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Bad("a string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{EngineStats, EventOutcome};
    use crate::record::Transaction;

    const DEFAULT: &str = include_str!("../../../../training/features.toml");

    /// A mixed stream: 300 cards, 40 merchants, countries, locations, MCCs, labels, and every
    /// 17th event late (some too late), over ~40 days so eviction and sweeps run.
    fn stream(n: usize) -> Vec<Transaction> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let t0 = 1_700_000_000_000i64;
        (0..n)
            .map(|i| {
                let r = next();
                let mut ts = t0 + i as i64 * 120_000;
                if i % 17 == 0 {
                    ts -= (r % 3_000_000) as i64;
                }
                Transaction {
                    transaction_id: format!("t{i}"),
                    timestamp_ms: ts,
                    card_id: format!("c{}", r % 300),
                    merchant_id: format!("m{}", (r >> 10) % 40),
                    amount: ((r >> 20) % 50_000) as f64 / 100.0,
                    label: Some((r >> 40) % 50 == 0),
                    label_time_ms: None,
                    currency: None,
                    mcc: Some(((r >> 30) % 20) as u16 + 5000),
                    country: Some(["FR", "DE", "US"][((r >> 35) % 3) as usize].into()),
                    channel: None,
                    lat: Some(((r >> 44) % 90) as f64),
                    lon: Some(((r >> 50) % 90) as f64),
                }
            })
            .collect()
    }

    fn spec() -> Arc<FeatureSpec> {
        Arc::new(FeatureSpec::from_toml_str(DEFAULT).expect("default spec"))
    }

    fn info(partition: u32, partitions: u32) -> SnapshotInfo {
        SnapshotInfo {
            spec_fingerprint: String::new(),
            partition,
            partitions,
            offset: 1234,
            watermark_ms: None,
            entities: 0,
            events: 0,
            pending_labels: 0,
            created_ms: 0,
        }
    }

    fn expect(spec: &Arc<FeatureSpec>) -> Expect<'_> {
        Expect {
            spec,
            partition: 2,
            partitions: 4,
        }
    }

    /// A restored shard gives, for every later event, exactly the features and outcomes of the
    /// shard it was taken from, and ends with the same counters.
    #[test]
    fn a_restored_shard_continues_exactly() {
        let spec = spec();
        let txs = stream(30_000);
        let (first, second) = txs.split_at(24_000);
        let mut a = Shard::replaying(Arc::clone(&spec));
        let mut row = vec![0.0; spec.n_features()];
        for tx in first {
            a.process(tx, &mut row);
        }
        let bytes = encode(&a, info(2, 4));
        let (got, mut b) = decode(&bytes, expect(&spec)).expect("decodes");
        assert_eq!(got.offset, 1234);
        assert_eq!(got.spec_fingerprint, spec.fingerprint());
        assert_eq!(got.entities as usize, a.engine().stats().entities);
        let sized = |s: &Shard| EngineStats {
            state_bytes: 0,
            ..s.engine().stats()
        };
        // Restored blocks are sized to their events, so only the byte count may differ.
        assert_eq!(sized(&b), sized(&a));
        assert!(b.engine().stats().state_bytes <= a.engine().stats().state_bytes);
        assert_eq!(
            b.engine().unpositioned_entities(),
            a.engine().unpositioned_entities(),
            "the restore kept every entity's running aggregates"
        );
        assert_eq!(b.pending_labels(), a.pending_labels());
        assert!(a.pending_labels() > 0 && a.engine().stats().labels_applied > 0);
        let mut row_b = vec![0.0; spec.n_features()];
        let mut outcomes = std::collections::HashSet::new();
        for tx in second {
            let oa = a.process(tx, &mut row);
            let ob = b.process(tx, &mut row_b);
            assert_eq!(oa, ob, "{}", tx.transaction_id);
            let (ra, rb): (Vec<u32>, Vec<u32>) = (
                row.iter().map(|v| v.to_bits()).collect(),
                row_b.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(ra, rb, "features of {}", tx.transaction_id);
            outcomes.insert(oa);
        }
        assert!(
            outcomes.contains(&EventOutcome::Late) && outcomes.contains(&EventOutcome::InOrder)
        );
        a.finish();
        b.finish();
        assert_eq!(sized(&a), sized(&b));
        let again = decode(&encode(&b, info(2, 4)), expect(&spec))
            .expect("re-decodes")
            .1;
        assert_eq!(sized(&again), sized(&b));
    }

    #[test]
    fn snapshots_of_another_spec_partition_or_damaged_are_refused() {
        let spec = spec();
        let mut shard = Shard::live(Arc::clone(&spec));
        let mut row = vec![0.0; spec.n_features()];
        for tx in stream(2_000) {
            shard.process(&tx, &mut row);
        }
        let bytes = encode(&shard, info(2, 4));
        assert!(decode(&bytes, expect(&spec)).is_ok());

        let other = Arc::new(
            FeatureSpec::from_toml_str(
                &DEFAULT.replace("allowed_lateness = \"10m\"", "allowed_lateness = \"20m\""),
            )
            .expect("other spec"),
        );
        let err = decode(&bytes, expect(&other))
            .map(|_| ())
            .expect_err("other spec");
        assert!(matches!(err, SnapshotError::Spec { .. }), "{err}");
        assert!(err.to_string().contains(&other.fingerprint()), "{err}");

        let moved = Expect {
            partitions: 8,
            ..expect(&spec)
        };
        let err = decode(&bytes, moved)
            .map(|_| ())
            .expect_err("other partition count");
        assert!(err.to_string().contains("partition 2 of 8"), "{err}");

        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let err = decode(&flipped, expect(&spec))
            .map(|_| ())
            .expect_err("corrupt");
        assert!(matches!(err, SnapshotError::Checksum { .. }), "{err}");

        for cut in [0, 7, 11, 12, 40, bytes.len() / 3, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut], expect(&spec)).is_err(),
                "cut at {cut}"
            );
        }
        let mut version = bytes.clone();
        version[8] = 9;
        let err = decode(&version, expect(&spec))
            .map(|_| ())
            .expect_err("version");
        assert!(matches!(err, SnapshotError::Version { found: 9 }), "{err}");
        assert_eq!(
            decode(b"hello", expect(&spec))
                .map(|_| ())
                .expect_err("magic"),
            SnapshotError::Magic
        );
    }

    /// Damage that passes the checksum (a bug, or a hostile store) is refused or restored
    /// without panicking: every byte of a small snapshot's body changed in turn, the checksum
    /// recomputed.
    #[test]
    fn damaged_bodies_with_valid_checksums_never_panic() {
        let spec = spec();
        let mut shard = Shard::replaying(Arc::clone(&spec));
        let mut row = vec![0.0; spec.n_features()];
        for tx in stream(40) {
            shard.process(&tx, &mut row);
        }
        let bytes = encode(&shard, info(2, 4));
        let header = read_info(&bytes).expect("valid");
        let body_start = 16 + serde_json::to_vec(&header).expect("json").len() + 8;
        let mut refused = 0;
        let later = stream(50);
        for i in (body_start..bytes.len() - 4).step_by(3) {
            for flip in [0x01u8, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let n = b.len() - 4;
                let crc = crc32fast::hash(&b[..n]);
                b[n..].copy_from_slice(&crc.to_le_bytes());
                match decode(&b, expect(&spec)) {
                    Ok((_, mut s)) => {
                        // Whatever was restored keeps working.
                        for tx in &later[40..] {
                            s.process(tx, &mut row);
                        }
                    }
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > 0);
    }
}
