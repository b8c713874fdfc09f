//! Feature engine behaviour: batch replay equals online processing, hand-computed semantics
//! (ties, lateness, labels known by the event time, eviction), spec loading.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil::features::{replay, EventOutcome, FeatureEngine, FeatureSpec, LabelOutcome, SpecError};
use vigil::record::{Channel, LabelEvent, Transaction};

use crate::support::{default_spec, repo, tx};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const T0: i64 = 1_700_000_000_000;

fn spec(toml: &str) -> Arc<FeatureSpec> {
    Arc::new(FeatureSpec::from_toml_str(toml).expect("spec"))
}

/// Column value by feature name.
fn col(spec: &FeatureSpec, row: &[f32], name: &str) -> f32 {
    let i = spec
        .feature_names()
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no feature {name}"));
    row[i]
}

/// A labelled history: 40 days, 300 cards, 30 merchants, some rows out of order, some with an
/// explicit label time.
fn history(seed: u64, n: usize) -> Vec<Transaction> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<Transaction> = (0..n)
        .map(|i| {
            let ts = T0 + rng.gen_range(0..40 * DAY) / MIN * MIN;
            let mut t = tx(format!("h{i}"))
                .at(ts)
                .card(format!("c{}", rng.gen_range(0..300)))
                .merchant(format!("m{}", rng.gen_range(0..30)))
                .amount(rng.gen_range(1.0..900.0))
                .build();
            t.label = Some(rng.gen_bool(0.1));
            if rng.gen_bool(0.3) {
                t.label_time_ms = Some(ts + rng.gen_range(0..20 * DAY));
            }
            t.country = Some(["FR", "DE", "ES"][rng.gen_range(0..3)].into());
            t.channel = Some(Channel::ALL[rng.gen_range(0..4)]);
            if rng.gen_bool(0.6) {
                t.lat = Some(rng.gen_range(40.0..50.0));
                t.lon = Some(rng.gen_range(-5.0..10.0));
            }
            t
        })
        .collect();
    out.sort_by_key(|t| t.timestamp_ms);
    // A few rows out of order (some within the 10-minute lateness, some not).
    for k in (50..n).step_by(37) {
        out.swap(k, k - rng.gen_range(1..4));
    }
    out
}

#[test]
fn batch_replay_equals_online_processing() {
    let spec = default_spec();
    // More rows than one `process_batch` chunk (4096), so chunk boundaries are crossed, and a
    // few retries (the same transaction again right after it), which must be duplicates.
    let mut txs = history(11, 10_000);
    for k in (300..txs.len())
        .step_by(997)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let retry = txs[k].clone();
        txs.insert(k + 1, retry);
    }
    let mut batch = Vec::new();
    let batch_stats = replay(&spec, &txs, |i, row| {
        assert_eq!(i, batch.len());
        batch.push(row.to_vec());
    });
    assert_eq!(batch.len(), txs.len());

    // The same merge, written out independently: before each transaction, deliver every pending
    // label whose known_at is at or before its timestamp, in (known_at, row) order.
    let latency = spec.label_latency_ms();
    let mut engine = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0; spec.n_features()];
    let mut pending: Vec<(i64, usize)> = Vec::new();
    for (i, t) in txs.iter().enumerate() {
        pending.sort_unstable();
        let due = pending
            .iter()
            .take_while(|(k, _)| *k <= t.timestamp_ms)
            .count();
        for (_, j) in pending.drain(..due) {
            engine.observe_label(&txs[j].label_event(latency).unwrap());
        }
        engine.process(t, &mut row);
        for (c, name) in spec.feature_names().iter().enumerate() {
            assert_eq!(
                row[c].to_bits(),
                batch[i][c].to_bits(),
                "row {i} {name}: online {} vs batch {}",
                row[c],
                batch[i][c]
            );
        }
        let known = t.label_time_ms.unwrap_or(t.timestamp_ms + latency);
        pending.push((known, i));
    }
    pending.sort_unstable();
    for (_, j) in pending {
        engine.observe_label(&txs[j].label_event(latency).unwrap());
    }
    assert_eq!(engine.stats(), batch_stats);
    // The history was meant to exercise labels and lateness; make sure it did.
    assert!(batch_stats.labels_applied > 1000, "{batch_stats:?}");
    assert!(batch_stats.events_late > 0 && batch_stats.events_too_late > 0);
    assert!(batch_stats.events_duplicate >= 9, "{batch_stats:?}");
    // Risk features are not all zero.
    let risk = spec
        .feature_names()
        .iter()
        .position(|n| n == "merchant_risk_7d_delay_7d")
        .unwrap();
    assert!(batch.iter().any(|r| r[risk] > 0.0));
}

const WINDOW_SPEC: &str = r#"
allowed_lateness = "30m"
[[window]]
entity = "card"
lengths = ["1h"]
aggregates = ["count", "sum", "max"]
[[window]]
entity = "card"
lengths = ["1h"]
aggregates = ["count", "sum"]
include_current = true
[[previous]]
entity = "card"
outputs = ["secs_since"]
"#;

#[test]
fn windows_are_exact_look_backs_with_ties() {
    let spec = spec(WINDOW_SPEC);
    let mut e = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0; spec.n_features()];
    let c = |row: &[f32], n: &str| col(&spec, row, n);

    e.process(
        &tx("a").at(T0).card("c").merchant("m").amount(10.0).build(),
        &mut row,
    );
    assert_eq!(c(&row, "card_count_1h"), 0.0);
    assert_eq!(c(&row, "card_count_1h_incl"), 1.0);
    assert_eq!(c(&row, "card_sum_1h_incl"), 10.0);
    // No previous event: the retention (1h + 30m) in seconds.
    assert_eq!(c(&row, "card_secs_since_prev"), 5400.0);

    // Same timestamp, processed later: sees the first.
    e.process(
        &tx("b").at(T0).card("c").merchant("m").amount(20.0).build(),
        &mut row,
    );
    assert_eq!(c(&row, "card_count_1h"), 1.0);
    assert_eq!(c(&row, "card_sum_1h"), 10.0);
    assert_eq!(c(&row, "card_secs_since_prev"), 0.0);

    // Exactly one hour later: the window (t - 1h, t] excludes both.
    e.process(
        &tx("c")
            .at(T0 + HOUR)
            .card("c")
            .merchant("m")
            .amount(5.0)
            .build(),
        &mut row,
    );
    assert_eq!(c(&row, "card_count_1h"), 0.0);
    assert_eq!(c(&row, "card_max_1h"), 0.0);
    assert_eq!(c(&row, "card_secs_since_prev"), 3600.0);

    // One millisecond less than an hour after them would have seen both.
    let mut peeked = vec![0.0; spec.n_features()];
    e.peek(
        &tx("d")
            .at(T0 + HOUR - 1)
            .card("c")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut peeked,
    );
    assert_eq!(c(&peeked, "card_count_1h"), 2.0);
    assert_eq!(c(&peeked, "card_max_1h"), 20.0);
    assert_eq!(c(&peeked, "card_sum_1h_incl"), 31.0);
}

#[test]
fn late_events_land_in_place_and_too_late_ones_are_counted() {
    let spec = spec(WINDOW_SPEC);
    let mut e = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0; spec.n_features()];
    let c = |row: &[f32], n: &str| col(&spec, row, n);

    assert_eq!(
        e.process(
            &tx("a").at(T0).card("c").merchant("m").amount(1.0).build(),
            &mut row
        ),
        EventOutcome::InOrder
    );
    e.process(
        &tx("b")
            .at(T0 + 30 * MIN)
            .card("c")
            .merchant("m")
            .amount(2.0)
            .build(),
        &mut row,
    );
    // 20 minutes behind the watermark: late, sees only what precedes it in event time.
    assert_eq!(
        e.process(
            &tx("late")
                .at(T0 + 10 * MIN)
                .card("c")
                .merchant("m")
                .amount(4.0)
                .build(),
            &mut row
        ),
        EventOutcome::Late
    );
    assert_eq!(c(&row, "card_count_1h"), 1.0);
    assert_eq!(c(&row, "card_sum_1h"), 1.0);
    // Later events see it.
    e.process(
        &tx("d")
            .at(T0 + 40 * MIN)
            .card("c")
            .merchant("m")
            .amount(8.0)
            .build(),
        &mut row,
    );
    assert_eq!(c(&row, "card_count_1h"), 3.0);
    assert_eq!(c(&row, "card_sum_1h"), 7.0);
    assert_eq!(c(&row, "card_secs_since_prev"), 600.0);
    // 35 minutes behind: too late; scored, not added.
    assert_eq!(
        e.process(
            &tx("tl")
                .at(T0 + 5 * MIN)
                .card("c")
                .merchant("m")
                .amount(100.0)
                .build(),
            &mut row
        ),
        EventOutcome::TooLate
    );
    assert_eq!(c(&row, "card_count_1h"), 1.0);
    e.process(
        &tx("f")
            .at(T0 + 41 * MIN)
            .card("c")
            .merchant("m")
            .amount(0.0)
            .build(),
        &mut row,
    );
    assert_eq!(c(&row, "card_count_1h"), 4.0);
    assert_eq!(c(&row, "card_sum_1h"), 15.0);
    let s = e.stats();
    assert_eq!(
        (s.events_in_order, s.events_late, s.events_too_late),
        (4, 1, 1)
    );
    assert_eq!(s.events_held, 5);
}

#[test]
fn clamp_policy_adds_too_late_events_at_the_lateness_boundary() {
    let spec = spec(&WINDOW_SPEC.replace(
        "allowed_lateness = \"30m\"",
        "allowed_lateness = \"30m\"\ntoo_late = \"clamp\"",
    ));
    let mut e = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0; spec.n_features()];
    e.process(
        &tx("a")
            .at(T0 + 2 * HOUR)
            .card("c")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut row,
    );
    assert_eq!(
        e.process(
            &tx("old").at(T0).card("c").merchant("m").amount(4.0).build(),
            &mut row
        ),
        EventOutcome::TooLate
    );
    // Treated as at T0 + 1h30: the event at T0 + 2h is not before it.
    assert_eq!(col(&spec, &row, "card_count_1h"), 0.0);
    e.process(
        &tx("b")
            .at(T0 + 2 * HOUR + 10 * MIN)
            .card("c")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut row,
    );
    assert_eq!(col(&spec, &row, "card_sum_1h"), 5.0);
}

const RISK_SPEC: &str = r#"
label_latency = "7d"
[[risk]]
entity = "merchant"
lengths = ["7d"]
delays = ["7d"]
"#;

#[test]
fn risk_counts_only_labels_known_by_the_event_time() {
    let spec = spec(RISK_SPEC);
    let mut e = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0; spec.n_features()];
    let rate = "merchant_risk_7d_delay_7d";
    let count = "merchant_risk_count_7d_delay_7d";
    e.process(
        &tx("fraud")
            .at(T0)
            .card("c1")
            .merchant("m")
            .amount(50.0)
            .build(),
        &mut row,
    );
    e.process(
        &tx("ok")
            .at(T0 + HOUR)
            .card("c2")
            .merchant("m")
            .amount(50.0)
            .build(),
        &mut row,
    );
    // The label is delivered early but only known from day 8.
    let label = LabelEvent {
        transaction_id: "fraud".into(),
        fraud: true,
        known_at_ms: T0 + 8 * DAY,
    };
    assert_eq!(e.observe_label(&label), LabelOutcome::Applied);
    // Day 7.5: both in the delayed window (-6.5d, 0.5d], label not known yet.
    e.process(
        &tx("q1")
            .at(T0 + 7 * DAY + 12 * HOUR)
            .card("c3")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut row,
    );
    assert_eq!(col(&spec, &row, count), 2.0);
    assert_eq!(col(&spec, &row, rate), 0.0);
    // Day 9: known.
    e.process(
        &tx("q2")
            .at(T0 + 9 * DAY)
            .card("c3")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut row,
    );
    assert_eq!(col(&spec, &row, count), 2.0);
    assert_eq!(col(&spec, &row, rate), 0.5);
    // A later label replaces the earlier one.
    let unlabel = LabelEvent {
        fraud: false,
        ..label
    };
    e.observe_label(&unlabel);
    e.process(
        &tx("q3")
            .at(T0 + 9 * DAY + 1)
            .card("c3")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut row,
    );
    assert_eq!(col(&spec, &row, rate), 0.0);
    // Unknown ids are counted and ignored.
    let ghost = LabelEvent {
        transaction_id: "ghost".into(),
        fraud: true,
        known_at_ms: T0,
    };
    assert_eq!(e.observe_label(&ghost), LabelOutcome::UnknownTransaction);
    let s = e.stats();
    assert_eq!((s.labels_applied, s.labels_ignored), (2, 1));

    // Without risk features labels are not used at all.
    let mut plain = FeatureEngine::new(spec_plain());
    assert_eq!(plain.observe_label(&ghost), LabelOutcome::NotUsed);
    assert_eq!(plain.stats().labels_unused, 1);
}

fn spec_plain() -> Arc<FeatureSpec> {
    spec("transaction = [\"amount\"]")
}

#[test]
fn idle_entities_are_evicted_and_removed() {
    let spec = spec(WINDOW_SPEC);
    let mut e = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0; spec.n_features()];
    for i in 0..100 {
        e.process(
            &tx(format!("t{i}"))
                .at(T0 + i * 10_000)
                .card(format!("c{i}"))
                .merchant("m")
                .amount(1.0)
                .build(),
            &mut row,
        );
    }
    assert_eq!(e.stats().entities, 100);
    // Retention is 1h30; a day later every one of those cards is gone.
    e.process(
        &tx("late-day")
            .at(T0 + DAY)
            .card("new")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut row,
    );
    let s = e.stats();
    assert_eq!((s.entities, s.events_held), (1, 1), "{s:?}");
    // A returning card starts from scratch.
    e.process(
        &tx("back")
            .at(T0 + DAY + 1)
            .card("c5")
            .merchant("m")
            .amount(1.0)
            .build(),
        &mut row,
    );
    assert_eq!(col(&spec, &row, "card_count_1h"), 0.0);
}

#[test]
fn features_stay_finite_on_extreme_inputs() {
    let spec = default_spec();
    let mut e = FeatureEngine::new(Arc::clone(&spec));
    let mut row = vec![0.0; spec.n_features()];
    for (i, amount) in [0.0, 1e300, f64::MAX, 0.0, 1e-300].into_iter().enumerate() {
        let mut t = tx(format!("x{i}"))
            .at(T0 + i as i64)
            .card("c")
            .merchant("m")
            .amount(amount)
            .build();
        t.lat = Some(if i % 2 == 0 { 89.9 } else { -89.9 });
        t.lon = Some(179.9);
        e.process(&t, &mut row);
        for (name, v) in spec.feature_names().iter().zip(&row) {
            assert!(v.is_finite(), "{name} = {v} for amount {amount}");
        }
    }
}

#[test]
fn spec_file_loads_and_errors_name_the_key() {
    let spec = default_spec();
    assert!((30..=45).contains(&spec.n_features()));
    assert_eq!(spec.fingerprint(), default_spec().fingerprint());
    let err = FeatureSpec::load(&repo().join("training/no-such-spec.toml")).unwrap_err();
    assert!(err.to_string().contains("no-such-spec.toml"), "{err}");
    let err =
        FeatureSpec::from_toml_str("[[previous]]\nentity = \"card\"\noutput = [\"secs_since\"]\n")
            .unwrap_err();
    assert!(
        matches!(&err, SpecError::UnknownKey { path } if path == "previous[0].output"),
        "{err}"
    );
    let err = FeatureSpec::from_toml_str("transaction = []").unwrap_err();
    assert!(err.to_string().contains("`transaction`"), "{err}");
    assert!(matches!(
        FeatureSpec::from_toml_str("label_latency = \"7d\"").unwrap_err(),
        SpecError::NoFeatures
    ));
}

/// A retried transaction id (gRPC retry, or the same transaction later on Kafka) is scored from
/// the current state but never counted twice in the windows; the same id at another event time
/// is another transaction.
#[test]
fn duplicate_transaction_ids_are_scored_but_not_counted_twice() {
    let spec = spec(
        "[[window]]\nentity = \"card\"\nlengths = [\"1h\"]\naggregates = [\"count\", \"sum\"]\n",
    );
    let mut engine = FeatureEngine::new(spec);
    let mut row = [0.0f32; 2];
    let t0 = T0;
    let a = tx("a")
        .at(t0)
        .card("c1")
        .merchant("m1")
        .amount(10.0)
        .build();
    assert_eq!(engine.process(&a, &mut row), EventOutcome::InOrder);
    let b = tx("b")
        .at(t0 + 1000)
        .card("c1")
        .merchant("m1")
        .amount(5.0)
        .build();
    assert_eq!(engine.process(&b, &mut row), EventOutcome::InOrder);
    assert_eq!(row, [1.0, 10.0]);
    // `a` again (a late retry): scored from the state, which holds a and b at or before its
    // time... only a is at or before t0, and it is not counted twice.
    assert_eq!(engine.process(&a, &mut row), EventOutcome::Duplicate);
    assert_eq!(row, [0.0, 0.0]);
    // `b` again, in order.
    assert_eq!(engine.process(&b, &mut row), EventOutcome::Duplicate);
    assert_eq!(row, [1.0, 10.0]);
    let c = tx("c")
        .at(t0 + 3000)
        .card("c1")
        .merchant("m1")
        .amount(1.0)
        .build();
    engine.process(&c, &mut row);
    assert_eq!(row, [2.0, 15.0]);
    // The same id at another time is a new transaction.
    let mut a_later = a.clone();
    a_later.timestamp_ms = t0 + 4000;
    assert_eq!(engine.process(&a_later, &mut row), EventOutcome::InOrder);
    assert_eq!(row, [3.0, 16.0]);
    let stats = engine.stats();
    assert_eq!(stats.events_duplicate, 2);
    assert_eq!(stats.events_in_order, 4);
}
