//! The feature engine against an independent brute-force model of the documented semantics.
//!
//! The model keeps a plain `Vec` of every stored event (with its entity ids as strings) and
//! recomputes each feature by scanning it; it shares no code with the engine beyond the spec
//! parser. Random streams (seeded) mix in-order events, same-timestamp ties, late events within
//! the allowed lateness, too-late events, labels (including labels known after the current event
//! time and labels for unknown transactions), one-shot cards and multi-day gaps that make the
//! engine evict and sweep whole entities.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil::features::{
    Agg, Attr, DistinctOut, Entity, EventOutcome, FeatureEngine, FeatureKind, FeatureSpec,
    LabelOutcome, PrevOut, TooLatePolicy, TxFeature,
};
use vigil::record::{Channel, LabelEvent, Transaction};

use crate::support::{default_spec, tx};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const T0: i64 = 1_700_000_000_000;

fn test_spec(policy: &str) -> Arc<FeatureSpec> {
    let toml = format!(
        r#"
label_latency = "2h"
allowed_lateness = "30m"
too_late = "{policy}"
transaction = ["amount", "log_amount", "hour_of_day", "is_weekend", "is_night", "channel_pos",
               "channel_online", "channel_atm", "channel_moto", "has_location"]

[[window]]
entity = "card"
lengths = ["10m", "1h", "1d"]
aggregates = ["count", "sum", "mean", "max", "std", "amount_to_mean"]

[[window]]
entity = "card"
lengths = ["1h"]
aggregates = ["count", "sum", "max", "std"]
include_current = true

[[window]]
entity = "merchant"
lengths = ["1h", "6h"]
aggregates = ["count", "sum", "mean", "max", "std"]

[[distinct]]
entity = "card"
of = "merchant"
lengths = ["1h", "1d"]
outputs = ["count", "is_new"]

[[distinct]]
entity = "card"
of = "country"
lengths = ["1d"]
include_current = true

[[distinct]]
entity = "merchant"
of = "card"
lengths = ["6h"]
outputs = ["count", "is_new"]

[[distinct]]
entity = "card"
of = "mcc"
lengths = ["1d"]

[[previous]]
entity = "card"
outputs = ["secs_since", "kmh_since", "country_changed", "merchant_changed"]

[[previous]]
entity = "merchant"
outputs = ["secs_since"]

[[risk]]
entity = "merchant"
lengths = ["2h", "6h"]
delays = ["0s", "1h"]

[[risk]]
entity = "card"
lengths = ["1d"]
delays = ["2h"]
"#
    );
    Arc::new(FeatureSpec::from_toml_str(&toml).expect("test spec"))
}

#[derive(Debug, Clone)]
enum Item {
    Tx(Transaction),
    Label(LabelEvent),
}

/// A random stream. `now` only moves forward; each transaction is stamped `now` (or a tie with
/// the previous one), a bit behind it (late), or far behind it (too late).
fn stream(seed: u64, n: usize) -> Vec<Item> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut now = T0;
    let mut items = Vec::new();
    let mut txs: Vec<(String, i64)> = Vec::new();
    let countries = ["FR", "DE", "US"];
    for i in 0..n {
        let r: f64 = rng.gen();
        if r < 0.15 {
            // Tie with the previous stamp.
        } else if r < 0.17 {
            now += rng.gen_range(24..72) * HOUR;
        } else {
            // Whole 5-minute steps, so window edges are hit exactly.
            now += rng.gen_range(0..=18) * 5 * MIN;
        }
        let r: f64 = rng.gen();
        let ts = if r < 0.10 {
            now - rng.gen_range(0..=30) * MIN
        } else if r < 0.14 {
            now - 30 * MIN - rng.gen_range(1..2880) * MIN
        } else {
            now
        };
        let card_id = if rng.gen_bool(0.05) {
            format!("once-{i}")
        } else {
            format!("card-{}", rng.gen_range(0..6))
        };
        let located = rng.gen_bool(0.7);
        let (lat, lon) = if rng.gen_bool(0.5) {
            (48.85, 2.35)
        } else {
            (40.71, -74.0)
        };
        // The setters are called in the order the random draws were made in (it fixes the
        // streams for the seeds below).
        let tx = tx(format!("tx-{i}"))
            .at(ts)
            .card(card_id)
            .merchant(format!("m-{}", rng.gen_range(0..4)))
            .amount((rng.gen_range(0.0..500.0f64) * 100.0).round() / 100.0)
            .mcc([None, Some(5411), Some(5999), Some(6011)][rng.gen_range(0..4)])
            .country(
                [None, Some(0), Some(1), Some(2)][rng.gen_range(0..4)].map(|c: usize| countries[c]),
            )
            .channel(
                [
                    None,
                    Some(Channel::Pos),
                    Some(Channel::Online),
                    Some(Channel::Atm),
                    Some(Channel::Moto),
                ][rng.gen_range(0..5)],
            )
            .lat(located.then(|| lat + rng.gen_range(-0.5..0.5)))
            .lon(located.then(|| lon + rng.gen_range(-0.5..0.5)))
            .build();
        txs.push((tx.transaction_id.clone(), ts));
        items.push(Item::Tx(tx));
        if rng.gen_bool(0.3) {
            let k = txs.len() - 1 - rng.gen_range(0..txs.len().min(200));
            let (id, t) = txs[k].clone();
            items.push(Item::Label(LabelEvent {
                transaction_id: id,
                fraud: rng.gen_bool(0.35),
                known_at_ms: t.max(now - 3 * HOUR) + rng.gen_range(0..180) * MIN,
            }));
        }
        if rng.gen_bool(0.02) {
            items.push(Item::Label(LabelEvent {
                transaction_id: format!("nope-{i}"),
                fraud: true,
                known_at_ms: now,
            }));
        }
    }
    items
}

/// One stored event of the brute-force model.
struct NaiveEv {
    seq: usize,
    ts: i64,
    tx: Transaction,
    label: Option<(bool, i64)>,
}

/// The brute-force model: every stored event in a Vec, every feature recomputed by scanning.
struct Naive {
    spec: Arc<FeatureSpec>,
    evs: Vec<NaiveEv>,
    watermark: Option<i64>,
}

fn key(e: Entity, tx: &Transaction) -> &str {
    match e {
        Entity::Card => &tx.card_id,
        Entity::Merchant => &tx.merchant_id,
    }
}

fn attr(a: Attr, tx: &Transaction) -> Option<String> {
    match a {
        Attr::Card => Some(tx.card_id.clone()),
        Attr::Merchant => Some(tx.merchant_id.clone()),
        Attr::Country => tx.country.clone(),
        Attr::Mcc => tx.mcc.map(|m| m.to_string()),
    }
}

fn km(a: &Transaction, b: &Transaction) -> f64 {
    let r = |x: Option<f64>| f64::from(x.unwrap() as f32).to_radians();
    let (la1, lo1, la2, lo2) = (r(a.lat), r(a.lon), r(b.lat), r(b.lon));
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0088 * h.sqrt().asin()
}

impl Naive {
    fn new(spec: Arc<FeatureSpec>) -> Self {
        Naive {
            spec,
            evs: Vec::new(),
            watermark: None,
        }
    }

    fn horizon(&self) -> i64 {
        self.watermark
            .map_or(i64::MIN, |w| w - self.spec.retention_ms())
    }

    fn process(&mut self, tx: &Transaction) -> (EventOutcome, Vec<f32>) {
        let lateness = self.spec.allowed_lateness_ms();
        let ts = tx.timestamp_ms;
        let (outcome, t, store) = match self.watermark {
            Some(w) if ts < w - lateness => match self.spec.too_late_policy() {
                TooLatePolicy::ScoreOnly => (EventOutcome::TooLate, ts, false),
                TooLatePolicy::Clamp => (EventOutcome::TooLate, w - lateness, true),
            },
            Some(w) if ts < w => (EventOutcome::Late, ts, true),
            _ => {
                self.watermark = Some(ts);
                (EventOutcome::InOrder, ts, true)
            }
        };
        let row = self.features(tx, t);
        if store {
            self.evs.push(NaiveEv {
                seq: self.evs.len(),
                ts: t,
                tx: tx.clone(),
                label: None,
            });
        }
        (outcome, row)
    }

    fn label(&mut self, l: &LabelEvent) -> LabelOutcome {
        if !self
            .spec
            .features()
            .iter()
            .any(|f| matches!(f, FeatureKind::Risk { .. }))
        {
            return LabelOutcome::NotUsed;
        }
        let horizon = self.horizon();
        match self
            .evs
            .iter_mut()
            .rev()
            .find(|e| e.tx.transaction_id == l.transaction_id && e.ts > horizon)
        {
            Some(e) => {
                e.label = Some((l.fraud, l.known_at_ms));
                LabelOutcome::Applied
            }
            None => LabelOutcome::UnknownTransaction,
        }
    }

    fn features(&self, tx: &Transaction, t: i64) -> Vec<f32> {
        let horizon = self.horizon();
        let live: Vec<&NaiveEv> = self
            .evs
            .iter()
            .filter(|e| e.ts > horizon && e.ts <= t)
            .collect();
        let of = |e: Entity| -> Vec<&NaiveEv> {
            live.iter()
                .copied()
                .filter(|x| key(e, &x.tx) == key(e, tx))
                .collect()
        };
        let amount = |x: &Transaction| f64::from(x.amount as f32);
        self.spec
            .features()
            .iter()
            .map(|f| match *f {
                FeatureKind::Transaction(tf) => tx_feature(tf, tx),
                FeatureKind::Window {
                    entity,
                    length_ms,
                    include_current,
                    agg,
                } => {
                    let mut xs: Vec<f64> = of(entity)
                        .iter()
                        .filter(|e| e.ts > t - length_ms)
                        .map(|e| amount(&e.tx))
                        .collect();
                    if include_current {
                        xs.push(amount(tx));
                    }
                    let n = xs.len() as f64;
                    let mean = if xs.is_empty() {
                        0.0
                    } else {
                        xs.iter().sum::<f64>() / n
                    };
                    (match agg {
                        Agg::Count => n,
                        Agg::Sum => xs.iter().sum(),
                        Agg::Mean => mean,
                        Agg::Max => xs.iter().copied().fold(0.0, f64::max),
                        Agg::Std if xs.len() < 2 => 0.0,
                        Agg::Std => (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt(),
                        Agg::AmountToMean if mean > 0.0 => amount(tx) / mean,
                        Agg::AmountToMean => 0.0,
                    }) as f32
                }
                FeatureKind::Distinct {
                    entity,
                    of: a,
                    length_ms,
                    include_current,
                    out,
                } => {
                    let vals: HashSet<String> = of(entity)
                        .iter()
                        .filter(|e| e.ts > t - length_ms)
                        .filter_map(|e| attr(a, &e.tx))
                        .collect();
                    let cur = attr(a, tx);
                    match out {
                        DistinctOut::Count => {
                            let extra =
                                include_current && cur.as_ref().is_some_and(|c| !vals.contains(c));
                            (vals.len() + usize::from(extra)) as f32
                        }
                        DistinctOut::IsNew => {
                            f32::from(u8::from(cur.is_some_and(|c| !vals.contains(&c))))
                        }
                    }
                }
                FeatureKind::Previous { entity, out } => {
                    let evs = of(entity);
                    let prev = evs.iter().max_by_key(|e| (e.ts, e.seq));
                    match out {
                        PrevOut::SecsSince => match prev {
                            Some(p) => (t - p.ts) as f32 / 1000.0,
                            None => self.spec.retention_ms() as f32 / 1000.0,
                        },
                        PrevOut::KmhSince => {
                            let p = evs
                                .iter()
                                .filter(|e| e.tx.lat.is_some() && e.tx.lon.is_some())
                                .max_by_key(|e| (e.ts, e.seq));
                            match p {
                                Some(p) if tx.lat.is_some() && tx.lon.is_some() => {
                                    let h = ((t - p.ts) as f64 / HOUR as f64).max(1.0 / 60.0);
                                    (km(&p.tx, tx) / h) as f32
                                }
                                _ => 0.0,
                            }
                        }
                        PrevOut::CountryChanged => f32::from(u8::from(prev.is_some_and(|p| {
                            matches!((&p.tx.country, &tx.country), (Some(a), Some(b)) if a != b)
                        }))),
                        PrevOut::MerchantChanged => f32::from(u8::from(
                            prev.is_some_and(|p| p.tx.merchant_id != tx.merchant_id),
                        )),
                    }
                }
                FeatureKind::Risk {
                    entity,
                    length_ms,
                    delay_ms,
                    count,
                } => {
                    let evs: Vec<&NaiveEv> = of(entity)
                        .into_iter()
                        .filter(|e| e.ts > t - delay_ms - length_ms && e.ts <= t - delay_ms)
                        .collect();
                    let fraud = evs
                        .iter()
                        .filter(|e| matches!(e.label, Some((true, k)) if k <= t))
                        .count();
                    if count {
                        evs.len() as f32
                    } else if evs.is_empty() {
                        0.0
                    } else {
                        (fraud as f64 / evs.len() as f64) as f32
                    }
                }
            })
            .collect()
    }
}

fn tx_feature(f: TxFeature, tx: &Transaction) -> f32 {
    let dt: DateTime<Utc> = DateTime::from_timestamp_millis(tx.timestamp_ms).unwrap();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    match f {
        TxFeature::Amount => tx.amount as f32,
        TxFeature::LogAmount => (1.0 + tx.amount).ln() as f32,
        TxFeature::HourOfDay => dt.hour() as f32,
        TxFeature::IsWeekend => flag(dt.weekday().number_from_monday() >= 6),
        TxFeature::IsNight => flag(dt.hour() < 6),
        TxFeature::ChannelPos => flag(tx.channel == Some(Channel::Pos)),
        TxFeature::ChannelOnline => flag(tx.channel == Some(Channel::Online)),
        TxFeature::ChannelAtm => flag(tx.channel == Some(Channel::Atm)),
        TxFeature::ChannelMoto => flag(tx.channel == Some(Channel::Moto)),
        TxFeature::HasLocation => flag(tx.lat.is_some() && tx.lon.is_some()),
    }
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3 + 1e-4 * b.abs()
}

fn check_against_naive(spec: Arc<FeatureSpec>, seed: u64, n: usize, evicts: bool) -> [u64; 3] {
    let items = stream(seed, n);
    let mut engine = FeatureEngine::new(Arc::clone(&spec));
    let mut naive = Naive::new(Arc::clone(&spec));
    let mut out = vec![f32::NAN; spec.n_features()];
    let mut peeked = vec![f32::NAN; spec.n_features()];
    let mut outcomes = [0u64; 3];
    let names = spec.feature_names();
    for (k, item) in items.iter().enumerate() {
        match item {
            Item::Tx(tx) => {
                let before = engine.stats();
                engine.peek(tx, &mut peeked);
                assert_eq!(engine.stats(), before, "peek changed state");
                let got = engine.process(tx, &mut out);
                let (want_outcome, want) = naive.process(tx);
                assert_eq!(got, want_outcome, "seed {seed} item {k}: outcome of {tx}");
                outcomes[got as usize] += 1;
                for (c, name) in names.iter().enumerate() {
                    assert!(out[c].is_finite(), "{name} not finite");
                    assert!(
                        close(out[c], want[c]),
                        "seed {seed} item {k} ({got:?} {tx}): {name} = {} but brute force says {}",
                        out[c],
                        want[c]
                    );
                    assert_eq!(
                        out[c].to_bits(),
                        peeked[c].to_bits(),
                        "seed {seed} item {k}: peek and process disagree on {name}"
                    );
                }
            }
            Item::Label(l) => {
                let got = engine.observe_label(l);
                assert_eq!(got, naive.label(l), "seed {seed} item {k}: label {l:?}");
            }
        }
    }
    // Eviction really happened: the engine holds far fewer events than were stored.
    if evicts {
        let stats = engine.stats();
        assert!(stats.events_held < 2 * naive.evs.len() / 3, "{stats:?}");
    }
    outcomes
}

#[test]
fn engine_matches_brute_force_score_only() {
    let spec = test_spec("score_only");
    let mut total = [0u64; 3];
    for seed in 0..6 {
        let o = check_against_naive(Arc::clone(&spec), seed, 1500, true);
        for i in 0..3 {
            total[i] += o[i];
        }
    }
    // The streams really exercised every path.
    assert!(total.iter().all(|&c| c > 100), "{total:?}");
}

#[test]
fn engine_matches_brute_force_clamp() {
    let spec = test_spec("clamp");
    for seed in 100..104 {
        check_against_naive(Arc::clone(&spec), seed, 1500, true);
    }
}

#[test]
fn default_spec_matches_brute_force() {
    check_against_naive(default_spec(), 7, 1500, false);
}
