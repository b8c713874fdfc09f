//! The one place that converts between protobuf (`vigil.v1`) and domain types. Requests become
//! [`Transaction`]s through [`RawTransaction::validate`], the same rules the Kafka and CSV paths
//! apply, so a record is accepted or refused identically whichever way it arrives; a refusal
//! names the request field (`transaction.amount`, `transactions[3].card_id`).

use std::time::{Duration, Instant};

use tonic::Status;

use crate::decision::Decision;
use crate::features::EventOutcome;
use crate::model::Model;
use crate::record::{Channel, RawTimestamp, RawTransaction, RecordError, Transaction};
use crate::scorer::{Reason, Verdict};
use crate::service::{ScoreOptions, Scored};

use super::pb;
use super::AlertFilter;

/// A request field that cannot be used, with its path in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    fn under(self, prefix: &str) -> Self {
        FieldError {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

/// The field name a record error is about, as the protobuf request spells it.
fn proto_field(e: &RecordError, time: Option<&pb::transaction::Time>) -> &'static str {
    match (e.field, time) {
        ("timestamp", Some(pb::transaction::Time::Timestamp(_))) => "timestamp",
        ("timestamp", _) => "timestamp_ms",
        (f, _) => f,
    }
}

/// A protobuf transaction, validated into the domain record.
pub fn transaction(t: pb::Transaction) -> Result<Transaction, FieldError> {
    let channel = match pb::Channel::try_from(t.channel) {
        Ok(pb::Channel::Unspecified) => None,
        Ok(pb::Channel::Pos) => Some(Channel::Pos.as_str().to_string()),
        Ok(pb::Channel::Online) => Some(Channel::Online.as_str().to_string()),
        Ok(pb::Channel::Atm) => Some(Channel::Atm.as_str().to_string()),
        Ok(pb::Channel::Moto) => Some(Channel::Moto.as_str().to_string()),
        Err(_) => {
            return Err(FieldError::new(
                "channel",
                format!("{} is not a Channel value (0..4)", t.channel),
            ))
        }
    };
    let mcc =
        match t.mcc {
            None => None,
            Some(m) => Some(u16::try_from(m).map_err(|_| {
                FieldError::new("mcc", format!("{m} is not a merchant category code"))
            })?),
        };
    let time = t.time;
    let raw = RawTransaction {
        transaction_id: Some(t.transaction_id),
        timestamp: time.clone().map(|time| match time {
            pb::transaction::Time::TimestampMs(ms) => RawTimestamp::Millis(ms),
            pb::transaction::Time::Timestamp(s) => RawTimestamp::Text(s),
        }),
        card_id: Some(t.card_id),
        merchant_id: Some(t.merchant_id),
        amount: t.amount,
        label: None,
        label_time: None,
        currency: t.currency,
        mcc,
        country: t.country,
        channel,
        lat: t.lat,
        lon: t.lon,
    };
    raw.validate().map_err(|e| {
        let message = if e.field == "timestamp" && time.is_none() {
            "is missing (set timestamp_ms, epoch milliseconds, or timestamp, RFC 3339)".to_string()
        } else {
            e.reason.clone()
        };
        FieldError::new(proto_field(&e, time.as_ref()), message)
    })
}

/// Why protobuf bytes are not a transaction to score (the Kafka path's protobuf input).
#[derive(Debug, Clone, PartialEq)]
pub enum BytesError {
    /// Not a `vigil.v1.Transaction` message at all.
    Decode(String),
    /// A message whose fields fail validation.
    Invalid(FieldError),
}

/// A `vigil.v1.Transaction` in protobuf bytes (a record of the transactions topic with
/// `kafka.input_format = "protobuf"`), validated like a gRPC request.
pub fn transaction_from_bytes(bytes: &[u8]) -> Result<Transaction, BytesError> {
    use prost::Message as _;
    let t = pb::Transaction::decode(bytes)
        .map_err(|e| BytesError::Decode(format!("not a protobuf vigil.v1.Transaction: {e}")))?;
    transaction(t).map_err(BytesError::Invalid)
}

/// `tx` as protobuf bytes (`vigil replay --format protobuf`).
pub fn transaction_to_bytes(tx: &Transaction) -> Vec<u8> {
    use prost::Message as _;
    transaction_to_pb(tx).encode_to_vec()
}

/// A Score request: the validated transaction and how to score it.
pub fn score_request(req: pb::ScoreRequest) -> Result<(Transaction, ScoreOptions), FieldError> {
    let opts = ScoreOptions {
        dry_run: req.dry_run,
        with_features: req.include_features,
    };
    let t = req
        .transaction
        .ok_or_else(|| FieldError::new("transaction", "is missing"))?;
    let tx = transaction(t).map_err(|e| e.under("transaction"))?;
    Ok((tx, opts))
}

/// A ScoreBatch request: one validation result per item (in order) and the options. The size
/// limit is checked before any item is looked at.
#[allow(clippy::type_complexity)]
pub fn batch_request(
    req: pb::ScoreBatchRequest,
    max_batch: usize,
) -> Result<(Vec<Result<Transaction, FieldError>>, ScoreOptions), FieldError> {
    if req.transactions.len() > max_batch {
        return Err(FieldError::new(
            "transactions",
            format!(
                "{} transactions in one call, more than this server's limit of {max_batch}",
                req.transactions.len()
            ),
        ));
    }
    let opts = ScoreOptions {
        dry_run: req.dry_run,
        with_features: req.include_features,
    };
    let items = req
        .transactions
        .into_iter()
        .enumerate()
        .map(|(i, t)| transaction(t).map_err(|e| e.under(&format!("transactions[{i}]"))))
        .collect();
    Ok((items, opts))
}

pub fn decision(d: Decision) -> pb::Decision {
    match d {
        Decision::Approve => pb::Decision::Approve,
        Decision::Review => pb::Decision::Review,
        Decision::Decline => pb::Decision::Decline,
    }
}

pub fn decision_from_pb(d: i32) -> Option<Decision> {
    match pb::Decision::try_from(d).ok()? {
        pb::Decision::Approve => Some(Decision::Approve),
        pb::Decision::Review => Some(Decision::Review),
        pb::Decision::Decline => Some(Decision::Decline),
        pb::Decision::Unspecified => None,
    }
}

pub fn placement(outcome: Option<EventOutcome>) -> pb::Placement {
    match outcome {
        None => pb::Placement::NotRecorded,
        Some(EventOutcome::InOrder) => pb::Placement::InOrder,
        Some(EventOutcome::Late) => pb::Placement::Late,
        Some(EventOutcome::TooLate) => pb::Placement::TooLate,
        Some(EventOutcome::Duplicate) => pb::Placement::Duplicate,
    }
}

/// A verdict as protobuf (an alert: the broadcast shares it, so it is copied).
pub fn verdict(v: &Verdict) -> pb::Verdict {
    verdict_owned(v.clone())
}

/// A verdict as protobuf, moving its strings (the Score response path).
pub fn verdict_owned(v: Verdict) -> pb::Verdict {
    pb::Verdict {
        transaction_id: v.transaction_id,
        card_id: v.card_id,
        merchant_id: v.merchant_id,
        event_time_ms: v.event_time_ms,
        score: v.score,
        decision: decision(v.decision) as i32,
        reasons: v
            .reasons
            .into_iter()
            .map(|r| pb::Reason {
                feature: r.feature.to_string(),
                value: r.value,
                contribution: r.contribution,
            })
            .collect(),
        model_id: v.model_id.to_string(),
        model_version: v.model_version.to_string(),
    }
}

/// A verdict received from a server, back in domain terms (the CLI and the tests use this).
pub fn verdict_from_pb(v: pb::Verdict) -> Result<Verdict, FieldError> {
    let decision = decision_from_pb(v.decision)
        .ok_or_else(|| FieldError::new("decision", format!("{} is not a decision", v.decision)))?;
    Ok(Verdict {
        transaction_id: v.transaction_id,
        card_id: v.card_id,
        merchant_id: v.merchant_id,
        event_time_ms: v.event_time_ms,
        score: v.score,
        decision,
        reasons: v
            .reasons
            .into_iter()
            .map(|r| Reason {
                feature: r.feature.into(),
                value: r.value,
                contribution: r.contribution,
            })
            .collect(),
        model_id: v.model_id.into(),
        model_version: v.model_version.into(),
    })
}

/// The response to one scored transaction. `feature_names` are the serving model's (any model
/// that can serve this state reads the same features in the same order).
pub fn score_response(s: Scored, feature_names: &[String], partition: u32) -> pb::ScoreResponse {
    pb::ScoreResponse {
        placement: placement(s.outcome) as i32,
        verdict: Some(verdict_owned(s.verdict)),
        features: s
            .features
            .as_deref()
            .map(|row| {
                feature_names
                    .iter()
                    .zip(row)
                    .map(|(name, &value)| pb::FeatureValue {
                        name: name.clone(),
                        value,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        partition,
    }
}

pub fn batch_item(result: Result<pb::ScoreResponse, FieldError>) -> pb::ScoreBatchResult {
    use pb::score_batch_result::Result as R;
    pb::ScoreBatchResult {
        result: Some(match result {
            Ok(r) => R::Scored(r),
            Err(e) => R::Error(pb::ItemError {
                code: "INVALID_ARGUMENT".to_string(),
                field: e.field,
                message: e.message,
            }),
        }),
    }
}

pub fn alert_filter(f: pb::AlertFilter) -> Result<AlertFilter, FieldError> {
    if !(0.0..=1.0).contains(&f.min_score) {
        return Err(FieldError::new(
            "min_score",
            format!("{} is not a score in [0, 1]", f.min_score),
        ));
    }
    let mut filter = AlertFilter {
        review: f.decisions.is_empty(),
        decline: f.decisions.is_empty(),
        min_score: f.min_score,
    };
    for (i, &d) in f.decisions.iter().enumerate() {
        match decision_from_pb(d) {
            Some(Decision::Review) => filter.review = true,
            Some(Decision::Decline) => filter.decline = true,
            Some(Decision::Approve) => {
                return Err(FieldError::new(
                    format!("decisions[{i}]"),
                    "DECISION_APPROVE: approvals are not alerts (REVIEW and DECLINE are)",
                ))
            }
            None => {
                return Err(FieldError::new(
                    format!("decisions[{i}]"),
                    format!("{d} is not REVIEW or DECLINE"),
                ))
            }
        }
    }
    Ok(filter)
}

pub fn alert(v: &Verdict) -> pb::Alert {
    pb::Alert {
        event: Some(pb::alert::Event::Verdict(verdict(v))),
    }
}

pub fn skipped(count: u64) -> pb::Alert {
    pb::Alert {
        event: Some(pb::alert::Event::Skipped(pb::Skipped { count })),
    }
}

pub fn model_info(m: &Model, partitions: u32) -> pb::ModelInfo {
    let h = &m.header;
    let eval = h.evaluation.as_ref();
    pb::ModelInfo {
        model_id: h.model_id.clone(),
        version: h.version.clone(),
        created_at: h.created_at.clone(),
        created_by: h.created_by.clone(),
        feature_fingerprint: h.feature_fingerprint.clone(),
        feature_names: h.feature_names.clone(),
        review_threshold: h.thresholds.review,
        decline_threshold: h.thresholds.decline,
        n_trees: u32::try_from(h.n_trees).unwrap_or(u32::MAX),
        max_depth: u32::try_from(h.max_depth).unwrap_or(u32::MAX),
        n_nodes: h.n_nodes as u64,
        train_from: h.training.train_from.clone(),
        train_to: h.training.train_to.clone(),
        test_auc_roc: eval.and_then(|e| e.auc_roc),
        test_average_precision: eval.and_then(|e| e.average_precision),
        partitions,
    }
}

/// A domain transaction as a protobuf one (clients: the load generator, tests).
pub fn transaction_to_pb(t: &Transaction) -> pb::Transaction {
    pb::Transaction {
        transaction_id: t.transaction_id.clone(),
        time: Some(pb::transaction::Time::TimestampMs(t.timestamp_ms)),
        card_id: t.card_id.clone(),
        merchant_id: t.merchant_id.clone(),
        amount: Some(t.amount),
        currency: t.currency.clone(),
        mcc: t.mcc.map(u32::from),
        country: t.country.clone(),
        channel: channel_to_pb(t.channel) as i32,
        lat: t.lat,
        lon: t.lon,
    }
}

fn channel_to_pb(c: Option<Channel>) -> pb::Channel {
    match c {
        None => pb::Channel::Unspecified,
        Some(Channel::Pos) => pb::Channel::Pos,
        Some(Channel::Online) => pb::Channel::Online,
        Some(Channel::Atm) => pb::Channel::Atm,
        Some(Channel::Moto) => pb::Channel::Moto,
    }
}

/// A record as a client read it (JSON), unvalidated, as a protobuf transaction: `vigil score`
/// leaves the judging to the server. A channel name that is not one of the four is an error
/// here, since the protobuf enum cannot carry it.
pub fn raw_to_pb(r: RawTransaction) -> Result<pb::Transaction, FieldError> {
    let channel = match r.channel.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(Channel::parse(s).ok_or_else(|| {
            FieldError::new(
                "channel",
                format!("`{s}` is not one of pos, online, atm, moto"),
            )
        })?),
    };
    Ok(pb::Transaction {
        transaction_id: r.transaction_id.unwrap_or_default(),
        time: r.timestamp.map(|t| match t {
            RawTimestamp::Millis(ms) => pb::transaction::Time::TimestampMs(ms),
            RawTimestamp::Text(s) => pb::transaction::Time::Timestamp(s),
        }),
        card_id: r.card_id.unwrap_or_default(),
        merchant_id: r.merchant_id.unwrap_or_default(),
        amount: r.amount,
        currency: r.currency,
        mcc: r.mcc.map(u32::from),
        country: r.country,
        channel: channel_to_pb(channel) as i32,
        lat: r.lat,
        lon: r.lon,
    })
}

/// Parses a `grpc-timeout` header value (`<up to 8 digits><H|M|S|m|u|n>`, per the gRPC over
/// HTTP/2 spec).
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The instant a request must be answered by, from its arrival and its `grpc-timeout`.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap, arrival: Instant) -> Option<Instant> {
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)?;
    // A deadline too far away to represent is no deadline.
    arrival.checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::Transaction {
        pb::Transaction {
            transaction_id: "t1".into(),
            time: Some(pb::transaction::Time::TimestampMs(1_600_000_000_000)),
            card_id: "c1".into(),
            merchant_id: "m1".into(),
            amount: Some(12.5),
            currency: Some("EUR".into()),
            mcc: Some(5411),
            country: Some("FR".into()),
            channel: pb::Channel::Online as i32,
            lat: Some(48.8),
            lon: Some(2.3),
        }
    }

    #[test]
    fn round_trips_a_full_transaction() {
        let tx = transaction(valid()).expect("valid");
        assert_eq!(tx.channel, Some(Channel::Online));
        assert_eq!(tx.mcc, Some(5411));
        assert_eq!(transaction(transaction_to_pb(&tx)).unwrap(), tx);
    }

    #[test]
    fn rfc3339_time_is_accepted_and_named_when_wrong() {
        let mut t = valid();
        t.time = Some(pb::transaction::Time::Timestamp(
            "2018-04-01T00:00:31Z".into(),
        ));
        assert_eq!(
            transaction(t.clone()).unwrap().timestamp_ms,
            1_522_540_831_000
        );
        t.time = Some(pb::transaction::Time::Timestamp("yesterday".into()));
        assert_eq!(transaction(t).unwrap_err().field, "timestamp");
    }

    #[test]
    fn out_of_range_enums_and_mcc_name_their_field() {
        let mut t = valid();
        t.channel = 9;
        assert_eq!(transaction(t).unwrap_err().field, "channel");
        let mut t = valid();
        t.mcc = Some(70_000);
        assert_eq!(transaction(t).unwrap_err().field, "mcc");
    }

    #[test]
    fn grpc_timeouts_parse_per_spec() {
        assert_eq!(parse_grpc_timeout("1n"), Some(Duration::from_nanos(1)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999S"),
            Some(Duration::from_secs(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("-5S"), None);
    }

    #[test]
    fn alert_filters_are_checked() {
        let f = alert_filter(pb::AlertFilter {
            decisions: vec![],
            min_score: 0.0,
        })
        .unwrap();
        assert!(f.review && f.decline);
        let e = alert_filter(pb::AlertFilter {
            decisions: vec![pb::Decision::Decline as i32, pb::Decision::Approve as i32],
            min_score: 0.0,
        })
        .unwrap_err();
        assert_eq!(e.field, "decisions[1]");
        let e = alert_filter(pb::AlertFilter {
            decisions: vec![],
            min_score: f32::NAN,
        })
        .unwrap_err();
        assert_eq!(e.field, "min_score");
    }
}
