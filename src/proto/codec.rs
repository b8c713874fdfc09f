//! The one place that converts between protobuf (`vigil.v1`, generated in [`super`]) and the
//! domain types: transactions (gRPC requests, the Kafka path's protobuf input, clients) and
//! verdicts. Protobuf transactions become [`Transaction`]s through [`RawTransaction::validate`],
//! the same rules the JSON and CSV paths apply, so a record is accepted or refused identically
//! whichever way it arrives; a refusal names the protobuf field (`amount`, `timestamp_ms`), and
//! callers prefix the path in their message (`transaction.amount`, `transactions[3].card_id`).

use prost::Message as _;

use crate::decision::Decision;
use crate::record::{Channel, RawTimestamp, RawTransaction, RecordError, Transaction};
use crate::scoring::{ReasonCode, Verdict};

use crate::proto as pb;

/// A request field that cannot be used, with its path in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn under(self, prefix: &str) -> Self {
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
    let t = pb::Transaction::decode(bytes)
        .map_err(|e| BytesError::Decode(format!("not a protobuf vigil.v1.Transaction: {e}")))?;
    transaction(t).map_err(BytesError::Invalid)
}

/// `tx` as protobuf bytes (`vigil replay --format protobuf`).
pub fn transaction_to_bytes(tx: &Transaction) -> Vec<u8> {
    transaction_to_pb(tx).encode_to_vec()
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
            .map(|r| ReasonCode {
                feature: r.feature.into(),
                value: r.value,
                contribution: r.contribution,
            })
            .collect(),
        model_id: v.model_id.into(),
        model_version: v.model_version.into(),
    })
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
}
