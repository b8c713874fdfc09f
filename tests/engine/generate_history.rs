//! End-to-end checks of `vigil::generate`: the file is a valid, time-ordered, exactly sized,
//! deterministic history, and the planted fraud has the shape the features are meant to find.

use std::collections::HashMap;
use std::path::Path;

use vigil::generate::{generate, FraudPattern, GenerateError, GenerateSummary, GeneratorConfig};
use vigil::record::{read_history_from, Channel, ReadOptions, Transaction};

fn run(cfg: &GeneratorConfig) -> (Vec<u8>, GenerateSummary) {
    let mut out = Vec::new();
    let summary = generate(cfg, &mut out, &mut |_| {}).expect("generate");
    (out, summary)
}

fn cfg(rows: u64, seed: u64) -> GeneratorConfig {
    GeneratorConfig {
        rows,
        seed,
        ..GeneratorConfig::default()
    }
}

/// Parses the file with the production reader, plus the `fraud_pattern` column it ignores.
fn parse(bytes: &[u8]) -> (Vec<Transaction>, Vec<Option<FraudPattern>>) {
    let h = read_history_from(
        Path::new("gen.csv"),
        bytes,
        ReadOptions::default(),
        &mut |_| {},
    )
    .expect("every generated row is valid");
    let text = std::str::from_utf8(bytes).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().ends_with(",fraud_pattern"));
    let patterns: Vec<Option<FraudPattern>> = lines
        .map(|l| {
            let p = l.rsplit(',').next().unwrap();
            if p.is_empty() {
                None
            } else {
                Some(FraudPattern::parse(p).unwrap_or_else(|| panic!("unknown pattern {p}")))
            }
        })
        .collect();
    assert_eq!(patterns.len(), h.transactions.len());
    (h.transactions, patterns)
}

fn km(a: &Transaction, b: &Transaction) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.lat.unwrap().to_radians(),
        a.lon.unwrap().to_radians(),
        b.lat.unwrap().to_radians(),
        b.lon.unwrap().to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

#[test]
fn same_config_same_bytes_other_seed_other_bytes() {
    let (a, sa) = run(&cfg(20_000, 11));
    let (b, sb) = run(&cfg(20_000, 11));
    assert!(a == b, "two runs with the same seed differ");
    assert_eq!(sa, sb);
    let (c, _) = run(&cfg(20_000, 12));
    assert!(a != c);
}

#[test]
fn exact_row_counts() {
    for rows in [0u64, 1, 2, 999, 4_321] {
        let (bytes, s) = run(&cfg(rows, 5));
        let (txs, _) = parse(&bytes);
        assert_eq!(txs.len() as u64, rows);
        assert_eq!(s.rows, rows);
    }
}

#[test]
fn valid_time_ordered_labelled_rows_and_truthful_summary() {
    let rows = 60_000;
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let s = generate(&cfg(rows, 21), &mut out, &mut |n| seen.push(n)).unwrap();
    let (txs, patterns) = parse(&out);
    assert_eq!(txs.len() as u64, rows);
    assert!(txs
        .windows(2)
        .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
    assert_eq!(txs[0].timestamp_ms, s.first_ms);
    assert_eq!(txs[txs.len() - 1].timestamp_ms, s.last_ms);
    assert!(s.first_ms >= GeneratorConfig::default().start_ms);

    // Progress: non-decreasing, ends at the row count.
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(seen.last(), Some(&rows));

    let mut ids = std::collections::HashSet::new();
    let mut by_pattern: HashMap<&str, u64> = HashMap::new();
    for (t, p) in txs.iter().zip(&patterns) {
        assert!(ids.insert(t.transaction_id.clone()), "duplicate id");
        assert_eq!(
            t.label,
            Some(p.is_some()),
            "label agrees with the pattern column"
        );
        assert!(t.currency.is_some() && t.mcc.is_some() && t.country.is_some());
        let card_present = matches!(t.channel, Some(Channel::Pos | Channel::Atm));
        assert_eq!(
            t.lat.is_some(),
            card_present,
            "location only when card present"
        );
        match p {
            Some(p) => {
                *by_pattern.entry(p.as_str()).or_default() += 1;
                let delay = t.label_time_ms.unwrap() - t.timestamp_ms;
                assert!(
                    (86_400_000..=60 * 86_400_000).contains(&delay),
                    "chargeback delay {delay} ms"
                );
            }
            None => assert_eq!(t.label_time_ms, None),
        }
    }
    let frauds: u64 = by_pattern.values().sum();
    assert_eq!(frauds, s.frauds);
    for p in FraudPattern::ALL {
        let n = by_pattern.get(p.as_str()).copied().unwrap_or(0);
        assert!(n > 0, "pattern {} never appears", p.as_str());
        assert_eq!(s.by_pattern[p.as_str()], n);
    }
}

#[test]
fn fraud_rate_follows_the_configuration() {
    for (rate, seed, rows) in [(0.015, 1, 100_000), (0.05, 2, 40_000)] {
        let c = GeneratorConfig {
            fraud_rate: rate,
            ..cfg(rows, seed)
        };
        let (_, s) = run(&c);
        let got = s.frauds as f64 / s.rows as f64;
        assert!(
            (got - rate).abs() < 0.15 * rate,
            "asked {rate}, got {got} ({s:?})"
        );
    }
    let (_, s) = run(&GeneratorConfig {
        fraud_rate: 0.0,
        ..cfg(20_000, 3)
    });
    assert_eq!(s.frauds, 0);
}

#[test]
fn patterns_have_their_signature() {
    let (bytes, _) = run(&cfg(100_000, 8));
    let (txs, patterns) = parse(&bytes);
    let fraud_mean = |want: FraudPattern| {
        let v: Vec<f64> = txs
            .iter()
            .zip(&patterns)
            .filter(|(_, p)| **p == Some(want))
            .map(|(t, _)| t.amount)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let legit: Vec<&Transaction> = txs
        .iter()
        .zip(&patterns)
        .filter(|(_, p)| p.is_none())
        .map(|(t, _)| t)
        .collect();
    let legit_mean = legit.iter().map(|t| t.amount).sum::<f64>() / legit.len() as f64;
    for p in [
        FraudPattern::CompromisedMerchant,
        FraudPattern::StolenCard,
        FraudPattern::AccountTakeover,
    ] {
        assert!(fraud_mean(p) > 2.5 * legit_mean, "{p:?} amounts not raised");
    }

    // Card testing: small online amounts, apart from the occasional cash-out at the end.
    let testing: Vec<&Transaction> = txs
        .iter()
        .zip(&patterns)
        .filter(|(_, p)| **p == Some(FraudPattern::CardTesting))
        .map(|(t, _)| t)
        .collect();
    let small = testing.iter().filter(|t| t.amount < 2.0).count();
    assert!(small as f64 > 0.85 * testing.len() as f64);
    assert!(testing.iter().all(|t| t.channel == Some(Channel::Online)));

    // Per card, in time order: the previous card-present row, to check travel speeds.
    let mut last_located: HashMap<&str, &Transaction> = HashMap::new();
    let (mut travel_hits, mut travel_rows, mut fast_legit) = (0, 0, 0);
    for (t, p) in txs.iter().zip(&patterns) {
        if t.lat.is_none() {
            continue;
        }
        if let Some(prev) = last_located.get(t.card_id.as_str()) {
            let d = km(prev, t);
            let hours = (t.timestamp_ms - prev.timestamp_ms) as f64 / 3.6e6;
            if *p == Some(FraudPattern::ImpossibleTravel) && prev.label == Some(false) {
                travel_rows += 1;
                if d > 2000.0 && hours <= 1.0 {
                    travel_hits += 1;
                }
            }
            if p.is_none() && prev.label == Some(false) && d > 1000.0 {
                fast_legit += 1;
            }
        }
        last_located.insert(&t.card_id, t);
    }
    assert!(travel_rows > 20);
    assert!(
        travel_hits as f64 >= 0.9 * travel_rows as f64,
        "{travel_hits}/{travel_rows} impossible-travel rows follow a far, recent row"
    );
    assert!(fast_legit > 20, "legitimate travel exists as noise");

    // Stolen cards come in bursts: another row of the same episode within 6 hours.
    let stolen: Vec<&Transaction> = txs
        .iter()
        .zip(&patterns)
        .filter(|(_, p)| **p == Some(FraudPattern::StolenCard))
        .map(|(t, _)| t)
        .collect();
    assert!(stolen
        .iter()
        .all(|t| stolen.iter().any(|o| o.card_id == t.card_id
            && o.transaction_id != t.transaction_id
            && (o.timestamp_ms - t.timestamp_ms).abs() <= 6 * 3_600_000)));

    // Terminal risk: while a merchant shows terminal fraud (between its first and last such
    // row), its fraud rate is far above the overall rate.
    let mut window: HashMap<&str, (i64, i64)> = HashMap::new();
    for (t, p) in txs.iter().zip(&patterns) {
        if *p == Some(FraudPattern::TerminalFraud) {
            let w = window
                .entry(&t.merchant_id)
                .or_insert((t.timestamp_ms, t.timestamp_ms));
            w.1 = t.timestamp_ms;
        }
    }
    let (mut n, mut f) = (0u64, 0u64);
    for (t, p) in txs.iter().zip(&patterns) {
        if let Some((from, to)) = window.get(t.merchant_id.as_str()) {
            if (*from..=*to).contains(&t.timestamp_ms) {
                n += 1;
                f += u64::from(p.is_some());
            }
        }
    }
    let overall = patterns.iter().filter(|p| p.is_some()).count() as f64 / txs.len() as f64;
    let at_terminal = f as f64 / n as f64;
    assert!(
        at_terminal > 5.0 * overall,
        "fraud rate at compromised terminals {at_terminal}, overall {overall}"
    );
}

#[test]
fn pattern_column_can_be_left_out() {
    let c = GeneratorConfig {
        pattern_column: false,
        ..cfg(2_000, 4)
    };
    let (bytes, _) = run(&c);
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        vigil::record::CSV_COLUMNS.join(",")
    );
    assert!(!text.contains("card_testing"));
}

#[test]
fn bad_settings_are_refused_with_the_value() {
    let cases = [
        (
            GeneratorConfig {
                fraud_rate: 0.7,
                ..cfg(10, 1)
            },
            "fraud_rate",
            "0.7",
        ),
        (
            GeneratorConfig {
                start_ms: 1_522_540_800_001,
                ..cfg(10, 1)
            },
            "start_ms",
            "1522540800001",
        ),
        (
            GeneratorConfig {
                merchants: Some(3),
                ..cfg(10, 1)
            },
            "merchants",
            "3",
        ),
        (
            GeneratorConfig {
                cards: Some(1),
                ..cfg(100_000_000, 1)
            },
            "cards",
            "1",
        ),
    ];
    for (c, field, value) in cases {
        match generate(&c, Vec::new(), &mut |_| {}) {
            Err(e @ GenerateError::Config { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(field) && msg.contains(value), "{msg}");
            }
            other => panic!("expected a config error for {field}, got {other:?}"),
        }
    }
}

#[test]
fn write_errors_are_reported() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = generate(&cfg(100, 1), Broken, &mut |_| {}).unwrap_err();
    assert!(matches!(err, GenerateError::Io(_)));
    assert!(err.to_string().contains("disk full"));
}
