//! The declarative feature spec: which features exist, in which column order, and the engine's
//! event-time settings. Parsed from TOML (`training/features.toml` is the default), validated
//! once, then immutable and shared through an `Arc` by the trainer and the scorer.
//!
//! The TOML is walked by hand rather than through `serde(deny_unknown_fields)` so that every
//! error names the full key path (`window[2].lenghts`), which is what a person editing the file
//! needs.
//!
//! Layout (all keys except the feature blocks are optional):
//!
//! ```toml
//! label_latency = "7d"        # label known this long after the transaction when a row has no label_time
//! allowed_lateness = "10m"    # out-of-order events up to this far behind the watermark are placed exactly
//! too_late = "score_only"     # or "clamp": what happens to events later than that (see the engine docs)
//! transaction = ["amount", "log_amount", "hour_of_day", "is_weekend", "is_night",
//!                "channel_pos", "channel_online", "channel_atm", "channel_moto"]
//!
//! [[window]]                  # -> card_count_1h, card_sum_1h, ...
//! entity = "card"
//! lengths = ["1h", "1d"]
//! aggregates = ["count", "sum", "mean", "max", "std", "amount_to_mean"]
//! include_current = false
//!
//! [[distinct]]                # -> card_distinct_merchant_1d, card_new_merchant_1d
//! entity = "card"
//! of = "merchant"
//! lengths = ["1d"]
//! outputs = ["count", "is_new"]
//!
//! [[previous]]                # -> card_secs_since_prev, card_kmh_since_prev, ...
//! entity = "card"
//! outputs = ["secs_since", "kmh_since", "country_changed", "merchant_changed"]
//!
//! [[risk]]                    # -> merchant_risk_7d_delay_7d, merchant_risk_count_7d_delay_7d
//! entity = "merchant"
//! lengths = ["7d"]
//! delays = ["7d"]
//! ```
//!
//! Durations are `<integer><unit>` with unit `s`, `m`, `h` or `d`. Feature names use the canonical
//! spelling of a duration (the largest unit that divides it: `60m` is named `1h`), so names and the
//! [`FeatureSpec::fingerprint`] depend on meaning, not on how the file was written.

use std::fmt;
use std::path::Path;

use toml::Value;

/// Longest accepted duration: far beyond any sensible look-back, small enough that no sum of
/// durations can overflow an `i64` of milliseconds.
const MAX_DURATION_MS: i64 = 1000 * DAY_MS;
const SEC_MS: i64 = 1000;
const MIN_MS: i64 = 60 * SEC_MS;
const HOUR_MS: i64 = 60 * MIN_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Why a spec was refused. Every variant names the TOML key path it is about.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read feature spec {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("feature spec is not valid TOML: {0}")]
    Toml(String),
    #[error("feature spec: unknown key `{path}`")]
    UnknownKey { path: String },
    #[error("feature spec: missing key `{path}`")]
    MissingKey { path: String },
    #[error("feature spec: `{path}` must be {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
    },
    #[error("feature spec: `{path}` = `{value}`: {reason}")]
    InvalidValue {
        path: String,
        value: String,
        reason: String,
    },
    #[error("feature spec: `{path}` declares feature `{name}` a second time")]
    DuplicateFeature { path: String, name: String },
    #[error("feature spec declares no features; a model needs at least one")]
    NoFeatures,
}

/// The thing a window is keyed by. Adding an entity means adding a variant here and its
/// [`Entity::key_of`]; the engine keeps one state table per entity used in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    /// Keyed by `card_id`.
    Card,
    /// Keyed by `merchant_id`.
    Merchant,
}

impl Entity {
    pub const ALL: [Entity; 2] = [Entity::Card, Entity::Merchant];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Card => "card",
            Entity::Merchant => "merchant",
        }
    }

    /// The id of this entity in a transaction.
    pub fn key_of(self, tx: &crate::record::Transaction) -> &str {
        match self {
            Entity::Card => &tx.card_id,
            Entity::Merchant => &tx.merchant_id,
        }
    }
}

/// A categorical attribute of a transaction that distinct counts and "changed" flags look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attr {
    Card,
    Merchant,
    Country,
    Mcc,
}

impl Attr {
    pub const ALL: [Attr; 4] = [Attr::Card, Attr::Merchant, Attr::Country, Attr::Mcc];

    pub fn as_str(self) -> &'static str {
        match self {
            Attr::Card => "card",
            Attr::Merchant => "merchant",
            Attr::Country => "country",
            Attr::Mcc => "mcc",
        }
    }

    /// Position in the engine's compact per-event attribute array.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Aggregates over the amounts of an entity's events in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    /// Number of events. Empty window: 0.
    Count,
    /// Sum of amounts. Empty: 0.
    Sum,
    /// Mean amount. Empty: 0.
    Mean,
    /// Largest amount. Empty: 0 (amounts are never negative).
    Max,
    /// Population standard deviation of amounts. Empty or single event: 0.
    Std,
    /// Current amount divided by the window's mean amount. Empty window or zero mean: 0.
    AmountToMean,
}

impl Agg {
    pub const ALL: [Agg; 6] = [
        Agg::Count,
        Agg::Sum,
        Agg::Mean,
        Agg::Max,
        Agg::Std,
        Agg::AmountToMean,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Mean => "mean",
            Agg::Max => "max",
            Agg::Std => "std",
            Agg::AmountToMean => "amount_to_mean",
        }
    }
}

/// Outputs of a `[[distinct]]` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DistinctOut {
    /// Number of distinct (known) values in the window. Missing values are not counted.
    Count,
    /// 1 when the current transaction's value is known and appears in none of the entity's
    /// earlier events in the window, else 0 (always looks at earlier events only).
    IsNew,
}

impl DistinctOut {
    pub const ALL: [DistinctOut; 2] = [DistinctOut::Count, DistinctOut::IsNew];

    pub fn as_str(self) -> &'static str {
        match self {
            DistinctOut::Count => "count",
            DistinctOut::IsNew => "is_new",
        }
    }
}

/// Outputs of a `[[previous]]` block: comparisons with the entity's previous event (the latest
/// earlier event in event-time order still within the engine's retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrevOut {
    /// Seconds since the previous event. None: the retention length in seconds (an "at least
    /// this long" sentinel that sorts with long gaps, where a tree wants it).
    SecsSince,
    /// Great-circle km/h from the previous *located* event to this one (impossible travel).
    /// Gaps under one minute count as one minute, so the value stays finite. 0 when either end
    /// has no location.
    KmhSince,
    /// 1 when both this and the previous event have a country and they differ, else 0.
    CountryChanged,
    /// 1 when the previous event exists and was at another merchant, else 0.
    MerchantChanged,
}

impl PrevOut {
    pub const ALL: [PrevOut; 4] = [
        PrevOut::SecsSince,
        PrevOut::KmhSince,
        PrevOut::CountryChanged,
        PrevOut::MerchantChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PrevOut::SecsSince => "secs_since",
            PrevOut::KmhSince => "kmh_since",
            PrevOut::CountryChanged => "country_changed",
            PrevOut::MerchantChanged => "merchant_changed",
        }
    }

    fn feature_name(self, e: Entity) -> String {
        let e = e.as_str();
        match self {
            PrevOut::SecsSince => format!("{e}_secs_since_prev"),
            PrevOut::KmhSince => format!("{e}_kmh_since_prev"),
            PrevOut::CountryChanged => format!("{e}_country_changed"),
            PrevOut::MerchantChanged => format!("{e}_merchant_changed"),
        }
    }
}

/// Features of the transaction alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxFeature {
    /// The amount as given.
    Amount,
    /// `ln(1 + amount)`.
    LogAmount,
    /// Hour of day, 0..=23, UTC (the spec has no time zone; the model learns the offset).
    HourOfDay,
    /// 1 on Saturday or Sunday (UTC).
    IsWeekend,
    /// 1 from 00:00 to 05:59 UTC.
    IsNight,
    ChannelPos,
    ChannelOnline,
    ChannelAtm,
    ChannelMoto,
    /// 1 when the transaction carries both latitude and longitude.
    HasLocation,
}

impl TxFeature {
    pub const ALL: [TxFeature; 10] = [
        TxFeature::Amount,
        TxFeature::LogAmount,
        TxFeature::HourOfDay,
        TxFeature::IsWeekend,
        TxFeature::IsNight,
        TxFeature::ChannelPos,
        TxFeature::ChannelOnline,
        TxFeature::ChannelAtm,
        TxFeature::ChannelMoto,
        TxFeature::HasLocation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TxFeature::Amount => "amount",
            TxFeature::LogAmount => "log_amount",
            TxFeature::HourOfDay => "hour_of_day",
            TxFeature::IsWeekend => "is_weekend",
            TxFeature::IsNight => "is_night",
            TxFeature::ChannelPos => "channel_pos",
            TxFeature::ChannelOnline => "channel_online",
            TxFeature::ChannelAtm => "channel_atm",
            TxFeature::ChannelMoto => "channel_moto",
            TxFeature::HasLocation => "has_location",
        }
    }
}

/// What the engine does with an event later than `allowed_lateness` behind the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TooLatePolicy {
    /// Score it from current state at its own timestamp (windows cut at the retention horizon)
    /// and do not add it to state: it can no longer be placed without contradicting features
    /// already served. Counted as `too_late`.
    ScoreOnly,
    /// Treat it as if it happened at `watermark - allowed_lateness` for every windowed feature
    /// (per-transaction calendar features keep the real time) and add it to state there, so it
    /// still counts in later windows. Counted as `too_late`.
    Clamp,
}

impl TooLatePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TooLatePolicy::ScoreOnly => "score_only",
            TooLatePolicy::Clamp => "clamp",
        }
    }
}

/// One output column, fully resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureKind {
    Transaction(TxFeature),
    /// Aggregate of amounts over the entity's events in `(t - length, t]`.
    Window {
        entity: Entity,
        length_ms: i64,
        include_current: bool,
        agg: Agg,
    },
    /// Distinct values of `of` over the entity's events in `(t - length, t]`.
    Distinct {
        entity: Entity,
        of: Attr,
        length_ms: i64,
        include_current: bool,
        out: DistinctOut,
    },
    Previous {
        entity: Entity,
        out: PrevOut,
    },
    /// Over the entity's events in `(t - delay - length, t - delay]`: the share whose fraud label
    /// is known by `t` (`count == false`), or the number of those events (`count == true`).
    Risk {
        entity: Entity,
        length_ms: i64,
        delay_ms: i64,
        count: bool,
    },
}

impl FeatureKind {
    /// The entity whose state this feature reads, if any.
    pub fn entity(&self) -> Option<Entity> {
        match *self {
            FeatureKind::Transaction(_) => None,
            FeatureKind::Window { entity, .. }
            | FeatureKind::Distinct { entity, .. }
            | FeatureKind::Previous { entity, .. }
            | FeatureKind::Risk { entity, .. } => Some(entity),
        }
    }

    /// How far back from the event time this feature reads.
    fn lookback_ms(&self) -> i64 {
        match *self {
            FeatureKind::Transaction(_) | FeatureKind::Previous { .. } => 0,
            FeatureKind::Window { length_ms, .. } | FeatureKind::Distinct { length_ms, .. } => {
                length_ms
            }
            FeatureKind::Risk {
                length_ms,
                delay_ms,
                ..
            } => length_ms + delay_ms,
        }
    }
}

/// A validated, immutable feature spec. Share it through an `Arc`.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    source: String,
    names: Vec<String>,
    features: Vec<FeatureKind>,
    label_latency_ms: i64,
    allowed_lateness_ms: i64,
    too_late: TooLatePolicy,
    max_lookback_ms: i64,
    fingerprint: String,
}

impl FeatureSpec {
    /// Parses and validates a spec. Unknown keys, wrong types, bad durations, duplicate features
    /// and an empty feature list are refused with an error naming the key path.
    pub fn from_toml_str(s: &str) -> Result<FeatureSpec, SpecError> {
        let root: toml::Table = s
            .parse()
            .map_err(|e: toml::de::Error| SpecError::Toml(e.to_string().trim_end().to_string()))?;
        let mut b = Builder::default();
        b.parse_root(&root)?;
        b.finish(s.to_string())
    }

    /// Reads and parses a spec file.
    pub fn load(path: &Path) -> Result<FeatureSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.display().to_string(),
            source,
        })?;
        FeatureSpec::from_toml_str(&text)
    }

    /// The TOML text exactly as given (model files embed it so a model carries its features).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Stable 16-hex-digit FNV-1a hash of the canonical form: settings plus the ordered feature
    /// names, which encode every semantic parameter. Comments, whitespace, key order and duration
    /// spelling do not change it; adding, removing or reordering a feature does.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    pub fn feature_names(&self) -> &[String] {
        &self.names
    }

    pub fn n_features(&self) -> usize {
        self.names.len()
    }

    /// The resolved features, in column order.
    pub fn features(&self) -> &[FeatureKind] {
        &self.features
    }

    /// Longest window + delay: how much event time of history a scorer must replay to rebuild
    /// state exactly.
    pub fn max_lookback_ms(&self) -> i64 {
        self.max_lookback_ms
    }

    /// The features a state built from only `available_ms` of event time history gets wrong:
    /// those whose windows (plus label delay) reach further back, and the previous-event
    /// features (the previous event may be older), in column order.
    pub fn features_beyond(&self, available_ms: i64) -> Vec<&str> {
        self.features
            .iter()
            .zip(&self.names)
            .filter(|(f, _)| match f {
                FeatureKind::Previous { .. } => available_ms < self.max_lookback_ms,
                f => f.lookback_ms() > available_ms,
            })
            .map(|(_, n)| n.as_str())
            .collect()
    }

    /// Delay between a transaction and its label when the history has no `label_time`.
    pub fn label_latency_ms(&self) -> i64 {
        self.label_latency_ms
    }

    /// How far behind the watermark an event may be and still be placed exactly.
    pub fn allowed_lateness_ms(&self) -> i64 {
        self.allowed_lateness_ms
    }

    pub fn too_late_policy(&self) -> TooLatePolicy {
        self.too_late
    }

    /// How much event time behind the watermark the engine keeps: the longest look-back plus the
    /// allowed lateness, so that a late event still finds its whole windows.
    pub fn retention_ms(&self) -> i64 {
        self.max_lookback_ms + self.allowed_lateness_ms
    }

    /// The canonical text the fingerprint hashes.
    fn canonical(&self) -> String {
        let mut s = format!(
            "vigil-features/1\nlabel_latency_ms={}\nallowed_lateness_ms={}\ntoo_late={}\n",
            self.label_latency_ms,
            self.allowed_lateness_ms,
            self.too_late.as_str()
        );
        for n in &self.names {
            s.push_str(n);
            s.push('\n');
        }
        s
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parses `<integer><unit>` (`s`, `m`, `h`, `d`) into milliseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let unit_at = s.len().checked_sub(1)?;
    let (num, unit) = s.split_at(unit_at);
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = num.parse().ok()?;
    let per = match unit {
        "s" => SEC_MS,
        "m" => MIN_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        _ => return None,
    };
    n.checked_mul(per).filter(|ms| *ms <= MAX_DURATION_MS)
}

/// The canonical spelling of a duration: the largest unit that divides it (`90m`, `1h`, `7d`).
pub fn format_duration(ms: i64) -> String {
    for (per, unit) in [(DAY_MS, "d"), (HOUR_MS, "h"), (MIN_MS, "m"), (SEC_MS, "s")] {
        if ms != 0 && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    if ms == 0 {
        "0s".to_string()
    } else {
        format!("{ms}ms")
    }
}

/// Accumulates features while walking the TOML.
#[derive(Default)]
struct Builder {
    names: Vec<String>,
    features: Vec<FeatureKind>,
    label_latency_ms: Option<i64>,
    allowed_lateness_ms: Option<i64>,
    too_late: Option<TooLatePolicy>,
}

/// A TOML table being read, with its key path, that remembers which keys were consumed so the
/// rest can be reported as unknown.
struct Tbl<'a> {
    path: String,
    t: &'a toml::Table,
}

impl<'a> Tbl<'a> {
    fn key_path(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn check_keys(&self, allowed: &[&str]) -> Result<(), SpecError> {
        // Sorted so the error is deterministic whatever the map order.
        let mut unknown: Vec<&String> = self
            .t
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        unknown.sort();
        match unknown.first() {
            Some(k) => Err(SpecError::UnknownKey {
                path: self.key_path(k),
            }),
            None => Ok(()),
        }
    }

    fn opt_str(&self, k: &str) -> Result<Option<&'a str>, SpecError> {
        match self.t.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(SpecError::WrongType {
                path: self.key_path(k),
                expected: "a string",
            }),
        }
    }

    fn req_str(&self, k: &str) -> Result<&'a str, SpecError> {
        self.opt_str(k)?.ok_or_else(|| SpecError::MissingKey {
            path: self.key_path(k),
        })
    }

    fn opt_bool(&self, k: &str) -> Result<Option<bool>, SpecError> {
        match self.t.get(k) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(SpecError::WrongType {
                path: self.key_path(k),
                expected: "true or false",
            }),
        }
    }

    /// A non-empty array of strings, returned with each element's key path.
    fn str_list(
        &self,
        k: &str,
        required: bool,
    ) -> Result<Option<Vec<(String, &'a str)>>, SpecError> {
        let path = self.key_path(k);
        let arr = match self.t.get(k) {
            None if required => return Err(SpecError::MissingKey { path }),
            None => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(SpecError::WrongType {
                    path,
                    expected: "an array of strings",
                })
            }
        };
        if arr.is_empty() {
            return Err(SpecError::InvalidValue {
                path,
                value: "[]".into(),
                reason: "must list at least one value".into(),
            });
        }
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                let p = format!("{path}[{i}]");
                match v {
                    Value::String(s) => Ok((p, s.as_str())),
                    _ => Err(SpecError::WrongType {
                        path: p,
                        expected: "a string",
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn tables<'a>(root: &'a toml::Table, key: &str) -> Result<Vec<Tbl<'a>>, SpecError> {
    match root.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Table(t) => Ok(Tbl {
                    path: format!("{key}[{i}]"),
                    t,
                }),
                _ => Err(SpecError::WrongType {
                    path: format!("{key}[{i}]"),
                    expected: "a table",
                }),
            })
            .collect(),
        Some(_) => Err(SpecError::WrongType {
            path: key.to_string(),
            expected: "an array of tables ([[...]])",
        }),
    }
}

fn invalid(path: String, value: &str, reason: impl Into<String>) -> SpecError {
    SpecError::InvalidValue {
        path,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Looks a name up among an enum's variants, listing the accepted names on failure.
fn pick<T: Copy>(
    path: String,
    s: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, SpecError> {
    all.iter().copied().find(|v| name(*v) == s).ok_or_else(|| {
        let accepted: Vec<&str> = all.iter().map(|v| name(*v)).collect();
        invalid(path, s, format!("expected one of: {}", accepted.join(", ")))
    })
}

fn duration(path: String, s: &str, allow_zero: bool) -> Result<i64, SpecError> {
    match parse_duration(s) {
        Some(0) if !allow_zero => Err(invalid(path, s, "must be longer than zero")),
        Some(ms) => Ok(ms),
        None => Err(invalid(
            path,
            s,
            "expected a duration like 30s, 10m, 1h or 7d (at most 1000d)",
        )),
    }
}

fn entity(t: &Tbl) -> Result<Entity, SpecError> {
    pick(
        t.key_path("entity"),
        t.req_str("entity")?,
        &Entity::ALL,
        Entity::as_str,
    )
}

fn durations(t: &Tbl, key: &str, allow_zero: bool) -> Result<Vec<i64>, SpecError> {
    t.str_list(key, true)?
        .unwrap_or_default()
        .into_iter()
        .map(|(p, s)| duration(p, s, allow_zero))
        .collect()
}

impl Builder {
    fn push(&mut self, path: &str, name: String, kind: FeatureKind) -> Result<(), SpecError> {
        if self.names.contains(&name) {
            return Err(SpecError::DuplicateFeature {
                path: path.to_string(),
                name,
            });
        }
        self.names.push(name);
        self.features.push(kind);
        Ok(())
    }

    fn parse_root(&mut self, root: &toml::Table) -> Result<(), SpecError> {
        let top = Tbl {
            path: String::new(),
            t: root,
        };
        top.check_keys(&[
            "label_latency",
            "allowed_lateness",
            "too_late",
            "transaction",
            "window",
            "distinct",
            "previous",
            "risk",
        ])?;
        if let Some(s) = top.opt_str("label_latency")? {
            self.label_latency_ms = Some(duration("label_latency".into(), s, true)?);
        }
        if let Some(s) = top.opt_str("allowed_lateness")? {
            self.allowed_lateness_ms = Some(duration("allowed_lateness".into(), s, true)?);
        }
        if let Some(s) = top.opt_str("too_late")? {
            self.too_late = Some(pick(
                "too_late".into(),
                s,
                &[TooLatePolicy::ScoreOnly, TooLatePolicy::Clamp],
                TooLatePolicy::as_str,
            )?);
        }
        for (p, s) in top.str_list("transaction", false)?.unwrap_or_default() {
            let f = pick(p.clone(), s, &TxFeature::ALL, TxFeature::as_str)?;
            self.push(&p, f.as_str().to_string(), FeatureKind::Transaction(f))?;
        }
        for t in tables(root, "window")? {
            t.check_keys(&["entity", "lengths", "aggregates", "include_current"])?;
            let entity = entity(&t)?;
            let include_current = t.opt_bool("include_current")?.unwrap_or(false);
            let aggs = t
                .str_list("aggregates", true)?
                .unwrap_or_default()
                .into_iter()
                .map(|(p, s)| pick(p, s, &Agg::ALL, Agg::as_str))
                .collect::<Result<Vec<_>, _>>()?;
            for length_ms in durations(&t, "lengths", false)? {
                for &agg in &aggs {
                    let name = format!(
                        "{}_{}_{}{}",
                        entity.as_str(),
                        agg.as_str(),
                        format_duration(length_ms),
                        if include_current { "_incl" } else { "" }
                    );
                    let kind = FeatureKind::Window {
                        entity,
                        length_ms,
                        include_current,
                        agg,
                    };
                    self.push(&t.path, name, kind)?;
                }
            }
        }
        for t in tables(root, "distinct")? {
            t.check_keys(&["entity", "of", "lengths", "outputs", "include_current"])?;
            let entity = entity(&t)?;
            let of = pick(t.key_path("of"), t.req_str("of")?, &Attr::ALL, Attr::as_str)?;
            let include_current = t.opt_bool("include_current")?.unwrap_or(false);
            let outs = match t.str_list("outputs", false)? {
                None => vec![DistinctOut::Count],
                Some(list) => list
                    .into_iter()
                    .map(|(p, s)| pick(p, s, &DistinctOut::ALL, DistinctOut::as_str))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            for length_ms in durations(&t, "lengths", false)? {
                for &out in &outs {
                    let len = format_duration(length_ms);
                    let (e, a) = (entity.as_str(), of.as_str());
                    let name = match out {
                        DistinctOut::Count => format!(
                            "{e}_distinct_{a}_{len}{}",
                            if include_current { "_incl" } else { "" }
                        ),
                        DistinctOut::IsNew => format!("{e}_new_{a}_{len}"),
                    };
                    let kind = FeatureKind::Distinct {
                        entity,
                        of,
                        length_ms,
                        include_current,
                        out,
                    };
                    self.push(&t.path, name, kind)?;
                }
            }
        }
        for t in tables(root, "previous")? {
            t.check_keys(&["entity", "outputs"])?;
            let entity = entity(&t)?;
            for (p, s) in t.str_list("outputs", true)?.unwrap_or_default() {
                let out = pick(p, s, &PrevOut::ALL, PrevOut::as_str)?;
                self.push(
                    &t.path,
                    out.feature_name(entity),
                    FeatureKind::Previous { entity, out },
                )?;
            }
        }
        for t in tables(root, "risk")? {
            t.check_keys(&["entity", "lengths", "delays", "outputs"])?;
            let entity = entity(&t)?;
            let outs = match t.str_list("outputs", false)? {
                None => vec![false, true],
                Some(list) => list
                    .into_iter()
                    .map(|(p, s)| match s {
                        "rate" => Ok(false),
                        "count" => Ok(true),
                        _ => Err(invalid(p, s, "expected one of: rate, count")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let delays = durations(&t, "delays", true)?;
            for length_ms in durations(&t, "lengths", false)? {
                for &delay_ms in &delays {
                    for &count in &outs {
                        let name = format!(
                            "{}_risk{}_{}_delay_{}",
                            entity.as_str(),
                            if count { "_count" } else { "" },
                            format_duration(length_ms),
                            format_duration(delay_ms)
                        );
                        let kind = FeatureKind::Risk {
                            entity,
                            length_ms,
                            delay_ms,
                            count,
                        };
                        self.push(&t.path, name, kind)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self, source: String) -> Result<FeatureSpec, SpecError> {
        if self.features.is_empty() {
            return Err(SpecError::NoFeatures);
        }
        let max_lookback_ms = self
            .features
            .iter()
            .map(FeatureKind::lookback_ms)
            .max()
            .unwrap_or(0);
        let mut spec = FeatureSpec {
            source,
            names: self.names,
            features: self.features,
            label_latency_ms: self.label_latency_ms.unwrap_or(7 * DAY_MS),
            allowed_lateness_ms: self.allowed_lateness_ms.unwrap_or(10 * MIN_MS),
            too_late: self.too_late.unwrap_or(TooLatePolicy::ScoreOnly),
            max_lookback_ms,
            fingerprint: String::new(),
        };
        spec.fingerprint = format!("{:016x}", fnv1a64(spec.canonical().as_bytes()));
        Ok(spec)
    }
}

impl fmt::Display for FeatureSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} features (fingerprint {}, look-back {}, lateness {})",
            self.n_features(),
            self.fingerprint,
            format_duration(self.max_lookback_ms),
            format_duration(self.allowed_lateness_ms)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_canonically() {
        assert_eq!(parse_duration("10m"), Some(600_000));
        assert_eq!(parse_duration("7d"), Some(7 * DAY_MS));
        assert_eq!(parse_duration("1.5h"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("-1h"), None);
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_duration("99999999999999999d"), None);
        assert_eq!(format_duration(parse_duration("60m").unwrap()), "1h");
        assert_eq!(format_duration(parse_duration("90m").unwrap()), "90m");
        assert_eq!(format_duration(parse_duration("48h").unwrap()), "2d");
    }

    const DEFAULT: &str = include_str!("../../../../training/features.toml");

    fn err(toml: &str) -> SpecError {
        FeatureSpec::from_toml_str(toml).unwrap_err()
    }

    #[test]
    fn default_spec_parses() {
        let spec = FeatureSpec::from_toml_str(DEFAULT).unwrap();
        assert!(
            (30..=45).contains(&spec.n_features()),
            "{}",
            spec.n_features()
        );
        let names = spec.feature_names();
        for n in [
            "card_count_1h",
            "card_amount_to_mean_30d",
            "card_distinct_merchant_1d",
            "card_new_merchant_30d",
            "card_kmh_since_prev",
            "merchant_risk_7d_delay_7d",
            "merchant_risk_count_7d_delay_7d",
        ] {
            assert!(names.iter().any(|x| x == n), "missing {n}");
        }
        assert_eq!(spec.max_lookback_ms(), 37 * DAY_MS);
        assert_eq!(spec.label_latency_ms(), 7 * DAY_MS);
        assert_eq!(spec.source(), DEFAULT);
    }

    #[test]
    fn features_beyond_a_short_history_are_those_reaching_further_back() {
        let spec = FeatureSpec::from_toml_str(DEFAULT).unwrap();
        assert!(spec.features_beyond(37 * DAY_MS).is_empty());
        let two_days = spec.features_beyond(2 * DAY_MS);
        for n in [
            "card_amount_to_mean_30d",
            "card_new_merchant_30d",
            "merchant_risk_7d_delay_7d",
            "card_kmh_since_prev",
        ] {
            assert!(
                two_days.contains(&n),
                "{n} reads more than 2 days: {two_days:?}"
            );
        }
        assert!(!two_days.contains(&"card_count_1h"), "{two_days:?}");
        assert!(
            !two_days.contains(&"card_distinct_merchant_1d"),
            "{two_days:?}"
        );
        // Transaction fields read no history.
        let none = spec.features_beyond(0);
        assert!(none.len() < spec.n_features(), "{none:?}");
    }

    /// The specs in `benches/specs/` (BENCHMARKS.md's cost per feature family) parse, and
    /// between them hold exactly the default spec's features but the previous-event ones.
    #[test]
    fn bench_family_specs_cover_the_default_spec() {
        let families = [
            include_str!("../../../../benches/specs/transaction.toml"),
            include_str!("../../../../benches/specs/card_windows.toml"),
            include_str!("../../../../benches/specs/card_distinct.toml"),
            include_str!("../../../../benches/specs/merchant_windows.toml"),
            include_str!("../../../../benches/specs/merchant_risk.toml"),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for family in families {
            let spec = FeatureSpec::from_toml_str(family).unwrap();
            covered.extend(spec.feature_names().iter().cloned());
        }
        let default = FeatureSpec::from_toml_str(DEFAULT).unwrap();
        let expected: std::collections::BTreeSet<String> = default
            .feature_names()
            .iter()
            .filter(|n| !n.ends_with("_prev") && !n.ends_with("_changed"))
            .cloned()
            .collect();
        assert_eq!(covered, expected);
    }

    #[test]
    fn errors_name_the_key_path() {
        let base = "[[window]]\nentity = \"card\"\nlengths = [\"1h\"]\naggregates = [\"count\"]\n";
        let e = err(&format!("{base}lenghts = [\"1h\"]\n"));
        assert!(
            matches!(&e, SpecError::UnknownKey { path } if path == "window[0].lenghts"),
            "{e}"
        );
        let e = err(&format!(
            "{base}[[window]]\nentity = \"card\"\nlengths = [\"2x\"]\naggregates = [\"sum\"]\n"
        ));
        assert!(
            e.to_string().contains("window[1].lengths[0]") && e.to_string().contains("2x"),
            "{e}"
        );
        let e = err(&format!(
            "{base}[[window]]\nentity = \"cards\"\nlengths = [\"1h\"]\naggregates = [\"sum\"]\n"
        ));
        assert!(
            e.to_string().contains("window[1].entity") && e.to_string().contains("cards"),
            "{e}"
        );
        let e = err(&format!(
            "{base}[[risk]]\nentity = \"merchant\"\nlengths = [\"1d\"]\n"
        ));
        assert!(
            matches!(&e, SpecError::MissingKey { path } if path == "risk[0].delays"),
            "{e}"
        );
        let e = err(&format!("bogus = 1\n{base}"));
        assert!(
            matches!(&e, SpecError::UnknownKey { path } if path == "bogus"),
            "{e}"
        );
        let e = err(&format!(
            "{base}[[window]]\nentity = \"card\"\nlengths = [\"60m\"]\naggregates = [\"count\"]\n"
        ));
        assert!(
            matches!(&e, SpecError::DuplicateFeature { name, .. } if name == "card_count_1h"),
            "{e}"
        );
        let e = err("transaction = [\"amount\", 3]");
        assert!(
            matches!(&e, SpecError::WrongType { path, .. } if path == "transaction[1]"),
            "{e}"
        );
        assert!(matches!(
            err("allowed_lateness = \"5m\""),
            SpecError::NoFeatures
        ));
        assert!(matches!(err(""), SpecError::NoFeatures));
        assert!(matches!(err("transaction = ["), SpecError::Toml(_)));
    }

    #[test]
    fn fingerprint_follows_semantics_not_spelling() {
        let a = FeatureSpec::from_toml_str(
            "transaction = [\"amount\"]\n[[window]]\nentity = \"card\"\nlengths = [\"1h\"]\naggregates = [\"count\"]\n",
        )
        .unwrap();
        let b = FeatureSpec::from_toml_str(
            "# comment\n[[window]]\naggregates = [ \"count\" ]\nentity = \"card\"\nlengths = [\"60m\"]\n\ntransaction = [\"amount\"]\n",
        );
        // `transaction` after a table header belongs to the table: that is an error, not a
        // silently different spec.
        assert!(b.is_err());
        let b = FeatureSpec::from_toml_str(
            "transaction = [ \"amount\" ] # c\n\n[[window]]\naggregates = [\"count\"]\nentity = \"card\"\nlengths = [\"60m\"]\n",
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        let c = FeatureSpec::from_toml_str(
            "transaction = [\"amount\"]\n[[window]]\nentity = \"card\"\nlengths = [\"2h\"]\naggregates = [\"count\"]\n",
        )
        .unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        let d = FeatureSpec::from_toml_str(
            "allowed_lateness = \"1m\"\ntransaction = [\"amount\"]\n[[window]]\nentity = \"card\"\nlengths = [\"1h\"]\naggregates = [\"count\"]\n",
        )
        .unwrap();
        assert_ne!(a.fingerprint(), d.fingerprint());
    }
}
