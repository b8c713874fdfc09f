//! `vigil serve` against a real Kafka-API broker (tansu 0.6.0, sqlite storage), one broker and
//! random topic/group names per test; exactly-once against librdkafka's mock cluster (tansu has
//! no transactions). `vigil serve` runs as a child process, so a crash is a real `kill -9`.
//!
//! These tests need the broker binary and are `#[ignore]`d in a plain `cargo test`;
//! `scripts/test.sh` installs tansu and runs them (`--ignored`). The two that need no broker
//! (configuration refusals, exactly-once on the mock cluster) run in every `cargo test`.
//!
//! The reference every verdict is compared with is an uninterrupted in-process run over the
//! transactions topic as it ended up (each partition in offset order through a fresh
//! `ScoringCore`): "verdicts equal those of a scorer that never stopped".

#[path = "../support/mod.rs"]
mod support;

mod harness;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use harness::*;
use support::{free_addr, model, sample, vigil};
use vigil::decision::Decision;
use vigil::stream::wire::{self, VerdictRecord};

const PARTITIONS: u32 = 4;

/// Valid transactions interleaved with records that cannot be scored, and how many of those.
fn inputs_with_malformed(n: usize) -> (Vec<Input>, HashSet<String>, usize) {
    let txs = sample(n);
    let ids: HashSet<String> = txs.iter().map(|t| t.transaction_id.clone()).collect();
    let mut inputs = Vec::new();
    let mut bad = 0;
    for (i, tx) in txs.iter().enumerate() {
        inputs.push(Input::tx(tx));
        if i % 100 == 50 {
            let key = Some(tx.card_id.as_bytes().to_vec());
            let malformed = [
                Input { key: key.clone(), payload: Some(b"{not json".to_vec()) },
                Input { key: key.clone(), payload: None },
                Input {
                    key: key.clone(),
                    payload: Some(
                        format!(
                            r#"{{"transaction_id":"neg-{i}","timestamp":{},"card_id":"{}","merchant_id":"m","amount":-5}}"#,
                            tx.timestamp_ms, tx.card_id
                        )
                        .into_bytes(),
                    ),
                },
                // Keyed by something else than its card: would be scored against the wrong state.
                Input { key: Some(b"not-the-card".to_vec()), payload: Some(wire::encode_transaction(tx)) },
            ];
            bad += malformed.len();
            inputs.extend(malformed);
        }
    }
    (inputs, ids, bad)
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn every_record_ends_as_one_verdict_or_one_dead_letter_and_offsets_are_committed() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("all");
    names.create(&b, PARTITIONS);
    let (inputs, ids, bad) = inputs_with_malformed(2000);
    produce(&b, &names.transactions, &inputs, None);
    let total = inputs.len();

    let metrics = free_addr();
    let mut spec = ServeSpec::new(&b, &names);
    spec.metrics_addr = metrics.clone();
    let mut serve = spec.start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    let mut dlq = Reader::new(&b, &names.dlq, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while verdicts.records.len() + dlq.records.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "not every record was answered"
        );
        verdicts.read_for(Duration::from_millis(200));
        dlq.read_for(Duration::from_millis(100));
    }
    assert!(http_get(&metrics, "/readyz").contains("200 OK"));
    let old = model();
    assert_eq!(
        scrape(
            &metrics,
            &format!(
                "vigil_model_info{{model_id=\"{}\",version=\"{}\"}}",
                old.header.model_id, old.header.version
            )
        ),
        1.0
    );
    assert!(http_get(&metrics, "/healthz").contains("200 OK"));
    assert_eq!(
        scrape(&metrics, "vigil_transactions_in_total"),
        total as f64
    );
    assert_eq!(scrape(&metrics, "vigil_dead_letters_total"), bad as f64);
    let status = serve.terminate();
    assert!(
        status.success(),
        "graceful shutdown: {status:?}\n{}",
        serve.stderr_text()
    );
    // Nothing more arrives after the end (no duplicate from the shutdown).
    verdicts.read_for(Duration::from_secs(1));
    dlq.read_for(Duration::from_millis(500));

    // Verdicts: one per valid transaction, none missing, none duplicated, as an uninterrupted run.
    let reference = reference(&b, &names.transactions, total);
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert_eq!(
        per_tx.len(),
        ids.len(),
        "every valid transaction has a verdict"
    );
    assert!(per_tx.values().all(|&n| n == 1), "no duplicate verdicts");
    assert_eq!(per_tx.keys().cloned().collect::<HashSet<_>>(), ids);
    assert_eq!(verdicts.records.len() + dlq.records.len(), total);
    // Verdicts are keyed by card id.
    for r in &verdicts.records {
        assert_eq!(r.key.as_deref(), Some(r.verdict().card_id.as_bytes()));
    }

    // Dead letters: the original bytes, with reason, source partition and offset in headers.
    assert_eq!(dlq.records.len(), bad);
    let mut input = Reader::new(&b, &names.transactions, false);
    input.read_until(Duration::from_secs(30), "the input", |r| r.len() >= total);
    let by_pos: HashMap<(i32, i64), &Record> = input
        .records
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for d in &dlq.records {
        let p: i32 = d.headers[wire::HDR_PARTITION]
            .parse()
            .expect("partition header");
        let o: i64 = d.headers[wire::HDR_OFFSET].parse().expect("offset header");
        assert_eq!(d.headers[wire::HDR_TOPIC], names.transactions);
        let original = by_pos[&(p, o)];
        assert_eq!(
            d.payload.as_deref().unwrap_or_default(),
            original.payload.as_deref().unwrap_or_default()
        );
        assert!(!d.headers[wire::HDR_ERROR].is_empty());
        *reasons
            .entry(d.headers[wire::HDR_REASON].clone())
            .or_default() += 1;
    }
    let quarter = bad / 4;
    assert_eq!(reasons["decode"], 2 * quarter, "{reasons:?}");
    assert_eq!(reasons["validation"], quarter, "{reasons:?}");
    assert_eq!(reasons["key_mismatch"], quarter, "{reasons:?}");

    // Alerts: exactly the non-approve verdicts.
    let mut alerts = Reader::new(&b, &names.alerts, false);
    alerts.read_for(Duration::from_secs(1));
    let flagged: HashSet<String> = verdicts
        .records
        .iter()
        .map(Record::verdict)
        .filter(|v| v.decision != Decision::Approve)
        .map(|v| v.transaction_id)
        .collect();
    let alerted: Vec<String> = alerts
        .records
        .iter()
        .map(|r| r.verdict().transaction_id)
        .collect();
    assert!(!flagged.is_empty());
    assert_eq!(alerted.len(), flagged.len());
    assert_eq!(alerted.into_iter().collect::<HashSet<_>>(), flagged);

    // Offsets were committed up to the end of every partition after a graceful stop.
    let committed = committed_offsets(&b, &names);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for r in &input.records {
        let e = ends.entry(r.partition).or_default();
        *e = (*e).max(r.offset + 1);
    }
    assert_eq!(committed, ends);
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn protobuf_input_is_scored_and_bad_messages_are_dead_letters() {
    use vigil::proto::codec::transaction_to_bytes;
    use vigil::stream::wire::InputFormat;
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("proto");
    names.create(&b, PARTITIONS);
    let txs = sample(1000);
    let ids: HashSet<String> = txs.iter().map(|t| t.transaction_id.clone()).collect();
    let mut inputs = Vec::new();
    let (mut undecodable, mut invalid) = (0, 0);
    for (i, tx) in txs.iter().enumerate() {
        let key = Some(tx.card_id.as_bytes().to_vec());
        inputs.push(Input {
            key: key.clone(),
            payload: Some(transaction_to_bytes(tx)),
        });
        if i % 100 == 50 {
            // Not a protobuf message (a truncated varint tag).
            inputs.push(Input {
                key: key.clone(),
                payload: Some(vec![0xff; 4]),
            });
            undecodable += 1;
            // A well-formed message that fails validation.
            let mut bad = tx.clone();
            bad.transaction_id = format!("neg-{i}");
            bad.amount = -5.0;
            inputs.push(Input {
                key,
                payload: Some(transaction_to_bytes(&bad)),
            });
            invalid += 1;
        }
    }
    produce(&b, &names.transactions, &inputs, None);
    let total = inputs.len();

    let mut spec = ServeSpec::new(&b, &names);
    spec.args = vec!["--set".into(), "kafka.input_format=protobuf".into()];
    let mut serve = spec.start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    let mut dlq = Reader::new(&b, &names.dlq, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while verdicts.records.len() + dlq.records.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "not every record was answered: {} verdicts, {} dead letters of {total}\n{}",
            verdicts.records.len(),
            dlq.records.len(),
            serve.stderr_text()
        );
        verdicts.read_for(Duration::from_millis(200));
        dlq.read_for(Duration::from_millis(100));
    }
    assert!(serve.terminate().success(), "{}", serve.stderr_text());

    let reference = reference_as(&b, &names.transactions, total, InputFormat::Protobuf);
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert!(per_tx.values().all(|&n| n == 1), "no duplicate verdicts");
    assert_eq!(per_tx.keys().cloned().collect::<HashSet<_>>(), ids);
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for d in &dlq.records {
        *reasons
            .entry(d.headers[wire::HDR_REASON].clone())
            .or_default() += 1;
        if d.headers[wire::HDR_REASON] == "validation" {
            assert!(
                d.headers[wire::HDR_ERROR].contains("amount"),
                "{:?}",
                d.headers
            );
        }
    }
    assert_eq!(reasons.get("decode"), Some(&undecodable), "{reasons:?}");
    assert_eq!(reasons.get("validation"), Some(&invalid), "{reasons:?}");
}

fn committed_offsets(brokers: &str, names: &Names) -> HashMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let c: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &names.group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        tpl.add_partition(&names.transactions, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn kill_9_and_restart_every_transaction_scored_as_if_uninterrupted() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("kill");
    names.create(&b, PARTITIONS);
    let txs = sample(8000);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    let producer = produce_in_background(&b, &names.transactions, inputs, 2500.0);

    let state = tempfile::tempdir().expect("state dir");
    let mut spec = ServeSpec::new(&b, &names);
    spec.args = vec![
        "--state-dir".into(),
        support::s(state.path()).into(),
        "--set".into(),
        "state.interval=1s".into(),
    ];
    let mut first = spec.start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until(Duration::from_secs(60), "2000 verdicts", |r| {
        r.len() >= 2000
    });
    // Periodic snapshots were written before the crash.
    first.wait_for_stderr("a snapshot", Duration::from_secs(30), |l| {
        l.contains("state snapshot written").then_some(())
    });
    verdicts.read_until(Duration::from_secs(60), "500 more verdicts", |r| {
        r.len() >= 2500
    });
    first.kill9();
    let before = verdicts.records.len();
    let mut second = spec.start();
    producer.join().expect("producer");
    let ids: HashSet<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(120));
    verdicts.read_for(Duration::from_secs(1));
    assert!(second.terminate().success(), "{}", second.stderr_text());

    let reference = reference(&b, &names.transactions, txs.len());
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert_eq!(per_tx.len(), ids.len());
    let dups: usize = per_tx.values().map(|n| n - 1).sum();
    eprintln!("killed after {before} verdicts; {dups} transactions scored twice (at-least-once)");
    let log = first.stderr_text();
    assert!(log.contains("partitions assigned"), "{log}");
    // The restart restored each partition from a snapshot and replayed only its tail.
    let log = second.stderr_text();
    let restored: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("state restored from a snapshot and its tail replayed"))
        .collect();
    eprintln!("{}", restored.join("\n"));
    let restored = restored.len();
    assert!(restored >= PARTITIONS as usize, "{log}");
    assert!(!log.contains("full replay"), "{log}");
}

/// A damaged snapshot is refused with the reason, and the partition falls back to the next
/// older snapshot or to a full replay; verdicts stay those of an uninterrupted run.
#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn a_damaged_snapshot_is_refused_and_the_state_replayed() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("bad-snap");
    names.create(&b, PARTITIONS);
    let txs = sample(3000);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    produce(&b, &names.transactions, &inputs[..2000], None);
    let state = tempfile::tempdir().expect("state dir");
    let mut spec = ServeSpec::new(&b, &names);
    spec.args = vec!["--state-dir".into(), support::s(state.path()).into()];
    let mut first = spec.start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    let ids: HashSet<&str> = txs[..2000]
        .iter()
        .map(|t| t.transaction_id.as_str())
        .collect();
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(120));
    assert!(first.terminate().success(), "{}", first.stderr_text());
    // The clean shutdown wrote one snapshot per partition; damage every one of them.
    let mut damaged = 0;
    for entry in walk(state.path()) {
        let mut bytes = std::fs::read(&entry).expect("read snapshot");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&entry, bytes).expect("write snapshot");
        damaged += 1;
    }
    assert_eq!(damaged, PARTITIONS as usize, "one snapshot per partition");

    let mut second = spec.start();
    produce(&b, &names.transactions, &inputs[2000..], None);
    let all: HashSet<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    verdicts.read_until_verdicts_for(&all, Duration::from_secs(120));
    assert!(second.terminate().success(), "{}", second.stderr_text());
    let log = second.stderr_text();
    assert!(log.contains("snapshot refused"), "{log}");
    assert!(log.contains("checksum mismatch"), "{log}");
    assert!(log.contains("full replay"), "{log}");
    let reference = reference(&b, &names.transactions, txs.len());
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert_eq!(per_tx.len(), all.len());
}

/// One record dated a day ahead of its record timestamp, among normal traffic, is a dead letter
/// `future_timestamp` and changes no state: every other verdict equals a run without it (before
/// the rule it moved its partition's watermark a day ahead, and every later transaction of the
/// partition was scored but never added to its card's windows).
#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn a_record_dated_a_day_ahead_is_a_dead_letter_and_freezes_nothing() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("future");
    names.create(&b, PARTITIONS);
    let txs = sample(3000);
    let mut inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    let mut poison = txs[1000].clone();
    poison.transaction_id = "from-the-future".into();
    poison.timestamp_ms = wire::now_ms() + 86_400_000;
    inputs.insert(1001, Input::tx(&poison));
    produce(&b, &names.transactions, &inputs, None);

    let mut serve = ServeSpec::new(&b, &names).start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    let ids: HashSet<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(120));
    let mut dlq = Reader::new(&b, &names.dlq, false);
    dlq.read_until(Duration::from_secs(30), "the dead letter", |r| {
        !r.is_empty()
    });
    verdicts.read_for(Duration::from_secs(1));
    assert!(serve.terminate().success(), "{}", serve.stderr_text());

    assert_eq!(dlq.records.len(), 1);
    let dead = &dlq.records[0];
    assert_eq!(
        dead.headers["vigil.reason"], "future_timestamp",
        "{:?}",
        dead.headers
    );
    assert!(
        dead.headers["vigil.error"].contains("max_future_skew"),
        "{:?}",
        dead.headers
    );
    assert!(
        !verdicts
            .records
            .iter()
            .any(|r| r.verdict().transaction_id == "from-the-future"),
        "the future record got a verdict"
    );
    let reference = reference(&b, &names.transactions, inputs.len());
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert_eq!(per_tx.len(), ids.len());
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A scorer that has caught up restarts with no new traffic: rebuilding its partitions must not
/// wait for records that are not coming (on tansu, reading the last committed record inside the
/// newest batch waited 60 s and then failed, so a quiet partition crash-looped), and it is ready
/// within seconds, then scores what arrives next.
#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn a_caught_up_scorer_restarts_without_new_traffic() {
    let broker = Broker::start_in_memory();
    let b = broker.brokers();
    let names = Names::new("caught-up");
    names.create(&b, PARTITIONS);
    let txs = sample(4100);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    // The history goes in as a user sends it, with `vigil replay` (large producer batches: the
    // last committed record of each partition sits inside its newest batch).
    vigil()
        .args(["replay", "--brokers", &b, "--topic", &names.transactions])
        .args([
            "--data",
            support::s(&support::sample_path()),
            "--limit",
            "4000",
        ])
        .assert_success();
    let ids: HashSet<&str> = txs[..4000]
        .iter()
        .map(|t| t.transaction_id.as_str())
        .collect();
    let mut first = ServeSpec::new(&b, &names).start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(120));
    assert!(first.terminate().success(), "{}", first.stderr_text());

    // Restarted twice: from the snapshots the clean shutdown wrote (nothing to replay), and
    // without snapshots (a full replay of each partition).
    let state = tempfile::tempdir().expect("state dir");
    let state_dir = support::s(state.path()).to_string();
    let mut second = None;
    for (round, args) in [
        vec!["--state-dir", &state_dir],
        vec!["--set", "state.snapshots=false"],
    ]
    .into_iter()
    .enumerate()
    {
        let metrics = free_addr();
        let mut spec = ServeSpec::new(&b, &names);
        spec.metrics_addr = metrics.clone();
        spec.args = args.iter().map(|a| a.to_string()).collect();
        let mut serve = spec.start();
        wait_for(
            "the restarted scorer to be ready",
            Duration::from_secs(30),
            || http_get(&metrics, "/readyz").starts_with("HTTP/1.1 200"),
        );
        let log = serve.stderr_text();
        assert!(!log.contains("rebuild failed"), "{log}");
        if round == 0 {
            // The first restart has no snapshot yet (the first run wrote them elsewhere):
            // full replay; then a clean stop writes them, and the next start restores them.
            assert!(log.contains("full replay"), "{log}");
            assert!(serve.terminate().success(), "{}", serve.stderr_text());
            let mut again = spec.start();
            wait_for(
                "the scorer restored from snapshots to be ready",
                Duration::from_secs(30),
                || http_get(&metrics, "/readyz").starts_with("HTTP/1.1 200"),
            );
            let log = again.stderr_text();
            assert!(log.contains("tail_records=0"), "{log}");
            // /readyz says, per partition, how its state got ready.
            let body = http_get(&metrics, "/readyz");
            for p in 0..PARTITIONS {
                assert!(
                    body.contains(&format!(
                        "partition {p}: scoring (restored from the snapshot"
                    )),
                    "{body}"
                );
            }
            assert!(!log.contains("full replay"), "{log}");
            assert!(again.terminate().success(), "{}", again.stderr_text());
        } else {
            assert!(log.contains("full replay"), "{log}");
            let body = http_get(&metrics, "/readyz");
            assert!(
                body.contains("partition 0: scoring (state rebuilt by a full replay"),
                "{body}"
            );
            second = Some(serve);
        }
    }
    let mut second = second.expect("the last restart runs on");

    produce(&b, &names.transactions, &inputs[4000..], None);
    let next: HashSet<&str> = txs[4000..]
        .iter()
        .map(|t| t.transaction_id.as_str())
        .collect();
    verdicts.read_until_verdicts_for(&next, Duration::from_secs(60));
    assert!(second.terminate().success(), "{}", second.stderr_text());
}

/// SIGTERM while a partition's state is being rebuilt stops the process promptly and cleanly
/// (the rebuild used to hold the poll thread, ignoring the signal, until it gave up after 60 s
/// and the process exited with an error). The rebuild is made to wait by a committed offset
/// beyond the partition's records, whose last record never arrives.
#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn sigterm_during_a_rebuild_stops_promptly() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("term-rebuild");
    names.create(&b, PARTITIONS);
    let inputs: Vec<Input> = sample(200).iter().map(Input::tx).collect();
    produce(&b, &names.transactions, &inputs, None);
    let beyond: Vec<(i32, i64)> = (0..PARTITIONS as i32).map(|p| (p, 1_000_000)).collect();
    commit_offsets(&b, &names.group, &names.transactions, &beyond);

    let mut serve = ServeSpec::new(&b, &names).start();
    serve.wait_for_stderr("`rebuilding`", Duration::from_secs(60), |l| {
        l.contains("partitions assigned").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let signalled = std::time::Instant::now();
    let status = serve.terminate();
    let took = signalled.elapsed();
    let log = serve.stderr_text();
    assert!(status.success(), "{status}: {log}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} to stop: {log}"
    );
    assert!(log.contains("state rebuild stopped"), "{log}");
}

/// A rebuild runs beside the poll loop, not inside it: with `max.poll.interval.ms` at 10 s and
/// replays made to take longer (a test hook slows each replayed record), the member keeps its
/// partitions (one assignment, no revocation, no poll-interval eviction), a partition with
/// nothing to rebuild scores while the others are still replaying, `/readyz` shows each
/// partition's progress, and every verdict equals an uninterrupted run's.
#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn a_rebuild_longer_than_max_poll_interval_keeps_the_group_and_other_partitions_score() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("slow-rebuild");
    names.create(&b, PARTITIONS);
    // Partition 3 gets no history, so it has no committed offset and nothing to rebuild.
    let quiet = PARTITIONS - 1;
    let txs = sample(4000);
    let (quiet_txs, busy): (Vec<_>, Vec<_>) = txs
        .iter()
        .partition(|t| vigil::partition::partition_for(t.card_id.as_bytes(), PARTITIONS) == quiet);
    let history = &busy[..busy.len() * 3 / 4];
    let later = &busy[history.len()..];
    let ids = |ts: &[&vigil::record::Transaction]| -> HashSet<String> {
        ts.iter().map(|t| t.transaction_id.clone()).collect()
    };
    let inputs = |ts: &[&vigil::record::Transaction]| -> Vec<Input> {
        ts.iter().map(|t| Input::tx(t)).collect()
    };
    produce(&b, &names.transactions, &inputs(history), None);
    let first_ids = ids(history);
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    let mut first = ServeSpec::new(&b, &names).start();
    verdicts.read_until_verdicts_for(
        &first_ids.iter().map(String::as_str).collect(),
        Duration::from_secs(120),
    );
    assert!(first.terminate().success(), "{}", first.stderr_text());

    // About 700 records per rebuilt partition at 16 ms each: > 10 s per partition.
    let metrics = free_addr();
    let mut spec = ServeSpec::new(&b, &names);
    spec.metrics_addr = metrics.clone();
    spec.args = [
        "--set",
        "state.snapshots=false",
        "--set",
        "kafka.consumer.max.poll.interval.ms=10000",
    ]
    .map(String::from)
    .to_vec();
    spec.env = vec![("VIGIL_FAILPOINT_REPLAY_RECORD_MS".into(), "16".into())];
    let mut serve = spec.start();
    wait_for(
        "the partition with nothing to rebuild to score",
        Duration::from_secs(30),
        || {
            http_get(&metrics, "/readyz").contains(&format!(
                "partition {quiet}: scoring (fresh state: no committed offset)"
            ))
        },
    );
    produce(&b, &names.transactions, &inputs(&quiet_txs), None);
    let quiet_ids = ids(&quiet_txs);
    verdicts.read_until_verdicts_for(
        &quiet_ids.iter().map(String::as_str).collect(),
        Duration::from_secs(60),
    );
    let body = http_get(&metrics, "/readyz");
    // Not ready while partitions rebuild (their cards' gRPC calls would be refused), but
    // partition 3 scored meanwhile, and each partition's progress shows.
    assert!(
        body.starts_with("HTTP/1.1 503")
            && body.contains("rebuilding their state")
            && body.contains("replaying offsets"),
        "partition {quiet} scored while others were still replaying: {body}"
    );

    wait_for("every rebuild to finish", Duration::from_secs(120), || {
        let done = serve
            .stderr_text()
            .matches("state rebuilt by a full replay")
            .count();
        done >= (PARTITIONS - 1) as usize
    });
    let log = serve.stderr_text();
    let seconds: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("state rebuilt by a full replay"))
        .filter_map(|l| {
            l.split("seconds=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(seconds.len(), (PARTITIONS - 1) as usize, "{log}");
    assert!(
        seconds.iter().all(|&s| s > 10.0),
        "each rebuild outlasted max.poll.interval.ms: {seconds:?}"
    );
    assert_eq!(log.matches("partitions assigned").count(), 1, "{log}");
    assert!(!log.contains("partitions revoked"), "{log}");
    assert!(!log.contains("maximum poll interval"), "{log}");

    produce(&b, &names.transactions, &inputs(later), None);
    let all = ids(&txs.iter().collect::<Vec<_>>());
    verdicts.read_until_verdicts_for(
        &all.iter().map(String::as_str).collect(),
        Duration::from_secs(60),
    );
    assert!(serve.terminate().success(), "{}", serve.stderr_text());
    let reference = reference(&b, &names.transactions, txs.len());
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert_eq!(per_tx.len(), txs.len());
}

/// A topic whose retention deleted part of the window (record timestamps equal to event
/// times, shifted to end now; `retention.ms` = 3 days, the windows need 37): each partition's
/// rebuild says what is missing and which features it affects, counted; with
/// `on_short_history = "refuse"` the partitions stay paused and `/readyz` is not ready, with
/// `warn` they score. Records deleted before they were scored (a committed offset the retention
/// passed) are reported too, and nothing that is left is skipped.
#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn retention_shorter_than_the_window_is_reported_and_refuse_keeps_the_partitions_paused() {
    let broker = Broker::start_with_fast_retention();
    let b = broker.brokers();
    let names = Names::new("retention");
    const DAY_MS: i64 = 86_400_000;
    create_topic_with(
        &b,
        &names.transactions,
        PARTITIONS,
        &[
            ("cleanup.policy", "delete"),
            ("retention.ms", &(3 * DAY_MS).to_string()),
        ],
    );
    names.create(&b, PARTITIONS);
    let txs = sample(3000);
    let newest = txs.iter().map(|t| t.timestamp_ms).max().expect("records");
    let shift = chrono::Utc::now().timestamp_millis() - 60_000 - newest;
    let timed: Vec<(Input, i64)> = txs
        .iter()
        .map(|t| (Input::tx(t), t.timestamp_ms + shift))
        .collect();
    produce_timed(&b, &names.transactions, &timed);

    // The broker's maintenance deletes what is older than 3 days.
    let mut left: Vec<Record> = Vec::new();
    wait_for(
        "the retention to delete the oldest records",
        Duration::from_secs(60),
        || {
            let mut r = Reader::new(&b, &names.transactions, false);
            r.read_for(Duration::from_secs(3));
            left = r.records.clone();
            (0..PARTITIONS as i32).all(|p| {
                left.iter()
                    .filter(|x| x.partition == p)
                    .map(|x| x.offset)
                    .min()
                    .is_some_and(|o| o > 1)
            })
        },
    );
    assert!(
        left.len() < txs.len() * 3 / 4,
        "{} of {} left",
        left.len(),
        txs.len()
    );
    let end = |p: i32| {
        left.iter()
            .filter(|x| x.partition == p)
            .map(|x| x.offset + 1)
            .max()
    };
    let first = |p: i32| {
        left.iter()
            .filter(|x| x.partition == p)
            .map(|x| x.offset)
            .min()
    };
    // Partition 0 committed at offset 1: records 1.. were deleted before they were scored.
    // The others committed at their ends: everything scored, only the window is short.
    let committed: Vec<(i32, i64)> = (0..PARTITIONS as i32)
        .map(|p| {
            (
                p,
                if p == 0 {
                    1
                } else {
                    end(p).expect("records left")
                },
            )
        })
        .collect();
    commit_offsets(&b, &names.group, &names.transactions, &committed);

    let metrics = free_addr();
    let mut spec = ServeSpec::new(&b, &names);
    spec.metrics_addr = metrics.clone();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    for policy in ["refuse", "warn"] {
        spec.args = [
            "--set",
            "state.snapshots=false",
            "--set",
            &format!("state.on_short_history={policy}"),
        ]
        .map(String::from)
        .to_vec();
        let mut serve = spec.start();
        let settled = |body: &str| {
            (0..PARTITIONS).all(|p| {
                body.contains(&format!("partition {p}: refused"))
                    || body.contains(&format!("partition {p}: scoring"))
            })
        };
        let mut body = String::new();
        wait_for("every partition's rebuild", Duration::from_secs(60), || {
            body = http_get(&metrics, "/readyz");
            settled(&body)
        });
        let log = serve.stderr_text();
        assert!(log.contains("no longer holds"), "{log}");
        assert!(log.contains("card_amount_to_mean_30d"), "{log}");
        let gap = format!(
            "records 1..{} were deleted before they were scored",
            first(0).expect("left")
        );
        assert!(log.contains(&gap), "{gap}: {log}");
        assert!(scrape(&metrics, "vigil_short_history_total") >= f64::from(PARTITIONS));
        assert!(scrape(&metrics, "vigil_missing_history_seconds") > 0.0);
        assert!(scrape(&metrics, "vigil_deleted_unscored_records_total") > 0.0);
        if policy == "refuse" {
            assert!(body.starts_with("HTTP/1.1 503"), "{body}");
            for p in 0..PARTITIONS {
                assert!(body.contains(&format!("partition {p}: refused")), "{body}");
            }
            // Kept paused: nothing scored, nothing committed past.
            verdicts.read_for(Duration::from_secs(2));
            assert!(
                verdicts.records.is_empty(),
                "{} verdicts",
                verdicts.records.len()
            );
        } else {
            assert!(body.starts_with("HTTP/1.1 200"), "{body}");
            assert!(body.contains("with a short history"), "{body}");
            // What is left of partition 0 after its committed offset is scored, all of it.
            let want: Vec<String> = left
                .iter()
                .filter(|x| x.partition == 0)
                .map(|x| {
                    wire::decode_transaction_as(
                        wire::InputFormat::Json,
                        x.key.as_deref(),
                        x.payload.as_deref(),
                    )
                    .expect("a transaction")
                    .transaction_id
                })
                .collect();
            let want: HashSet<&str> = want.iter().map(String::as_str).collect();
            verdicts.read_until_verdicts_for(&want, Duration::from_secs(60));
            assert_eq!(
                verdicts.records.len(),
                want.len(),
                "partition 0's records left, each scored once; the others had all been scored"
            );
        }
        assert!(serve.terminate().success(), "{}", serve.stderr_text());
    }
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn two_scorers_in_one_group_split_the_partitions_and_score_everything() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("pair");
    names.create(&b, PARTITIONS);
    let txs = sample(8000);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    // 8 s of traffic: the second scorer must join while there is still some to split, also on
    // a loaded machine (at 2000/s the first one sometimes read everything before it joined).
    let producer = produce_in_background(&b, &names.transactions, inputs, 1000.0);

    let (ma, mb) = (free_addr(), free_addr());
    let mut spec = ServeSpec::new(&b, &names);
    spec.metrics_addr = ma.clone();
    let mut a = spec.start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until(Duration::from_secs(60), "1500 verdicts", |r| {
        r.len() >= 1500
    });
    spec.metrics_addr = mb.clone();
    let mut second = spec.start();
    producer.join().expect("producer");
    let ids: HashSet<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(120));
    let (in_a, in_b) = (
        scrape(&ma, "vigil_transactions_in_total"),
        scrape(&mb, "vigil_transactions_in_total"),
    );
    let (parts_a, parts_b) = (
        scrape(&ma, "vigil_assigned_partitions"),
        scrape(&mb, "vigil_assigned_partitions"),
    );
    assert!(a.terminate().success());
    assert!(second.terminate().success());
    verdicts.read_for(Duration::from_secs(1));

    eprintln!("scorer A read {in_a} records ({parts_a} partitions), B {in_b} ({parts_b})");
    assert!(
        in_a > 0.0 && in_b > 0.0,
        "both scorers worked: {in_a} / {in_b}"
    );
    assert_eq!(
        parts_a + parts_b,
        f64::from(PARTITIONS),
        "the partitions were split"
    );
    assert!(parts_a >= 1.0 && parts_b >= 1.0);
    let reference = reference(&b, &names.transactions, txs.len());
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert_eq!(per_tx.len(), ids.len());
    // B took over partitions A had scored: it restored them from the snapshots A wrote when
    // they were revoked (the shared state store), replaying only what A scored after them.
    let log_b = second.stderr_text();
    assert!(log_b.contains("state restored from a snapshot"), "{log_b}");
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn broker_restart_mid_stream_loses_nothing() {
    let mut broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("restart");
    names.create(&b, PARTITIONS);
    let txs = sample(6000);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    let producer = produce_in_background(&b, &names.transactions, inputs, 1500.0);
    let mut serve = ServeSpec::new(&b, &names).start();
    {
        let mut verdicts = Reader::new(&b, &names.verdicts, false);
        verdicts.read_until(Duration::from_secs(60), "1500 verdicts", |r| {
            r.len() >= 1500
        });
    }
    broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    producer.join().expect("producer survived the outage");
    let ids: HashSet<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(180));
    assert!(serve.terminate().success(), "{}", serve.stderr_text());
    let reference = reference(&b, &names.transactions, txs.len());
    let per_tx = check_against_reference(&verdicts.records, &reference);
    assert_eq!(per_tx.len(), ids.len());
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn hot_reload_under_load_switches_models_without_a_gap_and_refuses_a_bad_file() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("reload");
    names.create(&b, PARTITIONS);
    let dir = tempfile::tempdir().expect("tempdir");
    let old = model();
    // Same features and trees, other thresholds: another version.
    let (path, mut header) = serving_copy(dir.path(), 0.05, 0.2);
    header.model_id = "reloaded".into();
    header.version = vigil::model::format::content_version(&header, &old.forest);

    let txs = sample(9000);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    let producer = produce_in_background(&b, &names.transactions, inputs, 2000.0);
    let mut spec = ServeSpec::new(&b, &names);
    spec.model = path.clone();
    spec.args = vec!["--set".into(), "model.poll_interval=100ms".into()];
    let mut serve = spec.start();
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until(Duration::from_secs(60), "2000 verdicts", |r| {
        r.len() >= 2000
    });

    // A truncated file: refused, the old model keeps serving.
    let bytes = std::fs::read(&path).expect("model bytes");
    let tmp = dir.path().join("partial.tmp");
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    wait_for(
        "the bad file to be refused",
        Duration::from_secs(20),
        || serve.stderr_text().contains("model reload refused"),
    );
    let n = verdicts.records.len();
    verdicts.read_until(
        Duration::from_secs(60),
        "verdicts after the bad file",
        |r| r.len() >= n + 1000,
    );

    // A valid new model: swapped in while scoring continues.
    vigil::model::save(&path, &header, &old.forest).expect("save new model");
    producer.join().expect("producer");
    let ids: HashSet<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(120));
    assert!(serve.terminate().success());
    assert!(
        serve.stderr_text().contains("model reloaded"),
        "{}",
        serve.stderr_text()
    );

    let all: Vec<VerdictRecord> = verdicts.records.iter().map(Record::verdict).collect();
    let seen: HashSet<&str> = all.iter().map(|v| v.transaction_id.as_str()).collect();
    assert_eq!(
        seen.len(),
        ids.len(),
        "no transaction lost during the reloads"
    );
    let mut dlq = Reader::new(&b, &names.dlq, false);
    assert!(
        dlq.read_for(Duration::from_millis(500)).is_empty(),
        "no failed transaction"
    );
    let olds = all
        .iter()
        .filter(|v| v.model_version == old.header.version)
        .count();
    let news = all
        .iter()
        .filter(|v| v.model_version == header.version)
        .count();
    assert_eq!(
        olds + news,
        all.len(),
        "every verdict names one of the two models"
    );
    assert!(
        olds >= 3000,
        "the old model served through the bad file: {olds}"
    );
    assert!(news > 0, "the version switch is visible");
    // Per partition, in offset order: old, then new, never back.
    let mut by_part: HashMap<i32, Vec<&VerdictRecord>> = HashMap::new();
    for v in &all {
        by_part.entry(v.partition).or_default().push(v);
    }
    for vs in by_part.values_mut() {
        vs.sort_by_key(|v| v.offset);
        let first_new = vs.iter().position(|v| v.model_version == header.version);
        if let Some(i) = first_new {
            assert!(vs[i..].iter().all(|v| v.model_version == header.version));
        }
    }
    // The new model's verdicts use its thresholds, and carry its id.
    for v in all.iter().filter(|v| v.model_version == header.version) {
        assert_eq!(v.decision, header.thresholds.decide(v.score));
        assert_eq!(&*v.model_id, "reloaded");
    }
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let err = vigil()
        .args(["serve", "--set", "pipeline.queue_capacity=0"])
        .assert_failure()
        .stderr;
    assert!(err.contains("pipeline.queue_capacity"), "{err}");

    let err = vigil()
        .args(["serve", "--set", "kafka.consumer.session.timeout.ms=banana"])
        .args(["--metrics-addr", "", "--brokers", "127.0.0.1:1"])
        .assert_failure()
        .stderr;
    assert!(
        err.contains("session.timeout.ms"),
        "librdkafka names the property: {err}"
    );
}

/// What this can prove on librdkafka's mock cluster: the transactional path works (init, begin,
/// offsets sent to the transaction, commit), a crash mid-transaction leaves the committed
/// offsets at the last transaction boundary, and the restarted scorer's output joined with the
/// committed transactions has each verdict exactly once. What it cannot: the mock writes no
/// transaction markers (its Fetch reports the last stable offset as the high watermark and no
/// aborted transactions), so read_committed filtering of an aborted transaction's messages is
/// not observable here; the crash is injected before the open transaction's messages leave the
/// client.
#[test]
fn exactly_once_on_the_mock_cluster_survives_a_crash_mid_transaction() {
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let b = mock.bootstrap_servers();
    let names = Names::new("eos");
    for t in [
        &names.transactions,
        &names.alerts,
        &names.verdicts,
        &names.dlq,
    ] {
        mock.create_topic(t, 2, 1).expect("topic");
    }
    let txs = sample(3000);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    produce(&b, &names.transactions, &inputs, None);

    let mut spec = ServeSpec::new(&b, &names);
    spec.args = vec![
        "--exactly-once".into(),
        "--set".into(),
        "kafka.transactional_id=vigil-eos-test".into(),
        "--set".into(),
        "pipeline.transaction_records=200".into(),
        "--set".into(),
        "pipeline.transaction_interval=10s".into(),
        // The open transaction's messages stay in the client until the crash (a commit flushes
        // them, the crash comes first): the mock cluster would show them to read_committed
        // readers, having no transaction markers, so a shorter linger made this test flaky.
        "--set".into(),
        "kafka.producer.linger.ms=5000".into(),
    ];
    spec.env = vec![("VIGIL_FAILPOINT_ABORT_AFTER".into(), "1100".into())];
    let mut crashing = spec.start();
    let status = crashing.wait(Duration::from_secs(120));
    assert!(!status.success(), "the failpoint aborts the process");
    assert!(
        crashing
            .stderr_text()
            .contains("VIGIL_FAILPOINT_ABORT_AFTER"),
        "{}",
        crashing.stderr_text()
    );

    spec.env.clear();
    let mut serve = spec.start();
    let mut committed = Reader::new(&b, &names.verdicts, true);
    committed.read_until(
        Duration::from_secs(120),
        "every verdict, read_committed",
        |r| r.len() >= txs.len(),
    );
    committed.read_for(Duration::from_secs(2));
    assert!(serve.terminate().success(), "{}", serve.stderr_text());
    committed.read_for(Duration::from_secs(1));

    let mut per_tx: HashMap<String, usize> = HashMap::new();
    for r in &committed.records {
        *per_tx.entry(r.verdict().transaction_id).or_default() += 1;
    }
    assert_eq!(per_tx.len(), txs.len(), "every transaction has a verdict");
    assert!(
        per_tx.values().all(|&n| n == 1),
        "read_committed sees each verdict exactly once"
    );
    assert_eq!(committed.records.len(), txs.len());

    // The restart resumed at the last committed transaction's offsets (5 transactions of 200
    // records were committed before the crash at record 1100), not from the start, and not
    // past the open transaction.
    let log = serve.stderr_text();
    assert!(log.contains("records=2000 scored=2000"), "{log}");
    // And the committed verdicts equal an uninterrupted run.
    let reference = reference(&b, &names.transactions, txs.len());
    check_against_reference(&committed.records, &reference);
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn sighup_reloads_the_model_when_watching_is_off() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("hup");
    names.create(&b, PARTITIONS);
    let dir = tempfile::tempdir().expect("tempdir");
    let old = model();
    let (path, header) = serving_copy(dir.path(), 0.1, 0.3);

    let metrics = free_addr();
    let mut spec = ServeSpec::new(&b, &names);
    spec.model = path.clone();
    spec.metrics_addr = metrics.clone();
    spec.args = vec!["--set".into(), "model.watch=false".into()];
    let mut serve = spec.start();
    let txs = sample(1000);
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    produce(&b, &names.transactions, &inputs[..500], None);
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until(Duration::from_secs(60), "500 verdicts", |r| r.len() >= 500);
    vigil::model::save(&path, &header, &old.forest).expect("save new model");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !serve.stderr_text().contains("model reloaded"),
        "watching is off"
    );
    serve.signal("HUP");
    wait_for("the reload", Duration::from_secs(20), || {
        serve.stderr_text().contains("model reloaded")
    });
    let body = http_get(&metrics, "/metrics");
    assert!(
        body.contains(&format!(
            "vigil_model_info{{model_id=\"{}\",version=\"{}\"}} 1",
            header.model_id, header.version
        )),
        "{body}"
    );
    produce(&b, &names.transactions, &inputs[500..], None);
    verdicts.read_until(Duration::from_secs(60), "1000 verdicts", |r| {
        r.len() >= 1000
    });
    assert!(serve.terminate().success());
    let all: Vec<VerdictRecord> = verdicts.records.iter().map(Record::verdict).collect();
    let ids: HashSet<&str> = txs[500..]
        .iter()
        .map(|t| t.transaction_id.as_str())
        .collect();
    for v in all
        .iter()
        .filter(|v| ids.contains(v.transaction_id.as_str()))
    {
        assert_eq!(v.model_version, header.version, "produced after the reload");
    }
    for v in all
        .iter()
        .filter(|v| !ids.contains(v.transaction_id.as_str()))
    {
        assert_eq!(
            v.model_version, old.header.version,
            "produced before the reload"
        );
    }
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn the_labels_topic_feeds_the_scoring_core() {
    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("labels");
    names.create(&b, PARTITIONS);
    let labels_topic = format!("labels-{}", names.group);
    vigil::stream::kafka::ensure_topics(&b, &[&labels_topic], 1).expect("labels topic");
    let txs = sample(300);
    let mut labels: Vec<Input> = txs
        .iter()
        .filter_map(|t| t.label_event(7 * 86_400_000))
        .map(|l| Input {
            key: Some(l.transaction_id.as_bytes().to_vec()),
            payload: Some(wire::encode_label(&l)),
        })
        .collect();
    let valid = labels.len();
    labels.push(Input {
        key: None,
        payload: Some(b"{\"fraud\": 1}".to_vec()),
    });
    produce(&b, &labels_topic, &labels, None);

    let metrics = free_addr();
    let mut spec = ServeSpec::new(&b, &names);
    spec.metrics_addr = metrics.clone();
    spec.args = vec!["--labels-topic".into(), labels_topic.clone()];
    let mut serve = spec.start();
    wait_for("every label read", Duration::from_secs(60), || {
        scrape(&metrics, "vigil_labels_in_total{result=\"ok\"}") >= valid as f64
    });
    assert_eq!(
        scrape(&metrics, "vigil_labels_in_total{result=\"ok\"}"),
        valid as f64
    );
    assert_eq!(
        scrape(&metrics, "vigil_labels_in_total{result=\"invalid\"}"),
        1.0
    );
    // Transactions are still scored next to the labels feed.
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    produce(&b, &names.transactions, &inputs, None);
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until(Duration::from_secs(60), "every verdict", |r| {
        r.len() >= txs.len()
    });
    assert!(serve.terminate().success(), "{}", serve.stderr_text());
}

#[test]
#[ignore = "needs a tansu broker: scripts/test.sh runs it"]
fn an_alert_from_the_kafka_path_reaches_the_grpc_alert_stream() {
    use tokio_stream::StreamExt;
    use vigil::api::client::ClientOptions;
    use vigil::proto::{self as pb, codec};

    let broker = Broker::start();
    let b = broker.brokers();
    let names = Names::new("grpc-alerts");
    names.create(&b, PARTITIONS);
    let grpc = free_addr();
    let mut spec = ServeSpec::new(&b, &names);
    spec.args = vec!["--grpc-addr".into(), grpc.clone()];
    let mut serve = spec.start();

    // Subscribe before anything is produced: the server registers a subscriber before it
    // answers the call, so every alert scored after `stream_alerts` returns reaches it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut stream = rt.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let opts = ClientOptions {
                addr: grpc.clone(),
                connect_timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            };
            let attempt = match opts.connect().await {
                Ok(mut client) => client
                    .stream_alerts(pb::AlertFilter::default())
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                Err(e) => Err(e.to_string()),
            };
            match attempt {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the gRPC API of vigil serve never took a StreamAlerts call: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    #[allow(clippy::disallowed_methods)] // a finite number of items, read by this test
    let (alerts_tx, alerts_rx) = std::sync::mpsc::channel::<pb::Alert>();
    let collector = rt.spawn(async move {
        while let Some(item) = stream.next().await {
            let alert = item.expect("the alert stream ends without an error");
            if alerts_tx.send(alert).is_err() {
                break;
            }
        }
    });

    let txs = sample(2000);
    let ids: HashSet<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    let inputs: Vec<Input> = txs.iter().map(Input::tx).collect();
    produce(&b, &names.transactions, &inputs, None);

    // What the Kafka path said: every transaction's verdict, then the alerts topic.
    let mut verdicts = Reader::new(&b, &names.verdicts, false);
    verdicts.read_until_verdicts_for(&ids, Duration::from_secs(120));
    let flagged = verdicts
        .records
        .iter()
        .map(Record::verdict)
        .filter(|v| v.decision != Decision::Approve)
        .count();
    assert!(flagged > 0, "some of the sample's transactions are flagged");
    let mut alerts = Reader::new(&b, &names.alerts, false);
    alerts.read_until(Duration::from_secs(60), "every alert on Kafka", |r| {
        r.len() >= flagged
    });
    alerts.read_for(Duration::from_millis(500));
    let key =
        |id: &str, score: f32, decision: Decision| (id.to_string(), score.to_bits(), decision);
    let mut on_kafka: Vec<(String, u32, Decision)> = alerts
        .records
        .iter()
        .map(Record::verdict)
        .filter(|v| ids.contains(v.transaction_id.as_str()))
        .map(|v| key(&v.transaction_id, v.score, v.decision))
        .collect();
    on_kafka.sort();
    assert_eq!(
        on_kafka.len(),
        flagged,
        "one Kafka alert per flagged verdict"
    );

    // What the gRPC stream said: the same alerts, no more, none skipped.
    let mut on_grpc = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while on_grpc.len() < on_kafka.len() && std::time::Instant::now() < deadline {
        if let Ok(a) = alerts_rx.recv_timeout(Duration::from_millis(200)) {
            on_grpc.push(a);
        }
    }
    // Anything extra (a duplicate, say) would arrive about now.
    while let Ok(a) = alerts_rx.recv_timeout(Duration::from_secs(1)) {
        on_grpc.push(a);
    }
    let mut got: Vec<(String, u32, Decision)> = on_grpc
        .into_iter()
        .map(|a| match a.event {
            Some(pb::alert::Event::Verdict(v)) => {
                let v = codec::verdict_from_pb(v).expect("a well-formed verdict");
                key(&v.transaction_id, v.score, v.decision)
            }
            other => panic!("the subscriber was not expected to miss alerts: {other:?}"),
        })
        .collect();
    got.sort();
    // On failure, name the differences (transaction, score, decision), not both whole lists.
    let show = |v: Vec<&(String, u32, Decision)>| -> Vec<String> {
        v.into_iter()
            .map(|(id, bits, d)| format!("{id} {:.4} {}", f32::from_bits(*bits), d.as_str()))
            .collect()
    };
    let missing = show(on_kafka.iter().filter(|a| !got.contains(a)).collect());
    let extra = show(got.iter().filter(|a| !on_kafka.contains(a)).collect());
    assert!(
        got == on_kafka,
        "the gRPC alert stream should carry exactly the {} alerts on Kafka; it carried {}: \
         missing {missing:?}, not on Kafka {extra:?} (if neither, a duplicate)",
        on_kafka.len(),
        got.len()
    );

    // The same flagged transaction again (a producer's retry): the verdicts topic answers it,
    // but it is not a second alert, on Kafka or on the gRPC stream (the one `is_alert` rule).
    let again = txs
        .iter()
        .find(|t| on_kafka.iter().any(|(id, ..)| *id == t.transaction_id))
        .expect("a flagged transaction");
    let id = again.transaction_id.as_str();
    produce(&b, &names.transactions, &[Input::tx(again)], None);
    verdicts.read_until(
        Duration::from_secs(60),
        "the repeated transaction's verdict",
        |r| {
            r.iter()
                .filter(|x| x.verdict().transaction_id == id)
                .count()
                >= 2
        },
    );
    alerts.read_for(Duration::from_secs(1));
    let alerted = alerts
        .records
        .iter()
        .filter(|r| r.verdict().transaction_id == id)
        .count();
    assert_eq!(
        alerted, 1,
        "{id} scored twice is one alert on the alerts topic"
    );
    if let Ok(extra) = alerts_rx.recv_timeout(Duration::from_secs(1)) {
        panic!("{id} scored twice was alerted again on the gRPC stream: {extra:?}");
    }

    // A subscriber still connected does not hold up a graceful stop; its stream just ends.
    let status = serve.terminate();
    assert!(status.success(), "graceful shutdown: {status:?}");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), collector)
            .await
            .expect("the alert stream ends with the server")
            .expect("collector task");
    });
}
