//! State snapshots at scale: how long a partition's window state takes to snapshot and to
//! restore, against the full replay that rebuilds it without a snapshot.
//!
//! The state is the `features` bench's default-spec stream (`benches/support/stream.rs`):
//! `VIGIL_BENCH_CARDS` active cards (default 1,000,000), `cards / 100` merchants, 1.3 spans of 30
//! days of traffic (~8.5 transactions per card per 30 days, 1 % labelled fraud), so the state
//! holds 30 days of history for every card, as a partition's would after 37 days of traffic.
//! One [`Shard`] holds it all (one partition; with P partitions each holds about 1/P of it).
//!
//! Figures (printed, one line each, all measured in this run):
//! - **full replay**: the engine processing the whole history, i.e. what a rebuild costs
//!   without a snapshot *before* any Kafka fetch and decoding (the Kafka rebuild is slower);
//! - **encode**: serialising the state, done under the partition's lock, so that partition's
//!   scoring pauses this long (a record arriving meanwhile waits up to this long); the buffer
//!   it encodes into is prepared beforehand, outside the lock (shown apart: fresh memory is
//!   slow on this VM), and reused by the next snapshot (shown too);
//! - **write / read**: the snapshot to and from a local-directory [`ObjectStateStore`];
//! - **decode**: rebuilding the state from the bytes;
//! - **restore** = read + decode, the ≤ 30 s target; and the ratio full replay / restore.
//!
//! The restored state is checked against the original on the next 200,000 events (equal
//! feature rows), so the figures are of a restore that works.
//!
//! Run: `cargo bench --bench state` (about 2-4 minutes and ~8 GB of memory at 1M cards;
//! `VIGIL_BENCH_CARDS=100000` for a quick run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil::features::snapshot::{self, Expect, SnapshotInfo};
use vigil::features::{FeatureSpec, Shard};
use vigil::state::{ObjectStateStore, StateStore};

/// The allocator the `vigil` binary runs with, so allocation costs are the product's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY_MS: i64 = 86_400_000;
const CHUNK: usize = 50_000;

#[path = "support/stream.rs"]
mod stream;
use stream::{Item, Stream};

fn feed(shard: &mut Shard, items: &[Item], row: &mut [f32]) {
    for item in items {
        match item {
            Item::Tx(tx) => {
                shard.process(tx, row);
            }
            Item::Label(l) => shard.push_label(l.clone()),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let cards: usize = std::env::var("VIGIL_BENCH_CARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let spec_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("training/features.toml");
    let spec = Arc::new(FeatureSpec::load(&spec_path).expect("default spec"));
    let span = 30 * DAY_MS;
    let mut stream = Stream::new(cards, span, 42);
    let total = (stream.per_span() * 1.3) as usize;
    let mut shard = Shard::live(Arc::clone(&spec));
    let mut row = vec![0.0f32; spec.n_features()];
    let mut items = Vec::with_capacity(CHUNK + CHUNK / 50);
    let mut replay = Duration::ZERO;
    let mut done = 0;
    while done < total {
        items.clear();
        stream.fill(CHUNK, &mut items);
        let t = Instant::now();
        feed(&mut shard, &items, &mut row);
        replay += t.elapsed();
        done += CHUNK;
        if done % (CHUNK * 40) == 0 {
            eprintln!("  replayed {done} of {total} transactions");
        }
    }
    let stats = shard.engine().stats();
    println!(
        "state/{cards}: {done} transactions replayed; holding {} entities, {} events, {:.2} GB",
        stats.entities,
        stats.events_held,
        stats.state_bytes as f64 / 1e9
    );
    println!(
        "state/{cards}: full replay (engine only)  {:8.2} s  ({:.0} ns/transaction)",
        secs(replay),
        replay.as_nanos() as f64 / done as f64
    );

    let info = SnapshotInfo {
        spec_fingerprint: String::new(),
        partition: 0,
        partitions: 1,
        offset: done as i64,
        watermark_ms: None,
        entities: 0,
        events: 0,
        pending_labels: 0,
        created_ms: 0,
    };
    // As `ScoringCore::snapshot` does: the buffer is grown to the state's size and its pages
    // touched before the partition is locked (fresh pages cost ~20x the copy on this VM), then
    // the state is encoded into it; later snapshots reuse it.
    let mut bytes = Vec::new();
    let t = Instant::now();
    bytes.resize(stats.state_bytes + stats.state_bytes / 8, 0);
    bytes.clear();
    let prepare = t.elapsed();
    let t = Instant::now();
    snapshot::encode_into(&shard, info.clone(), &mut bytes);
    let encode = t.elapsed();
    let t = Instant::now();
    snapshot::encode_into(&shard, info, &mut bytes);
    let again = t.elapsed();
    let size = bytes.len();
    println!(
        "state/{cards}: buffer, first snapshot    {:8.2} s  (outside the lock: scoring goes on)",
        secs(prepare)
    );
    println!(
        "state/{cards}: encode, next snapshot     {:8.2} s",
        secs(again)
    );
    println!(
        "state/{cards}: encode (scoring paused)    {:8.2} s  {:.2} GB ({:.0} bytes per card, {:.2} GB/s)",
        secs(encode),
        size as f64 / 1e9,
        size as f64 / cards as f64,
        size as f64 / 1e9 / secs(encode)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = ObjectStateStore::local(dir.path()).expect("store");
    let t = Instant::now();
    store.put("p00000/snapshot.snap", &bytes).expect("write");
    drop(bytes);
    let write = t.elapsed();
    println!(
        "state/{cards}: write to a local store     {:8.2} s",
        secs(write)
    );

    let t = Instant::now();
    let read_back = store
        .get("p00000/snapshot.snap")
        .expect("read")
        .expect("present");
    let read = t.elapsed();
    let t = Instant::now();
    let expect = Expect {
        spec: &spec,
        partition: 0,
        partitions: 1,
    };
    let (_, mut restored) = snapshot::decode(&read_back, expect).expect("decodes");
    let decode = t.elapsed();
    drop(read_back);
    let restore = read + decode;
    println!(
        "state/{cards}: read from the store        {:8.2} s",
        secs(read)
    );
    println!(
        "state/{cards}: decode                     {:8.2} s",
        secs(decode)
    );
    println!(
        "state/{cards}: restore = read + decode    {:8.2} s  (full replay / restore = {:.1}x)",
        secs(restore),
        secs(replay) / secs(restore)
    );

    // The restored state gives the original's features.
    let mut other = vec![0.0f32; spec.n_features()];
    let mut checked = 0;
    while checked < 200_000 {
        items.clear();
        stream.fill(CHUNK, &mut items);
        for item in &items {
            match item {
                Item::Tx(tx) => {
                    shard.process(tx, &mut row);
                    restored.process(tx, &mut other);
                    assert_eq!(
                        row, other,
                        "restored state differs at {}",
                        tx.transaction_id
                    );
                }
                Item::Label(l) => {
                    shard.push_label(l.clone());
                    restored.push_label(l.clone());
                }
            }
        }
        checked += CHUNK;
    }
    println!("state/{cards}: restored state checked equal on the next {checked} transactions");
}
