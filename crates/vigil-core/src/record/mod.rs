//! The transaction record: the one shape every input path (CSV history, Kafka JSON, gRPC) is turned
//! into, and the only place that knows the rules a record must satisfy.
//!
//! A [`Transaction`] is always valid once constructed through [`RawTransaction::validate`]:
//! non-empty ids, a finite non-negative amount, a timestamp inside [`MIN_TIMESTAMP_MS`,
//! `MAX_TIMESTAMP_MS`], coordinates in range. Downstream code (features, model) relies on that and
//! never re-checks.
//!
//! Timestamps are carried as epoch milliseconds (UTC). On input they may be RFC 3339 strings
//! (`2018-04-01T00:00:31Z`, any offset) or integer epoch milliseconds.
//!
//! This file holds the record and its rules; `json.rs` (with `fast_json.rs`) decodes the JSON
//! wire format, `csv.rs` reads and writes history files. Everything is re-exported here.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

mod csv;
mod fast_json;
mod json;

pub use csv::{
    csv_fields, read_history, read_history_from, read_history_with_progress, write_history_csv,
    CsvRowError, History, HistoryError, ReadOptions, CSV_COLUMNS,
};

/// Earliest accepted event time: 1970-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_MS: i64 = 0;
/// Latest accepted event time: 2200-01-01T00:00:00Z. Anything later is a unit mix-up
/// (microseconds or nanoseconds sent as milliseconds), not a real payment.
pub const MAX_TIMESTAMP_MS: i64 = 7_258_118_400_000;
/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A validated payment transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub transaction_id: String,
    /// Event time, epoch milliseconds UTC.
    pub timestamp_ms: i64,
    pub card_id: String,
    pub merchant_id: String,
    /// Amount in the transaction currency's major unit (>= 0, finite).
    pub amount: f64,
    /// Ground truth, history files only: `Some(true)` for fraud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<bool>,
    /// Epoch ms at which the label became known (history files may carry it; otherwise the
    /// feature engine assumes its configured label latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_time_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// ISO 18245 merchant category code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<u16>,
    /// ISO 3166 alpha-2 country of the merchant / acquirer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
}

/// How the card was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Card present, chip or contactless.
    Pos,
    /// Card not present: e-commerce.
    Online,
    /// Cash withdrawal.
    Atm,
    /// Mail / telephone order.
    Moto,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Pos, Channel::Online, Channel::Atm, Channel::Moto];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Pos => "pos",
            Channel::Online => "online",
            Channel::Atm => "atm",
            Channel::Moto => "moto",
        }
    }

    /// Parses the lower-case name (`pos`, `online`, `atm`, `moto`); case-insensitive.
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// A fraud label arriving after the fact (chargeback, analyst decision). Offline it comes from the
/// history file's `label` column; online from the labels topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelEvent {
    pub transaction_id: String,
    pub fraud: bool,
    /// Epoch ms at which the label became known.
    pub known_at_ms: i64,
}

/// A record as it arrives, before validation. Every input format deserializes into this, then
/// calls [`RawTransaction::validate`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawTransaction {
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<RawTimestamp>,
    #[serde(default)]
    pub card_id: Option<String>,
    #[serde(default)]
    pub merchant_id: Option<String>,
    #[serde(default)]
    pub amount: Option<f64>,
    #[serde(default)]
    pub label: Option<RawLabel>,
    #[serde(default)]
    pub label_time: Option<RawTimestamp>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub mcc: Option<u16>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub lat: Option<f64>,
    #[serde(default)]
    pub lon: Option<f64>,
}

/// A timestamp as written: RFC 3339 text or integer epoch milliseconds.
#[derive(Debug, Clone)]
pub enum RawTimestamp {
    Millis(i64),
    Text(String),
}

/// A label as written: 0/1, true/false.
#[derive(Debug, Clone)]
pub enum RawLabel {
    Bool(bool),
    Int(i64),
    Text(String),
}

/// Why a record was refused. `field` is the record's field name, as users write it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct RecordError {
    pub field: &'static str,
    pub reason: String,
}

impl RecordError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        RecordError {
            field,
            reason: reason.into(),
        }
    }
}

/// How far ahead of the time it is received an event may be (`[scoring] max_future_skew`,
/// `vigil train --max-future-skew`): 5 minutes.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 5 * 60_000;

/// The one event-time rule every path applies: a transaction whose time is more than
/// `max_skew_ms` after `received_ms` is invalid (`field timestamp`). `received_ms` is when the
/// transaction entered the system: the record's timestamp on Kafka (so a rebuild decides as the
/// first pass did), the wall clock for a gRPC call, the time of training for a history row.
///
/// Without it one record dated a day ahead moves its partition's watermark a day ahead, and
/// every later transaction of that partition is "too late" for its windows for a day (scored
/// from state, never added to it). `max_skew_ms <= 0` turns the rule off.
pub fn check_not_future(
    tx: &Transaction,
    received_ms: i64,
    max_skew_ms: i64,
) -> Result<(), RecordError> {
    if max_skew_ms <= 0 || tx.timestamp_ms <= received_ms.saturating_add(max_skew_ms) {
        return Ok(());
    }
    let ahead_s = (tx.timestamp_ms - received_ms) / 1000;
    Err(RecordError::new(
        "timestamp",
        format!(
            "{} is {}h{:02}m{:02}s after the time it was received ({}), more than the {} s \
             allowed (max_future_skew): a future event time would freeze its partition's windows",
            format_timestamp(tx.timestamp_ms),
            ahead_s / 3600,
            ahead_s % 3600 / 60,
            ahead_s % 60,
            format_timestamp(received_ms),
            max_skew_ms / 1000
        ),
    ))
}

/// Parses a timestamp given as RFC 3339 text or integer epoch milliseconds (as text).
pub fn parse_timestamp(field: &'static str, s: &str) -> Result<i64, RecordError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(RecordError::new(field, "is empty"));
    }
    let ms = if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        s.parse::<i64>().map_err(|_| {
            RecordError::new(
                field,
                format!("`{s}` is not an integer epoch-millisecond value"),
            )
        })?
    } else {
        DateTime::parse_from_rfc3339(s)
            .map_err(|e| {
                RecordError::new(
                    field,
                    format!("`{s}` is not RFC 3339 (like 2018-04-01T00:00:31Z) nor epoch ms: {e}"),
                )
            })?
            .timestamp_millis()
    };
    check_timestamp_range(field, ms)?;
    Ok(ms)
}

fn check_timestamp_range(field: &'static str, ms: i64) -> Result<i64, RecordError> {
    if !(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        return Err(RecordError::new(
            field,
            format!(
                "{ms} is out of range (epoch ms between {MIN_TIMESTAMP_MS} and {MAX_TIMESTAMP_MS}, \
                 1970..2200); seconds or microseconds instead of milliseconds?"
            ),
        ));
    }
    Ok(ms)
}

/// Formats epoch milliseconds as RFC 3339 UTC (`2018-04-01T00:00:31Z`, milliseconds shown only
/// when non-zero).
pub fn format_timestamp(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) if ms % 1000 == 0 => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

fn required_id(field: &'static str, v: Option<String>) -> Result<String, RecordError> {
    let v = v.ok_or_else(|| RecordError::new(field, "is missing"))?;
    let t = v.trim();
    if t.is_empty() {
        return Err(RecordError::new(field, "is empty"));
    }
    if t.len() > MAX_ID_LEN {
        return Err(RecordError::new(
            field,
            format!("is {} bytes long, more than {MAX_ID_LEN}", t.len()),
        ));
    }
    Ok(if t.len() == v.len() { v } else { t.to_string() })
}

fn optional_text(v: Option<String>) -> Option<String> {
    // Kept as is when there is nothing to trim (the usual case): no second allocation.
    v.map(|s| {
        if s.trim().len() == s.len() {
            s
        } else {
            s.trim().to_string()
        }
    })
    .filter(|s| !s.is_empty())
}

impl RawTransaction {
    /// Checks every rule and returns the validated record, or the first field that breaks one.
    pub fn validate(self) -> Result<Transaction, RecordError> {
        let transaction_id = required_id("transaction_id", self.transaction_id)?;
        let timestamp_ms = match self.timestamp {
            None => return Err(RecordError::new("timestamp", "is missing")),
            Some(RawTimestamp::Millis(ms)) => check_timestamp_range("timestamp", ms)?,
            Some(RawTimestamp::Text(s)) => parse_timestamp("timestamp", &s)?,
        };
        let card_id = required_id("card_id", self.card_id)?;
        let merchant_id = required_id("merchant_id", self.merchant_id)?;
        let amount = self
            .amount
            .ok_or_else(|| RecordError::new("amount", "is missing"))?;
        if !amount.is_finite() {
            return Err(RecordError::new(
                "amount",
                format!("{amount} is not a finite number"),
            ));
        }
        if amount < 0.0 {
            return Err(RecordError::new(
                "amount",
                format!("{amount} is negative; refunds are not transactions to score"),
            ));
        }
        let label = match self.label {
            None => None,
            Some(RawLabel::Bool(b)) => Some(b),
            Some(RawLabel::Int(0)) => Some(false),
            Some(RawLabel::Int(1)) => Some(true),
            Some(RawLabel::Int(i)) => {
                return Err(RecordError::new("label", format!("{i} is not 0 or 1")))
            }
            Some(RawLabel::Text(s)) => match s.trim() {
                "" => None,
                "0" | "false" | "FALSE" | "False" => Some(false),
                "1" | "true" | "TRUE" | "True" => Some(true),
                other => {
                    return Err(RecordError::new(
                        "label",
                        format!("`{other}` is not 0 or 1"),
                    ))
                }
            },
        };
        let label_time_ms = match self.label_time {
            None => None,
            Some(RawTimestamp::Millis(ms)) => Some(check_timestamp_range("label_time", ms)?),
            Some(RawTimestamp::Text(s)) if s.trim().is_empty() => None,
            Some(RawTimestamp::Text(s)) => Some(parse_timestamp("label_time", &s)?),
        };
        let channel = match optional_text(self.channel) {
            None => None,
            Some(s) => Some(Channel::parse(&s).ok_or_else(|| {
                RecordError::new(
                    "channel",
                    format!("`{s}` is not one of pos, online, atm, moto"),
                )
            })?),
        };
        let lat = check_coord("lat", self.lat, 90.0)?;
        let lon = check_coord("lon", self.lon, 180.0)?;
        Ok(Transaction {
            transaction_id,
            timestamp_ms,
            card_id,
            merchant_id,
            amount,
            label,
            label_time_ms,
            currency: optional_text(self.currency),
            mcc: self.mcc,
            country: optional_text(self.country),
            channel,
            lat,
            lon,
        })
    }
}

fn check_coord(
    field: &'static str,
    v: Option<f64>,
    limit: f64,
) -> Result<Option<f64>, RecordError> {
    match v {
        Some(x) if !x.is_finite() || x.abs() > limit => Err(RecordError::new(
            field,
            format!("{x} is outside [-{limit}, {limit}]"),
        )),
        other => Ok(other),
    }
}

impl Transaction {
    /// The label event this history row implies, if it carries a label. Without an explicit
    /// `label_time` the label is taken as known `default_latency_ms` after the transaction.
    pub fn label_event(&self, default_latency_ms: i64) -> Option<LabelEvent> {
        self.label.map(|fraud| LabelEvent {
            transaction_id: self.transaction_id.clone(),
            fraud,
            known_at_ms: self
                .label_time_ms
                .unwrap_or(self.timestamp_ms.saturating_add(default_latency_ms)),
        })
    }
}

impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} card {} merchant {} amount {:.2}",
            self.transaction_id,
            format_timestamp(self.timestamp_ms),
            self.card_id,
            self.merchant_id,
            self.amount
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn future_timestamps_beyond_the_skew_are_refused() {
        let mut t = raw().validate().expect("valid");
        let received = t.timestamp_ms;
        assert!(check_not_future(&t, received, 300_000).is_ok());
        t.timestamp_ms = received + 300_000;
        assert!(
            check_not_future(&t, received, 300_000).is_ok(),
            "exactly the skew is fine"
        );
        t.timestamp_ms = received + 300_001;
        let e = check_not_future(&t, received, 300_000).expect_err("beyond");
        assert_eq!(e.field, "timestamp");
        assert!(e.reason.contains("max_future_skew"), "{e}");
        t.timestamp_ms = received + 86_400_000;
        let e = check_not_future(&t, received, 300_000).expect_err("a day ahead");
        assert!(e.reason.contains("24h00m00s"), "{e}");
        assert!(
            check_not_future(&t, received, 0).is_ok(),
            "0 turns the rule off"
        );
        t.timestamp_ms = received - 86_400_000;
        assert!(
            check_not_future(&t, received, 300_000).is_ok(),
            "the past is not refused"
        );
    }

    use super::*;

    fn raw() -> RawTransaction {
        RawTransaction {
            transaction_id: Some("t1".into()),
            timestamp: Some(RawTimestamp::Text("2018-04-01T00:00:31Z".into())),
            card_id: Some("c1".into()),
            merchant_id: Some("m1".into()),
            amount: Some(12.5),
            ..Default::default()
        }
    }

    #[test]
    fn parses_both_timestamp_forms() {
        assert_eq!(
            parse_timestamp("timestamp", "2018-04-01T00:00:31Z").unwrap(),
            1_522_540_831_000
        );
        assert_eq!(
            parse_timestamp("timestamp", "1522540831000").unwrap(),
            1_522_540_831_000
        );
        assert_eq!(format_timestamp(1_522_540_831_000), "2018-04-01T00:00:31Z");
    }

    #[test]
    fn refuses_bad_fields_by_name() {
        let mut r = raw();
        r.amount = Some(-1.0);
        assert_eq!(r.validate().unwrap_err().field, "amount");
        let mut r = raw();
        r.amount = Some(f64::NAN);
        assert_eq!(r.validate().unwrap_err().field, "amount");
        let mut r = raw();
        r.card_id = Some("  ".into());
        assert_eq!(r.validate().unwrap_err().field, "card_id");
        let mut r = raw();
        r.timestamp = Some(RawTimestamp::Millis(1_522_540_831_000_000));
        assert_eq!(r.validate().unwrap_err().field, "timestamp");
        let mut r = raw();
        r.channel = Some("carrier-pigeon".into());
        assert_eq!(r.validate().unwrap_err().field, "channel");
        assert!(raw().validate().is_ok());
    }
}
