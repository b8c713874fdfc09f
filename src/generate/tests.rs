//! Unit tests of the simulation internals; whole-file properties are in `tests/engine/generate_history.rs`.

use super::*;

#[test]
fn poisson_has_the_requested_mean() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for lambda in [0.3, 1.0, 6.0] {
        let n = 100_000;
        let sum: u64 = (0..n).map(|_| u64::from(poisson(&mut rng, lambda))).sum();
        let mean = sum as f64 / n as f64;
        assert!(
            (mean - lambda).abs() < 0.03 * lambda.max(1.0),
            "{lambda}: {mean}"
        );
    }
}

#[test]
fn local_hours_map_to_utc_seconds() {
    assert_eq!(utc_secs(10.0, 1), 9 * 3600);
    assert_eq!(utc_secs(2.0, 10), 16 * 3600);
    assert_eq!(utc_secs(20.0, -8), 4 * 3600);
    assert_eq!(utc_secs(23.99, -8), 28_764);
}

#[test]
fn pattern_names_round_trip() {
    for p in FraudPattern::ALL {
        assert_eq!(FraudPattern::parse(p.as_str()), Some(p));
    }
    let shares: f64 = FraudPattern::ALL.iter().map(|p| p.share()).sum();
    assert!((shares - 1.0).abs() < 1e-12);
}

#[test]
fn defaults_scale_with_rows() {
    let small = GeneratorConfig {
        rows: 1_000,
        ..GeneratorConfig::default()
    };
    assert_eq!(small.card_count(), 100);
    assert_eq!(small.merchant_count(), 300);
    let big = GeneratorConfig {
        rows: 10_000_000,
        ..GeneratorConfig::default()
    };
    assert_eq!(big.card_count(), 41_666);
    assert_eq!(big.merchant_count(), 10_416);
}

/// Cards that get `compromised_merchant` fraud are exactly (a subset of) the cards seen card
/// present at the merchant during its compromise window, and the fraud comes after it.
#[test]
fn compromised_merchant_fraud_hits_exposed_cards_only() {
    let cfg = GeneratorConfig {
        rows: 0,
        fraud_rate: 0.05,
        ..GeneratorConfig::default()
    };
    let mut wrng = ChaCha8Rng::seed_from_u64(3);
    let world = World::build(
        WorldSize {
            cards: 400,
            merchants: 300,
            mean_rate: 0.6,
        },
        &mut wrng,
    );
    let mut sim = Sim {
        world,
        rng: ChaCha8Rng::seed_from_u64(4),
        odds: cfg.fraud_rate / (1.0 - cfg.fraud_rate),
        start_ms: cfg.start_ms,
        day: 0,
        day_start: cfg.start_ms,
        today: Vec::new(),
        pending: BTreeMap::new(),
        credit: [0.0; 6],
        compromises: Vec::new(),
    };
    // Card-present visits per (merchant, card): day list.
    let mut visits: std::collections::HashMap<(u32, u32), Vec<u32>> = Default::default();
    let mut windows: Vec<(u32, u32, u32)> = Vec::new(); // merchant, first day, until
    let mut frauds: Vec<(u32, u32)> = Vec::new(); // card, day
    for _ in 0..120 {
        let before: Vec<u32> = sim.compromises.iter().map(|c| c.merchant).collect();
        sim.simulate_day();
        for c in &sim.compromises {
            if !before.contains(&c.merchant) {
                windows.push((c.merchant, sim.day, c.until_day));
            }
        }
        for e in &sim.today {
            if e.pattern.is_none() && matches!(e.channel, Channel::Pos | Channel::Atm) {
                visits
                    .entry((e.merchant, e.card))
                    .or_default()
                    .push(sim.day);
            }
            if e.pattern == Some(FraudPattern::CompromisedMerchant) {
                frauds.push((e.card, sim.day));
            }
        }
        sim.advance();
    }
    assert!(frauds.len() > 10, "{}", frauds.len());
    for (card, day) in frauds {
        let exposed = windows.iter().any(|&(m, from, until)| {
            until < day
                && visits
                    .get(&(m, card))
                    .is_some_and(|d| d.iter().any(|&v| v >= from && v <= until))
        });
        assert!(
            exposed,
            "card {card} defrauded on day {day} was never exposed"
        );
    }
}
