//! Seeded synthetic transaction history: the data `vigil generate` writes and the tests, benches
//! and demos train on.
//!
//! The simulation is built to exercise the features the scorer relies on, not just to produce
//! plausible-looking rows:
//!
//! - **Card holders** have their own spending level (log-normal amounts), transaction frequency,
//!   daily rhythm in their own time zone (some are night owls), home city, a pool of nearby
//!   shops they favour and a few online merchants. They occasionally travel (legitimately) for a
//!   few days, which is the noise that keeps "far from home" from being a giveaway.
//! - **Merchants** sit around real cities, with an MCC-driven ticket size and channel mix.
//! - **Fraud** comes from several patterns ([`FraudPattern`]), each labelled with the pattern
//!   (extra `fraud_pattern` column) and a chargeback delay of 1-60 days (`label_time`), so
//!   label-delayed features (merchant risk from *known* frauds) behave as in production.
//!
//! Generation runs day by day: all activity of a day (plus fraud scheduled for it earlier) is
//! produced, sorted by event time and written, so rows come out in time order and memory depends
//! on the number of cards and merchants, not on the number of rows. The fraud rate is held to the
//! configured value by a per-pattern budget that is credited with each day's legitimate volume
//! and debited by the fraud rows each episode produces.
//!
//! Everything is drawn from one seeded ChaCha8 stream in a fixed order, so the same
//! configuration gives a byte-identical file (on a given platform: amounts go through `exp`/`ln`,
//! whose last bit is the platform libm's business).

mod output;
mod world;

use std::collections::BTreeMap;
use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::record::{Channel, CSV_COLUMNS, MAX_TIMESTAMP_MS};
use output::{channel_bytes, civil_from_days, push_cents, push_padded, push_timestamp};
use world::{
    is_resale_kind, pick_preferred, Card, World, WorldSize, CITIES, KINDS, KIND_ATM, MIN_MERCHANTS,
};

const DAY_MS: i64 = 86_400_000;
/// 2018-04-01T00:00:00Z.
const DEFAULT_START_MS: i64 = 1_522_540_800_000;
/// Latest accepted start (2100-01-01): leaves a century of room below `MAX_TIMESTAMP_MS`.
const MAX_START_MS: i64 = 4_102_444_800_000;
/// Refuse configurations whose history would span more than this (too few cards for the rows).
const MAX_DAYS: u64 = 36_500;

/// Settings of a generation run. Same settings, same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Exact number of data rows written.
    pub rows: u64,
    pub seed: u64,
    /// First day (epoch ms, must be a UTC midnight). Default 2018-04-01.
    pub start_ms: i64,
    /// Target share of fraudulent rows, in [0, 0.5]. Default 0.015.
    pub fraud_rate: f64,
    /// Number of card holders; default `rows / 240` (at least 100), which with the default
    /// frequency gives a history of roughly 400 days.
    pub cards: Option<u64>,
    /// Number of merchants; default `cards / 4` (at least 300).
    pub merchants: Option<u64>,
    /// Mean transactions per card per day (each card's own rate scatters around it). Default 0.6.
    pub tx_per_card_per_day: f64,
    /// Write the extra `fraud_pattern` column (ignored by the history reader). Default true.
    pub pattern_column: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            rows: 100_000,
            seed: 42,
            start_ms: DEFAULT_START_MS,
            fraud_rate: 0.015,
            cards: None,
            merchants: None,
            tx_per_card_per_day: 0.6,
            pattern_column: true,
        }
    }
}

impl GeneratorConfig {
    /// Number of cards this configuration simulates.
    pub fn card_count(&self) -> u64 {
        self.cards
            .unwrap_or((self.rows / 240).clamp(100, 20_000_000))
    }

    /// Number of merchants this configuration simulates.
    pub fn merchant_count(&self) -> u64 {
        self.merchants.unwrap_or((self.card_count() / 4).max(300))
    }

    fn validate(&self) -> Result<(), GenerateError> {
        let bad = |field: &'static str, value: String, reason: String| {
            Err(GenerateError::Config {
                field,
                value,
                reason,
            })
        };
        if !(0.0..=0.5).contains(&self.fraud_rate) {
            return bad(
                "fraud_rate",
                self.fraud_rate.to_string(),
                "must be between 0 and 0.5".into(),
            );
        }
        if !(self.tx_per_card_per_day > 0.0 && self.tx_per_card_per_day <= 10.0) {
            return bad(
                "tx_per_card_per_day",
                self.tx_per_card_per_day.to_string(),
                "must be in (0, 10]".into(),
            );
        }
        if self.start_ms % DAY_MS != 0 || !(0..=MAX_START_MS).contains(&self.start_ms) {
            return bad(
                "start_ms",
                self.start_ms.to_string(),
                "must be a UTC midnight between 1970-01-01 and 2100-01-01".into(),
            );
        }
        let cards = self.card_count();
        if !(1..=50_000_000).contains(&cards) {
            return bad(
                "cards",
                cards.to_string(),
                "must be between 1 and 50000000".into(),
            );
        }
        let merchants = self.merchant_count();
        if !(MIN_MERCHANTS..=50_000_000).contains(&merchants) {
            return bad(
                "merchants",
                merchants.to_string(),
                format!("must be between {MIN_MERCHANTS} and 50000000"),
            );
        }
        let days = self.rows as f64 / (cards as f64 * self.tx_per_card_per_day);
        if days > MAX_DAYS as f64 {
            return bad(
                "cards",
                cards.to_string(),
                format!(
                    "{} rows would span about {days:.0} days (more than {MAX_DAYS}); use more cards",
                    self.rows
                ),
            );
        }
        Ok(())
    }
}

/// The fraud patterns the generator plants. Written in the `fraud_pattern` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FraudPattern {
    /// A card was exposed at a compromised merchant; days later it is used card-not-present for
    /// larger amounts at cash-out merchants.
    CompromisedMerchant,
    /// Fraud at the compromised merchant itself while the compromise runs (terminal risk).
    TerminalFraud,
    /// A stolen physical card: a burst of larger card-present purchases at unusual shops.
    StolenCard,
    /// Many sub-2.00 online payments within minutes, sometimes followed by a large one.
    CardTesting,
    /// A card-present payment thousands of km from the card's previous one, within an hour.
    ImpossibleTravel,
    /// Online cash-out in the card holder's night, at merchants in another country.
    AccountTakeover,
}

impl FraudPattern {
    pub const ALL: [FraudPattern; 6] = [
        FraudPattern::CompromisedMerchant,
        FraudPattern::TerminalFraud,
        FraudPattern::StolenCard,
        FraudPattern::CardTesting,
        FraudPattern::ImpossibleTravel,
        FraudPattern::AccountTakeover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FraudPattern::CompromisedMerchant => "compromised_merchant",
            FraudPattern::TerminalFraud => "terminal_fraud",
            FraudPattern::StolenCard => "stolen_card",
            FraudPattern::CardTesting => "card_testing",
            FraudPattern::ImpossibleTravel => "impossible_travel",
            FraudPattern::AccountTakeover => "account_takeover",
        }
    }

    pub fn parse(s: &str) -> Option<FraudPattern> {
        FraudPattern::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Share of the fraud rows this pattern is budgeted.
    fn share(self) -> f64 {
        match self {
            FraudPattern::CompromisedMerchant => 0.25,
            FraudPattern::TerminalFraud => 0.10,
            FraudPattern::StolenCard => 0.20,
            FraudPattern::CardTesting => 0.20,
            FraudPattern::ImpossibleTravel => 0.10,
            FraudPattern::AccountTakeover => 0.15,
        }
    }
}

/// What a run produced (serializable, for the CLI's report).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerateSummary {
    pub rows: u64,
    pub frauds: u64,
    /// Fraud rows per pattern name (every pattern listed, zero included).
    pub by_pattern: BTreeMap<String, u64>,
    pub cards: u64,
    pub merchants: u64,
    /// Event time of the first and last row (0 when no rows).
    pub first_ms: i64,
    pub last_ms: i64,
    /// Number of simulated days.
    pub days: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid generator setting `{field}` = {value}: {reason}")]
    Config {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("writing the generated history failed: {0}")]
    Io(#[from] std::io::Error),
}

/// One row before formatting. Location, country, currency and MCC follow from the merchant.
#[derive(Debug, Clone, Copy)]
struct Event {
    ts: i64,
    /// When the chargeback arrives (fraud rows only).
    label_at: i64,
    cents: u64,
    card: u32,
    merchant: u32,
    /// Order of creation within the day: breaks timestamp ties deterministically.
    seq: u32,
    channel: Channel,
    pattern: Option<FraudPattern>,
}

/// Rows of one fraud episode share the card, the pattern and the chargeback delay.
#[derive(Debug, Clone, Copy)]
struct Episode {
    card: u32,
    label_delay_ms: i64,
    pattern: FraudPattern,
}

/// A merchant whose card data is being skimmed during `[start, until_day)`.
struct Compromise {
    merchant: u32,
    until_day: u32,
    /// Cards seen card-present at the merchant during the window (deduplicated at the end).
    exposed: Vec<u32>,
    /// Fraud rows debited up front from the budget, corrected once the real number is known.
    estimated_rows: f64,
}

/// Share of exposed cards that fraudsters go on to use.
const EXPOSED_USED: f64 = 0.4;
/// Mean number of fraud rows per used exposed card (uniform 1..=4).
const ROWS_PER_EXPOSED: f64 = 2.5;
/// Exposed cards remembered per compromise.
const MAX_EXPOSED: usize = 5_000;
/// Daily probability that a card holder starts a (legitimate) trip.
const TRIP_PROB: f64 = 1.0 / 150.0;
/// Probability that a legitimate purchase is an unusually large one (noise for amount features).
const BIG_TICKET_PROB: f64 = 0.003;

/// Writes a history of `cfg.rows` rows to `out` and returns what was generated. `progress` is
/// called with the number of rows written so far after each simulated day.
///
/// `out` needs no extra buffering: rows are formatted into an internal buffer and written in
/// chunks of about 1 MiB. Legitimate rows carry label `0` and an empty `label_time` (no
/// chargeback ever arrives; readers apply their default label latency); fraud rows carry label
/// `1` and the chargeback time.
pub fn generate<W: Write>(
    cfg: &GeneratorConfig,
    mut out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<GenerateSummary, GenerateError> {
    cfg.validate()?;
    let mut world_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    world_rng.set_stream(1);
    let world = World::build(
        WorldSize {
            cards: cfg.card_count() as usize,
            merchants: cfg.merchant_count() as usize,
            mean_rate: cfg.tx_per_card_per_day,
        },
        &mut world_rng,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(2);
    let mut sim = Sim {
        world,
        rng,
        odds: cfg.fraud_rate / (1.0 - cfg.fraud_rate),
        start_ms: cfg.start_ms,
        day: 0,
        day_start: cfg.start_ms,
        today: Vec::new(),
        pending: BTreeMap::new(),
        credit: [0.0; 6],
        compromises: Vec::new(),
    };

    let mut buf: Vec<u8> = Vec::with_capacity(1 << 21);
    buf.extend_from_slice(CSV_COLUMNS.join(",").as_bytes());
    if cfg.pattern_column {
        buf.extend_from_slice(b",fraud_pattern");
    }
    buf.push(b'\n');

    let mut summary = GenerateSummary {
        rows: 0,
        frauds: 0,
        by_pattern: BTreeMap::new(),
        cards: cfg.card_count(),
        merchants: cfg.merchant_count(),
        first_ms: 0,
        last_ms: 0,
        days: 0,
    };
    let mut per_pattern = [0u64; 6];
    while summary.rows < cfg.rows {
        // `validate` bounds the expected span to a century from at most 2100, so only extreme
        // settings (few, very quiet cards) get here.
        if sim.day_start + DAY_MS > MAX_TIMESTAMP_MS {
            return Err(past_the_end(cfg));
        }
        sim.simulate_day();
        summary.days += 1;
        let take = (cfg.rows - summary.rows).min(sim.today.len() as u64) as usize;
        for e in &sim.today[..take] {
            if e.label_at > MAX_TIMESTAMP_MS {
                return Err(past_the_end(cfg));
            }
            summary.rows += 1;
            if summary.rows == 1 {
                summary.first_ms = e.ts;
            }
            summary.last_ms = e.ts;
            if let Some(p) = e.pattern {
                summary.frauds += 1;
                per_pattern[p as usize] += 1;
            }
            write_row(&mut buf, summary.rows, e, &sim.world, cfg.pattern_column);
            if buf.len() >= 1 << 20 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        progress(summary.rows);
        sim.advance();
    }
    out.write_all(&buf)?;
    out.flush()?;
    for p in FraudPattern::ALL {
        summary
            .by_pattern
            .insert(p.as_str().to_string(), per_pattern[p as usize]);
    }
    Ok(summary)
}

fn past_the_end(cfg: &GeneratorConfig) -> GenerateError {
    GenerateError::Config {
        field: "start_ms",
        value: cfg.start_ms.to_string(),
        reason: format!(
            "{} rows from this start would run past the latest accepted timestamp; \
             start earlier or use more cards",
            cfg.rows
        ),
    }
}

fn write_row(buf: &mut Vec<u8>, tx_no: u64, e: &Event, world: &World, pattern_column: bool) {
    let m = &world.merchants[e.merchant as usize];
    let city = &CITIES[m.city as usize];
    buf.push(b'T');
    push_padded(buf, tx_no, 12);
    buf.push(b',');
    push_timestamp(buf, e.ts);
    buf.extend_from_slice(b",C");
    push_padded(buf, u64::from(e.card), 8);
    buf.extend_from_slice(b",M");
    push_padded(buf, u64::from(e.merchant), 7);
    buf.push(b',');
    push_cents(buf, e.cents);
    if e.pattern.is_some() {
        buf.extend_from_slice(b",1,");
        push_timestamp(buf, e.label_at);
    } else {
        buf.extend_from_slice(b",0,");
    }
    buf.push(b',');
    buf.extend_from_slice(city.currency.as_bytes());
    buf.push(b',');
    push_padded(buf, u64::from(KINDS[m.kind as usize].mcc), 4);
    buf.push(b',');
    buf.extend_from_slice(city.country.as_bytes());
    buf.push(b',');
    buf.extend_from_slice(channel_bytes(e.channel));
    // Only card-present rows have a terminal location; for card-not-present rows the
    // merchant's address says nothing about where the card holder is.
    if matches!(e.channel, Channel::Pos | Channel::Atm) {
        buf.push(b',');
        buf.extend_from_slice(m.loc_text.as_bytes());
    } else {
        buf.extend_from_slice(b",,");
    }
    if pattern_column {
        buf.push(b',');
        if let Some(p) = e.pattern {
            buf.extend_from_slice(p.as_str().as_bytes());
        }
    }
    buf.push(b'\n');
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Poisson draw by multiplication of uniforms (Knuth): the daily rates are small (< 15).
fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p: f64 = rng.gen();
    while p > limit {
        k += 1;
        p *= rng.gen::<f64>();
    }
    k
}

/// Seconds into the UTC day of an activity at local `hour` in time zone `tz_hours`.
fn utc_secs(hour: f64, tz_hours: i32) -> i64 {
    (((hour - f64::from(tz_hours)) * 3600.0).round() as i64).rem_euclid(86_400)
}

fn to_cents(amount: f64) -> u64 {
    (amount * 100.0).round().max(1.0) as u64
}

struct Sim {
    world: World,
    rng: ChaCha8Rng,
    /// fraud_rate / (1 - fraud_rate): fraud rows owed per legitimate row.
    odds: f64,
    start_ms: i64,
    day: u32,
    day_start: i64,
    /// The current day's rows, sorted once the day is simulated.
    today: Vec<Event>,
    /// Rows already scheduled for later days (fraud spilling over midnight, delayed fraud).
    pending: BTreeMap<u32, Vec<Event>>,
    /// Fraud rows each pattern may still produce.
    credit: [f64; 6],
    compromises: Vec<Compromise>,
}

impl Sim {
    fn advance(&mut self) {
        self.day += 1;
        self.day_start += DAY_MS;
    }

    fn simulate_day(&mut self) {
        self.today.clear();
        if let Some(evs) = self.pending.remove(&self.day) {
            for e in evs {
                self.emit(e);
            }
        }
        let legit = self.legit_day();
        for p in FraudPattern::ALL {
            self.credit[p as usize] += legit as f64 * self.odds * p.share();
        }
        self.resolve_compromises();
        self.fraud_episodes();
        self.today.sort_unstable_by_key(|e| (e.ts, e.seq));
    }

    /// Places an event on today's list or schedules it for its (later) day.
    fn emit(&mut self, mut e: Event) {
        debug_assert!(e.ts >= self.day_start);
        let day = ((e.ts - self.start_ms) / DAY_MS) as u32;
        if day == self.day {
            e.seq = self.today.len() as u32;
            self.today.push(e);
        } else {
            self.pending.entry(day).or_default().push(e);
        }
    }

    /// Weekly and yearly seasonality of legitimate spending.
    fn day_factor(&self) -> f64 {
        let abs_day = self.day_start.div_euclid(DAY_MS);
        let weekday = [0.95, 0.95, 1.0, 1.0, 1.15, 1.2, 0.75][(abs_day + 3).rem_euclid(7) as usize];
        let month = match civil_from_days(abs_day).1 {
            12 => 1.2,
            1 => 0.9,
            _ => 1.0,
        };
        weekday * month
    }

    /// All legitimate activity of the day; returns the number of rows.
    fn legit_day(&mut self) -> u64 {
        let factor = self.day_factor();
        let mut rows = 0;
        for ci in 0..self.world.cards.len() {
            let mut card = self.world.cards[ci];
            if card.trip_until <= self.day && card.trip_city != card.city {
                card.trip_city = card.city;
            }
            if card.trip_city == card.city && self.rng.gen::<f64>() < TRIP_PROB {
                let to = self.world.random_city(&mut self.rng);
                if to != card.city as usize {
                    card.trip_city = to as u16;
                    card.trip_until = self.day + self.rng.gen_range(2..=10);
                }
            }
            self.world.cards[ci] = card;
            let k = poisson(&mut self.rng, f64::from(card.rate) * factor);
            for _ in 0..k {
                self.legit_tx(ci as u32, &card);
            }
            rows += u64::from(k);
        }
        rows
    }

    fn legit_tx(&mut self, ci: u32, card: &Card) {
        let rng = &mut self.rng;
        let merchant = if rng.gen::<f32>() < card.online_share {
            let pool = self.world.online_pool(card);
            pool[rng.gen_range(0..pool.len())]
        } else if card.trip_city != card.city {
            let shops = &self.world.local_by_city[card.trip_city as usize];
            shops[rng.gen_range(0..shops.len())]
        } else {
            let pool = self.world.local_pool(card);
            pool[pick_preferred(pool.len(), rng)]
        };
        let m = &self.world.merchants[merchant as usize];
        let channel = m.channel(rng);
        let tz = CITIES[card.trip_city as usize].tz_hours;
        let hour = f64::from(card.hour_center) + f64::from(card.hour_spread) * normal(rng);
        let secs = utc_secs(hour.rem_euclid(24.0), tz);
        let cents = legit_cents(rng, card, m.kind as usize);
        if m.compromised && matches!(channel, Channel::Pos | Channel::Atm) {
            if let Some(c) = self
                .compromises
                .iter_mut()
                .find(|c| c.merchant == merchant && c.exposed.len() < MAX_EXPOSED)
            {
                c.exposed.push(ci);
            }
        }
        self.emit(Event {
            ts: self.day_start + secs * 1000,
            label_at: 0,
            cents,
            card: ci,
            merchant,
            seq: 0,
            channel,
            pattern: None,
        });
    }

    /// Ends compromises whose window is over: the exposed cards fraudsters use get their
    /// card-not-present fraud scheduled 1-21 days later.
    fn resolve_compromises(&mut self) {
        let mut i = 0;
        while i < self.compromises.len() {
            if self.compromises[i].until_day > self.day {
                i += 1;
                continue;
            }
            let mut c = self.compromises.swap_remove(i);
            self.world.merchants[c.merchant as usize].compromised = false;
            c.exposed.sort_unstable();
            c.exposed.dedup();
            let mut rows = 0u32;
            for &card in &c.exposed {
                if self.rng.gen::<f64>() < EXPOSED_USED {
                    rows += self.exposed_card_fraud(card);
                }
            }
            let slot = FraudPattern::CompromisedMerchant as usize;
            self.credit[slot] += c.estimated_rows - f64::from(rows);
        }
    }

    fn fraud_episodes(&mut self) {
        use FraudPattern::*;
        let mut attempts = 0;
        while self.credit[CompromisedMerchant as usize] > 0.0 && attempts < 20 {
            attempts += 1;
            self.start_compromise();
        }
        while self.credit[TerminalFraud as usize] > 0.0 && !self.compromises.is_empty() {
            self.terminal_fraud();
            self.credit[TerminalFraud as usize] -= 1.0;
        }
        // Without a running compromise the terminal budget waits, but not without bound.
        let t = &mut self.credit[TerminalFraud as usize];
        *t = t.min(5.0);
        while self.credit[StolenCard as usize] > 0.0 {
            let rows = self.stolen_card();
            self.credit[StolenCard as usize] -= f64::from(rows);
        }
        while self.credit[CardTesting as usize] > 0.0 {
            let rows = self.card_testing();
            self.credit[CardTesting as usize] -= f64::from(rows);
        }
        while self.credit[ImpossibleTravel as usize] > 0.0 {
            let rows = self.impossible_travel();
            self.credit[ImpossibleTravel as usize] -= f64::from(rows);
        }
        while self.credit[AccountTakeover as usize] > 0.0 {
            let rows = self.account_takeover();
            self.credit[AccountTakeover as usize] -= f64::from(rows);
        }
    }

    fn random_card(&mut self) -> u32 {
        self.rng.gen_range(0..self.world.cards.len() as u32)
    }

    fn fraud_event(&mut self, ep: Episode, ts: i64, merchant: u32, cents: u64, channel: Channel) {
        self.emit(Event {
            ts,
            label_at: ts + ep.label_delay_ms,
            cents,
            card: ep.card,
            merchant,
            seq: 0,
            channel,
            pattern: Some(ep.pattern),
        });
    }

    /// A new fraud episode on card `card`: one chargeback delay for all its rows, as the card
    /// holder disputes them together.
    fn episode(&mut self, card: u32, pattern: FraudPattern) -> Episode {
        let days = (12f64.ln() + 0.6 * normal(&mut self.rng))
            .exp()
            .clamp(1.0, 60.0);
        Episode {
            card,
            label_delay_ms: (days * 86_400.0).round() as i64 * 1000,
            pattern,
        }
    }

    /// Starts skimming at a shop a random card holder uses (so busy shops are hit more often).
    fn start_compromise(&mut self) {
        let ci = self.random_card();
        let card = self.world.cards[ci as usize];
        let pool = self.world.local_pool(&card);
        let merchant = pool[pick_preferred(pool.len(), &mut self.rng)];
        let m = &self.world.merchants[merchant as usize];
        if m.compromised || m.pool_cards == 0 {
            return;
        }
        let window = self.rng.gen_range(5..=20u32);
        let pool_cards = f64::from(m.pool_cards);
        let expected_exposed = pool_cards
            * (1.0 - (-f64::from(window) * f64::from(m.daily_visits) / pool_cards).exp());
        let estimated_rows = expected_exposed * EXPOSED_USED * ROWS_PER_EXPOSED;
        self.world.merchants[merchant as usize].compromised = true;
        self.credit[FraudPattern::CompromisedMerchant as usize] -= estimated_rows;
        self.compromises.push(Compromise {
            merchant,
            until_day: self.day + window,
            exposed: Vec::new(),
            estimated_rows,
        });
    }

    /// 1-4 card-not-present payments at cash-out merchants, for 2-8 times the holder's usual
    /// ticket, spread over a day and a half, starting 1-21 days after the compromise ends.
    fn exposed_card_fraud(&mut self, ci: u32) -> u32 {
        let card = self.world.cards[ci as usize];
        let ep = self.episode(ci, FraudPattern::CompromisedMerchant);
        let n = self.rng.gen_range(1..=4u32);
        let start_day = i64::from(self.rng.gen_range(1..=21u32));
        let mut ts = self.day_start + start_day * DAY_MS + self.rng.gen_range(0..86_400) * 1000;
        for _ in 0..n {
            let merchant = self.cash_out_merchant();
            let amount = (card.typical_amount() * self.rng.gen_range(2.0..8.0))
                .max(self.rng.gen_range(40.0..300.0));
            self.fraud_event(ep, ts, merchant, to_cents(amount), Channel::Online);
            ts += self.rng.gen_range(0..36 * 3600) * 1000;
        }
        n
    }

    fn cash_out_merchant(&mut self) -> u32 {
        let list = if self.world.cash_out.is_empty() {
            &self.world.online
        } else {
            &self.world.cash_out
        };
        list[self.rng.gen_range(0..list.len())]
    }

    /// Counterfeit cards used at a compromised terminal during business hours.
    fn terminal_fraud(&mut self) {
        let c = self.rng.gen_range(0..self.compromises.len());
        let merchant = self.compromises[c].merchant;
        let m = &self.world.merchants[merchant as usize];
        let city = m.city as usize;
        let channel = if m.kind as usize == KIND_ATM {
            Channel::Atm
        } else {
            Channel::Pos
        };
        let scale = KINDS[m.kind as usize].amount_scale;
        let locals = &self.world.cards_by_city[city];
        let ci = if locals.is_empty() {
            self.random_card()
        } else {
            locals[self.rng.gen_range(0..locals.len())]
        };
        let card = self.world.cards[ci as usize];
        let secs = utc_secs(self.rng.gen_range(9.0..21.0), CITIES[city].tz_hours);
        let amount = card.typical_amount() * scale * self.rng.gen_range(1.5..4.0);
        let ep = self.episode(ci, FraudPattern::TerminalFraud);
        self.fraud_event(
            ep,
            self.day_start + secs * 1000,
            merchant,
            to_cents(amount),
            channel,
        );
    }

    /// 3-8 card-present purchases in the home city within a few hours, at shops the holder
    /// never uses, favouring resellable goods and cash.
    fn stolen_card(&mut self) -> u32 {
        let ci = self.random_card();
        let card = self.world.cards[ci as usize];
        let city = card.city as usize;
        let n = self.rng.gen_range(3..=8u32);
        let ep = self.episode(ci, FraudPattern::StolenCard);
        let secs = utc_secs(self.rng.gen_range(8.0..21.0), CITIES[city].tz_hours);
        let mut ts = self.day_start + secs * 1000;
        for _ in 0..n {
            let shops = &self.world.local_by_city[city];
            let mut merchant = shops[self.rng.gen_range(0..shops.len())];
            for _ in 0..6 {
                if is_resale_kind(self.world.merchants[merchant as usize].kind as usize) {
                    break;
                }
                merchant = shops[self.rng.gen_range(0..shops.len())];
            }
            let kind = self.world.merchants[merchant as usize].kind as usize;
            let (amount, channel) = if kind == KIND_ATM {
                (
                    20.0 * f64::from(self.rng.gen_range(10..=30u32)),
                    Channel::Atm,
                )
            } else {
                let a =
                    card.typical_amount() * KINDS[kind].amount_scale * self.rng.gen_range(2.0..6.0);
                (a.max(self.rng.gen_range(40.0..120.0)), Channel::Pos)
            };
            self.fraud_event(ep, ts, merchant, to_cents(amount), channel);
            ts += self.rng.gen_range(4 * 60..50 * 60) * 1000;
        }
        n
    }

    /// 5-20 payments under 2.00 seconds to minutes apart, mostly at a few weak online
    /// merchants; half the time the "validated" card is then cashed out.
    fn card_testing(&mut self) -> u32 {
        let ci = self.random_card();
        let n = self.rng.gen_range(5..=20u32);
        let ep = self.episode(ci, FraudPattern::CardTesting);
        let mut ts = self.day_start + self.rng.gen_range(0..86_400) * 1000;
        for _ in 0..n {
            let merchant = if self.rng.gen::<f64>() < 0.75 {
                let t = &self.world.testing_targets;
                t[self.rng.gen_range(0..t.len())]
            } else {
                let o = &self.world.online;
                o[self.rng.gen_range(0..o.len())]
            };
            let cents = self.rng.gen_range(50..200);
            self.fraud_event(ep, ts, merchant, cents, Channel::Online);
            ts += self.rng.gen_range(10..180) * 1000;
        }
        if self.rng.gen::<f64>() < 0.5 {
            ts += self.rng.gen_range(60..3600) * 1000;
            let merchant = self.cash_out_merchant();
            let amount = self.rng.gen_range(150.0..1500.0);
            self.fraud_event(ep, ts, merchant, to_cents(amount), Channel::Online);
            return n + 1;
        }
        n
    }

    /// A legitimate card-present payment at home, then within 5-55 minutes a card-present one
    /// at least 2500 km away (a cloned card), plus up to two more there over the next hours.
    fn impossible_travel(&mut self) -> u32 {
        let mut ci = self.random_card();
        for _ in 0..8 {
            let c = &self.world.cards[ci as usize];
            if c.trip_city == c.city {
                break;
            }
            ci = self.random_card();
        }
        let card = self.world.cards[ci as usize];
        let home = card.city as usize;
        let pool = self.world.local_pool(&card);
        let anchor = pool[pick_preferred(pool.len(), &mut self.rng)];
        let anchor_kind = self.world.merchants[anchor as usize].kind as usize;
        let secs = utc_secs(self.rng.gen_range(9.0..20.0), CITIES[home].tz_hours);
        let mut ts = self.day_start + secs * 1000;
        let cents = legit_cents(&mut self.rng, &card, anchor_kind);
        self.emit(Event {
            ts,
            label_at: 0,
            cents,
            card: ci,
            merchant: anchor,
            seq: 0,
            channel: if anchor_kind == KIND_ATM {
                Channel::Atm
            } else {
                Channel::Pos
            },
            pattern: None,
        });
        let far = self.world.far_city(home, 2500.0, &mut self.rng);
        let ep = self.episode(ci, FraudPattern::ImpossibleTravel);
        let n = 1 + self.rng.gen_range(0..=2u32);
        ts += self.rng.gen_range(5 * 60..55 * 60) * 1000;
        for _ in 0..n {
            let shops = &self.world.local_by_city[far];
            let merchant = shops[self.rng.gen_range(0..shops.len())];
            let kind = self.world.merchants[merchant as usize].kind as usize;
            let (amount, channel) = if kind == KIND_ATM {
                (
                    20.0 * f64::from(self.rng.gen_range(5..=25u32)),
                    Channel::Atm,
                )
            } else {
                let a =
                    card.typical_amount() * KINDS[kind].amount_scale * self.rng.gen_range(1.5..5.0);
                (a.max(30.0), Channel::Pos)
            };
            self.fraud_event(ep, ts, merchant, to_cents(amount), channel);
            ts += self.rng.gen_range(20 * 60..120 * 60) * 1000;
        }
        n
    }

    /// 2-4 online cash-out payments between 1 and 5 am in the holder's time zone, mostly at
    /// merchants in another country, often round amounts.
    fn account_takeover(&mut self) -> u32 {
        let ci = self.random_card();
        let card = self.world.cards[ci as usize];
        let home = CITIES[card.city as usize].country;
        let n = self.rng.gen_range(2..=4u32);
        let ep = self.episode(ci, FraudPattern::AccountTakeover);
        let secs = utc_secs(
            self.rng.gen_range(1.0..5.0),
            CITIES[card.city as usize].tz_hours,
        );
        let mut ts = self.day_start + secs * 1000;
        for _ in 0..n {
            let mut merchant = self.cash_out_merchant();
            for _ in 0..6 {
                let m = &self.world.merchants[merchant as usize];
                if CITIES[m.city as usize].country != home || self.rng.gen::<f64>() < 0.2 {
                    break;
                }
                merchant = self.cash_out_merchant();
            }
            let amount = if self.rng.gen::<f64>() < 0.4 {
                50.0 * f64::from(self.rng.gen_range(4..=40u32))
            } else {
                self.rng.gen_range(200.0..2500.0)
            };
            self.fraud_event(ep, ts, merchant, to_cents(amount), Channel::Online);
            ts += self.rng.gen_range(3 * 60..40 * 60) * 1000;
        }
        n
    }
}

/// A legitimate amount: the holder's log-normal level times the merchant kind's scale, with
/// price points for digital media, notes for ATMs and the odd big purchase.
fn legit_cents(rng: &mut ChaCha8Rng, card: &Card, kind: usize) -> u64 {
    let k = &KINDS[kind];
    if k.price_points {
        const POINTS: [u64; 6] = [99, 199, 299, 499, 999, 1499];
        return POINTS[rng.gen_range(0..POINTS.len())];
    }
    let z = normal(rng);
    let mut amount = (f64::from(card.mu) + f64::from(card.sigma) * z).exp() * k.amount_scale;
    if rng.gen::<f64>() < BIG_TICKET_PROB {
        amount *= rng.gen_range(4.0..15.0);
    }
    if k.atm {
        amount = 20.0 * (amount / 20.0).round().max(1.0);
    }
    to_cents(amount.max(0.5))
}

#[cfg(test)]
mod tests;
