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

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

mod fast_json;

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

// Both are deserialized by hand rather than as `#[serde(untagged)]` enums, which buffer every
// value and try each variant in turn: on the Kafka path that was a fifth of decoding a record.

impl<'de> Deserialize<'de> for RawTimestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawTimestamp;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("RFC 3339 text or integer epoch milliseconds")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawTimestamp, E> {
                Ok(RawTimestamp::Millis(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawTimestamp, E> {
                i64::try_from(v)
                    .map(RawTimestamp::Millis)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawTimestamp, E> {
                Ok(RawTimestamp::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RawTimestamp, E> {
                Ok(RawTimestamp::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawLabel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawLabel;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("0, 1, true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawLabel, E> {
                Ok(RawLabel::Bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawLabel, E> {
                Ok(RawLabel::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawLabel, E> {
                Ok(RawLabel::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawLabel, E> {
                Ok(RawLabel::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
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
    /// Parses and validates one JSON object (the Kafka and `vigil score` wire format).
    pub fn from_json(bytes: &[u8]) -> Result<Transaction, RecordError> {
        let raw = match fast_json::decode(bytes) {
            Some(raw) => raw,
            None => serde_json::from_slice(bytes)
                .map_err(|e| RecordError::new("record", format!("not a JSON transaction: {e}")))?,
        };
        raw.validate()
    }

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

/// The column names of a history CSV, in the order `vigil generate` writes them.
pub const CSV_COLUMNS: [&str; 13] = [
    "transaction_id",
    "timestamp",
    "card_id",
    "merchant_id",
    "amount",
    "label",
    "label_time",
    "currency",
    "mcc",
    "country",
    "channel",
    "lat",
    "lon",
];

/// A row of a history file that could not be read, with its place.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}:{line}: column `{column}`, value `{value}`: {reason}", path.display())]
pub struct CsvRowError {
    pub path: PathBuf,
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    pub column: String,
    pub value: String,
    pub reason: String,
}

/// Errors reading a history file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    // The I/O error is part of the message rather than a `source`, so it is printed once.
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: header has no `{column}` column (required: transaction_id, timestamp, card_id, merchant_id, amount)", path.display())]
    MissingColumn { path: PathBuf, column: &'static str },
    #[error("{}: malformed CSV: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },
    #[error(transparent)]
    Row(#[from] CsvRowError),
}

/// Options for reading a history file.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Count and report bad rows instead of stopping at the first one.
    pub skip_invalid: bool,
}

/// A history file read into memory.
#[derive(Debug, Default)]
pub struct History {
    /// Valid rows, in file order.
    pub transactions: Vec<Transaction>,
    /// Rows refused (only with `skip_invalid`), in file order.
    pub skipped: Vec<CsvRowError>,
}

impl History {
    /// Sorts by event time; rows with equal timestamps keep their file order, so the replay order
    /// is fully determined by the file.
    pub fn sort_by_time(&mut self) {
        self.transactions.sort_by_key(|t| t.timestamp_ms);
    }
}

/// Column positions found in a header.
struct Columns {
    idx: [Option<usize>; 13],
}

impl Columns {
    fn from_header(path: &Path, header: &csv::StringRecord) -> Result<Columns, HistoryError> {
        let mut idx = [None; 13];
        for (i, name) in header.iter().enumerate() {
            let name = name.trim().trim_start_matches('\u{feff}');
            if let Some(c) = CSV_COLUMNS
                .iter()
                .position(|c| c.eq_ignore_ascii_case(name))
            {
                idx[c].get_or_insert(i);
            }
        }
        for (c, column) in CSV_COLUMNS.iter().enumerate().take(5) {
            if idx[c].is_none() {
                return Err(HistoryError::MissingColumn {
                    path: path.to_path_buf(),
                    column,
                });
            }
        }
        Ok(Columns { idx })
    }

    fn get<'r>(&self, rec: &'r csv::StringRecord, col: usize) -> Option<&'r str> {
        self.idx[col]
            .and_then(|i| rec.get(i))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

fn parse_row(cols: &Columns, rec: &csv::StringRecord) -> Result<Transaction, (usize, RecordError)> {
    fn num<T: std::str::FromStr>(
        col: usize,
        field: &'static str,
        s: Option<&str>,
        what: &str,
    ) -> Result<Option<T>, (usize, RecordError)> {
        s.map(|s| {
            s.parse::<T>()
                .map_err(|_| (col, RecordError::new(field, format!("`{s}` is not {what}"))))
        })
        .transpose()
    }
    let raw = RawTransaction {
        transaction_id: cols.get(rec, 0).map(str::to_string),
        timestamp: cols.get(rec, 1).map(|s| RawTimestamp::Text(s.to_string())),
        card_id: cols.get(rec, 2).map(str::to_string),
        merchant_id: cols.get(rec, 3).map(str::to_string),
        amount: num(4, "amount", cols.get(rec, 4), "a number")?,
        label: cols.get(rec, 5).map(|s| RawLabel::Text(s.to_string())),
        label_time: cols.get(rec, 6).map(|s| RawTimestamp::Text(s.to_string())),
        currency: cols.get(rec, 7).map(str::to_string),
        mcc: num(
            8,
            "mcc",
            cols.get(rec, 8),
            "a merchant category code (0..9999)",
        )?,
        country: cols.get(rec, 9).map(str::to_string),
        channel: cols.get(rec, 10).map(str::to_string),
        lat: num(11, "lat", cols.get(rec, 11), "a latitude")?,
        lon: num(12, "lon", cols.get(rec, 12), "a longitude")?,
    };
    raw.validate().map_err(|e| {
        let col = CSV_COLUMNS.iter().position(|c| *c == e.field).unwrap_or(0);
        (col, e)
    })
}

/// Reads a history CSV (header row with the [`CSV_COLUMNS`] names; unknown columns ignored,
/// optional ones may be absent). `on_progress` is called with the bytes read so far, every few
/// thousand rows, for progress bars.
pub fn read_history_with_progress(
    path: &Path,
    opts: ReadOptions,
    mut on_progress: impl FnMut(u64),
) -> Result<History, HistoryError> {
    let file = std::fs::File::open(path).map_err(|cause| HistoryError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    read_history_from(
        path,
        std::io::BufReader::with_capacity(1 << 20, file),
        opts,
        &mut on_progress,
    )
}

/// Reads a history CSV without progress reporting. See [`read_history_with_progress`].
pub fn read_history(path: &Path, opts: ReadOptions) -> Result<History, HistoryError> {
    read_history_with_progress(path, opts, |_| {})
}

/// Reads history CSV from any reader; `path` is only used in error messages.
pub fn read_history_from<R: Read>(
    path: &Path,
    reader: R,
    opts: ReadOptions,
    on_progress: &mut dyn FnMut(u64),
) -> Result<History, HistoryError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = rdr
        .headers()
        .map_err(|source| HistoryError::Csv {
            path: path.to_path_buf(),
            source,
        })?
        .clone();
    let cols = Columns::from_header(path, &header)?;
    let mut out = History::default();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(source) => {
                // A broken CSV line (bad quoting, invalid UTF-8) is a row error like any other.
                let line = source.position().map(|p| p.line()).unwrap_or(0);
                let err = CsvRowError {
                    path: path.to_path_buf(),
                    line,
                    column: "(row)".into(),
                    value: String::new(),
                    reason: source.to_string(),
                };
                if opts.skip_invalid && matches!(source.kind(), csv::ErrorKind::Utf8 { .. }) {
                    out.skipped.push(err);
                    continue;
                }
                return Err(HistoryError::Csv {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        match parse_row(&cols, &rec) {
            Ok(t) => out.transactions.push(t),
            Err((col, e)) => {
                let value = cols.idx[col]
                    .and_then(|i| rec.get(i))
                    .unwrap_or("")
                    .to_string();
                let err = CsvRowError {
                    path: path.to_path_buf(),
                    line,
                    column: CSV_COLUMNS[col].to_string(),
                    value,
                    reason: e.reason,
                };
                if opts.skip_invalid {
                    out.skipped.push(err);
                } else {
                    return Err(err.into());
                }
            }
        }
        if line.is_multiple_of(8192) {
            on_progress(rec.position().map(|p| p.byte()).unwrap_or(0));
        }
    }
    Ok(out)
}

/// Writes transactions as a history CSV with the [`CSV_COLUMNS`] header.
pub fn write_history_csv<W: std::io::Write>(w: W, txs: &[Transaction]) -> csv::Result<()> {
    let mut wtr = csv::Writer::from_writer(w);
    wtr.write_record(CSV_COLUMNS)?;
    for t in txs {
        wtr.write_record(csv_fields(t))?;
    }
    wtr.flush()?;
    Ok(())
}

/// The 13 CSV fields of a transaction, in [`CSV_COLUMNS`] order.
pub fn csv_fields(t: &Transaction) -> [String; 13] {
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        t.transaction_id.clone(),
        format_timestamp(t.timestamp_ms),
        t.card_id.clone(),
        t.merchant_id.clone(),
        format!("{:.2}", t.amount),
        opt(t.label.map(|l| if l { "1".into() } else { "0".into() })),
        opt(t.label_time_ms.map(format_timestamp)),
        opt(t.currency.clone()),
        opt(t.mcc.map(|m| m.to_string())),
        opt(t.country.clone()),
        opt(t.channel.map(|c| c.as_str().to_string())),
        opt(t.lat.map(|v| format!("{v:.4}"))),
        opt(t.lon.map(|v| format!("{v:.4}"))),
    ]
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

    #[test]
    fn json_record_round_trip() {
        let t = Transaction::from_json(
            br#"{"transaction_id":"a","timestamp":1522540831000,"card_id":"c","merchant_id":"m","amount":3,"channel":"online"}"#,
        )
        .unwrap();
        assert_eq!(t.channel, Some(Channel::Online));
        assert!(Transaction::from_json(b"{not json").is_err());
    }

    #[test]
    fn csv_errors_name_line_column_and_value() {
        let data = "transaction_id,timestamp,card_id,merchant_id,amount,extra\n\
                    t1,2018-04-01T00:00:31Z,c1,m1,10.0,x\n\
                    t2,2018-04-01T00:00:32Z,c1,m1,abc,x\n";
        let err = read_history_from(
            Path::new("h.csv"),
            data.as_bytes(),
            ReadOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("h.csv:3"), "{msg}");
        assert!(msg.contains("`amount`") && msg.contains("`abc`"), "{msg}");
        let h = read_history_from(
            Path::new("h.csv"),
            data.as_bytes(),
            ReadOptions { skip_invalid: true },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(h.transactions.len(), 1);
        assert_eq!(h.skipped.len(), 1);
        assert_eq!(h.skipped[0].line, 3);
    }

    #[test]
    fn missing_required_column_is_named() {
        let data = "transaction_id,timestamp,card_id,amount\n";
        let err = read_history_from(
            Path::new("h.csv"),
            data.as_bytes(),
            ReadOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("merchant_id"));
    }
}
