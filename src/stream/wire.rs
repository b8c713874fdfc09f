//! What goes over the wire: decoding input records (transactions, labels) and encoding verdicts
//! and dead letters. Pure functions, no client calls, so the rules are testable on bytes.

use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::record::{parse_timestamp, RawLabel, RawTimestamp, RecordError, Transaction};
use crate::scoring::{ReasonCode, Verdict};

/// Dead-letter headers.
pub const HDR_REASON: &str = "vigil.reason";
pub const HDR_ERROR: &str = "vigil.error";
pub const HDR_TOPIC: &str = "vigil.source.topic";
pub const HDR_PARTITION: &str = "vigil.source.partition";
pub const HDR_OFFSET: &str = "vigil.source.offset";
/// Verdict header: the input record's broker timestamp (epoch ms), for latency measurement.
pub const HDR_SOURCE_TS: &str = "vigil.source.timestamp";

/// Why a record went to the dead-letter topic: the `vigil.reason` header and the `reason` label
/// of `vigil_dead_letters_total` (the `vigil.error` header has the details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Not a record of the transaction shape (JSON or protobuf).
    Decode,
    /// A field breaks a record rule.
    Validation,
    /// The record key is not the card id (state is kept per partition of the card).
    KeyMismatch,
    /// The event time is more than `max_future_skew` after the record's timestamp.
    FutureTimestamp,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Validation => "validation",
            DeadLetterReason::KeyMismatch => "key_mismatch",
            DeadLetterReason::FutureTimestamp => "future_timestamp",
        }
    }
}

/// Why an input record is not a transaction to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: DeadLetterReason,
    pub message: String,
}

/// The encoding of the transactions topic's records (`kafka.input_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// The JSON transaction record (README, "Transaction record").
    #[default]
    Json,
    /// A protobuf `vigil.v1.Transaction` (proto/vigil/v1/scoring.proto), validated like a gRPC
    /// request.
    Protobuf,
}

impl InputFormat {
    pub const NAMES: [&'static str; 2] = ["json", "protobuf"];

    pub fn parse(s: &str) -> Option<InputFormat> {
        match s {
            "json" => Some(InputFormat::Json),
            "protobuf" => Some(InputFormat::Protobuf),
            _ => None,
        }
    }

    /// Encodes `tx` in this format (the replayer, tests).
    pub fn encode(self, tx: &Transaction) -> Vec<u8> {
        match self {
            InputFormat::Json => encode_transaction(tx),
            InputFormat::Protobuf => crate::proto::codec::transaction_to_bytes(tx),
        }
    }
}

/// Decodes one JSON record of the transactions topic; see [`decode_transaction_as`].
pub fn decode_transaction(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Transaction, Rejected> {
    decode_transaction_as(InputFormat::Json, key, payload)
}

/// Decodes one record of the transactions topic. The key, when present, must be the card id:
/// window state lives in the card's partition, so a record keyed otherwise would be scored
/// against the wrong state.
pub fn decode_transaction_as(
    format: InputFormat,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Transaction, Rejected> {
    let Some(payload) = payload.filter(|p| !p.is_empty()) else {
        return Err(Rejected {
            reason: DeadLetterReason::Decode,
            message: "empty record (no payload)".into(),
        });
    };
    let tx = match format {
        InputFormat::Json => {
            Transaction::from_json(payload).map_err(|e: RecordError| Rejected {
                reason: if e.field == "record" {
                    DeadLetterReason::Decode
                } else {
                    DeadLetterReason::Validation
                },
                message: e.to_string(),
            })?
        }
        InputFormat::Protobuf => {
            use crate::proto::codec::{transaction_from_bytes, BytesError};
            transaction_from_bytes(payload).map_err(|e| match e {
                BytesError::Decode(message) => Rejected {
                    reason: DeadLetterReason::Decode,
                    message,
                },
                BytesError::Invalid(e) => Rejected {
                    reason: DeadLetterReason::Validation,
                    message: format!("field `{}`: {}", e.field, e.message),
                },
            })?
        }
    };
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        if key != tx.card_id.as_bytes() {
            return Err(Rejected {
                reason: DeadLetterReason::KeyMismatch,
                message: format!(
                    "record key `{}` is not the card id `{}`: transactions must be keyed by card id",
                    String::from_utf8_lossy(key),
                    tx.card_id
                ),
            });
        }
    }
    Ok(tx)
}

/// A label on the labels topic: `{"transaction_id": "...", "fraud": 1, "known_at": "..."}`
/// (`fraud` as 0/1 or a boolean; `known_at` as RFC 3339 or epoch ms).
pub fn decode_label(payload: &[u8]) -> Result<crate::record::LabelEvent, String> {
    #[derive(Deserialize)]
    struct RawLabelEvent {
        transaction_id: Option<String>,
        fraud: Option<RawLabel>,
        known_at: Option<RawTimestamp>,
    }
    let raw: RawLabelEvent =
        serde_json::from_slice(payload).map_err(|e| format!("not a JSON label: {e}"))?;
    let transaction_id = raw
        .transaction_id
        .filter(|s| !s.trim().is_empty())
        .ok_or("field `transaction_id`: is missing")?;
    // The same bound as a transaction's id: a label for a longer one can match nothing, and
    // labels are held until their `known_at`.
    let max = crate::record::MAX_ID_LEN;
    if transaction_id.len() > max {
        return Err(format!(
            "field `transaction_id`: is {} bytes long, more than {max}",
            transaction_id.len()
        ));
    }
    let fraud = match raw.fraud {
        Some(RawLabel::Bool(b)) => b,
        Some(RawLabel::Int(0)) => false,
        Some(RawLabel::Int(1)) => true,
        Some(RawLabel::Text(t)) if t == "0" || t == "1" => t == "1",
        Some(_) => return Err("field `fraud`: is not 0 or 1".into()),
        None => return Err("field `fraud`: is missing".into()),
    };
    let known_at_ms = match raw.known_at {
        Some(RawTimestamp::Millis(ms)) => ms,
        Some(RawTimestamp::Text(t)) => {
            parse_timestamp("known_at", &t).map_err(|e| e.to_string())?
        }
        None => return Err("field `known_at`: is missing".into()),
    };
    Ok(crate::record::LabelEvent {
        transaction_id,
        fraud,
        known_at_ms,
    })
}

/// Encodes a transaction in the input wire format (what `vigil replay` produces): the record's
/// fields as the README documents them, `timestamp` in epoch ms, without the history's label.
pub fn encode_transaction(tx: &Transaction) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a> {
        transaction_id: &'a str,
        timestamp: i64,
        card_id: &'a str,
        merchant_id: &'a str,
        amount: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        currency: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mcc: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        country: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lat: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lon: Option<f64>,
    }
    let out = Out {
        transaction_id: &tx.transaction_id,
        timestamp: tx.timestamp_ms,
        card_id: &tx.card_id,
        merchant_id: &tx.merchant_id,
        amount: tx.amount,
        currency: tx.currency.as_deref(),
        mcc: tx.mcc,
        country: tx.country.as_deref(),
        channel: tx.channel.map(|c| c.as_str()),
        lat: tx.lat,
        lon: tx.lon,
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Encodes a label for the labels topic.
pub fn encode_label(label: &crate::record::LabelEvent) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "transaction_id": label.transaction_id,
        "fraud": u8::from(label.fraud),
        "known_at": label.known_at_ms,
    }))
    .unwrap_or_default()
}

/// A verdict as published on `alerts` and `verdicts` (JSON, keyed by card id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub transaction_id: String,
    pub card_id: String,
    pub merchant_id: String,
    pub score: f32,
    pub decision: Decision,
    pub reasons: Vec<ReasonCode>,
    pub model_id: String,
    pub model_version: String,
    /// Event time of the transaction, epoch ms.
    pub event_time_ms: i64,
    /// When vigil scored it, epoch ms.
    pub processing_time_ms: i64,
    /// Where the transaction was read from.
    pub partition: i32,
    pub offset: i64,
}

/// Encodes a verdict (without copying it into an owned record first).
pub fn encode_verdict(
    v: &Verdict,
    processing_time_ms: i64,
    partition: i32,
    offset: i64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(320);
    encode_verdict_into(&mut out, v, processing_time_ms, partition, offset);
    out
}

/// [`encode_verdict`], appending to `buf`. Written by hand (the same bytes serde_json gives for
/// the same fields, a unit test checks): a verdict is produced for every record, and the
/// generic serializer cost as much as scoring the features.
pub fn encode_verdict_into(
    buf: &mut Vec<u8>,
    v: &Verdict,
    processing_time_ms: i64,
    partition: i32,
    offset: i64,
) {
    buf.extend_from_slice(b"{\"transaction_id\":");
    json_str(buf, &v.transaction_id);
    buf.extend_from_slice(b",\"card_id\":");
    json_str(buf, &v.card_id);
    buf.extend_from_slice(b",\"merchant_id\":");
    json_str(buf, &v.merchant_id);
    buf.extend_from_slice(b",\"score\":");
    json_f32(buf, v.score);
    buf.extend_from_slice(b",\"decision\":\"");
    buf.extend_from_slice(v.decision.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"reasons\":[");
    for (i, r) in v.reasons.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"feature\":");
        json_str(buf, &r.feature);
        buf.extend_from_slice(b",\"value\":");
        json_f32(buf, r.value);
        buf.extend_from_slice(b",\"contribution\":");
        json_f32(buf, r.contribution);
        buf.push(b'}');
    }
    buf.extend_from_slice(b"],\"model_id\":");
    json_str(buf, &v.model_id);
    buf.extend_from_slice(b",\"model_version\":");
    json_str(buf, &v.model_version);
    let mut int = itoa::Buffer::new();
    for (key, n) in [
        (&b",\"event_time_ms\":"[..], v.event_time_ms),
        (b",\"processing_time_ms\":", processing_time_ms),
        (b",\"partition\":", i64::from(partition)),
        (b",\"offset\":", offset),
    ] {
        buf.extend_from_slice(key);
        buf.extend_from_slice(int.format(n).as_bytes());
    }
    buf.push(b'}');
}

/// A JSON string; plain text (the usual id) is copied as is, anything needing escapes goes
/// through serde_json.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing a string into memory cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// A JSON number as serde_json writes an `f32` (shortest round-trip form; `null` if not finite).
fn json_f32(buf: &mut Vec<u8>, x: f32) {
    // Writing a number into memory cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &x);
}

/// Current wall-clock time, epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: &[u8] = br#"{"transaction_id":"t1","timestamp":"2018-04-01T00:00:31Z","card_id":"c1","merchant_id":"m1","amount":12.5}"#;

    #[test]
    fn transactions_decode_and_bad_ones_say_why() {
        let tx = decode_transaction(Some(b"c1"), Some(TX)).expect("valid");
        assert_eq!(tx.card_id, "c1");
        assert!(
            decode_transaction(None, Some(TX)).is_ok(),
            "an unkeyed record is accepted"
        );

        let e = decode_transaction(Some(b"c2"), Some(TX)).expect_err("wrong key");
        assert_eq!(e.reason, DeadLetterReason::KeyMismatch);
        let e = decode_transaction(None, Some(b"{not json")).expect_err("garbage");
        assert_eq!(e.reason, DeadLetterReason::Decode);
        let e = decode_transaction(None, None).expect_err("empty");
        assert_eq!(e.reason, DeadLetterReason::Decode);
        let neg = br#"{"transaction_id":"t1","timestamp":0,"card_id":"c1","merchant_id":"m1","amount":-3}"#;
        let e = decode_transaction(None, Some(neg)).expect_err("negative");
        assert_eq!(e.reason, DeadLetterReason::Validation);
        assert!(e.message.contains("amount"), "{}", e.message);
    }

    #[test]
    fn encoded_transactions_decode_to_themselves() {
        let mut tx = decode_transaction(None, Some(TX)).expect("valid");
        tx.channel = Some(crate::record::Channel::Online);
        tx.lat = Some(48.5);
        let back = decode_transaction(Some(b"c1"), Some(&encode_transaction(&tx))).expect("valid");
        assert_eq!(back, tx);
        let label = crate::record::LabelEvent {
            transaction_id: "t1".into(),
            fraud: true,
            known_at_ms: 7,
        };
        assert_eq!(decode_label(&encode_label(&label)), Ok(label));
    }

    #[test]
    fn labels_decode() {
        let l =
            decode_label(br#"{"transaction_id":"t1","fraud":1,"known_at":"2018-04-08T00:00:00Z"}"#)
                .expect("valid");
        assert!(l.fraud);
        assert_eq!(l.known_at_ms, 1_523_145_600_000);
        assert!(decode_label(br#"{"transaction_id":"t1","fraud":2,"known_at":0}"#).is_err());
        assert!(decode_label(br#"{"fraud":true,"known_at":0}"#).is_err());
        let long = format!(
            r#"{{"transaction_id":"{}","fraud":1,"known_at":0}}"#,
            "t".repeat(crate::record::MAX_ID_LEN + 1)
        );
        let err = decode_label(long.as_bytes()).expect_err("too long an id");
        assert!(
            err.contains("transaction_id") && err.contains("more than"),
            "{err}"
        );
    }

    #[test]
    fn verdicts_round_trip() {
        let v = Verdict {
            transaction_id: "t1".into(),
            card_id: "c1".into(),
            merchant_id: "m1".into(),
            event_time_ms: 5,
            score: 0.75,
            decision: Decision::Review,
            reasons: vec![ReasonCode {
                feature: "amount".into(),
                value: 12.5,
                contribution: 0.25,
            }],
            model_id: "default".into(),
            model_version: "abc".into(),
        };
        let bytes = encode_verdict(&v, 99, 3, 42);
        let r: VerdictRecord = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(r.decision, Decision::Review);
        assert_eq!((r.partition, r.offset, r.processing_time_ms), (3, 42, 99));
        assert_eq!(r.reasons, v.reasons);
        assert!(String::from_utf8_lossy(&bytes).contains(r#""decision":"review""#));
    }

    /// The hand-written encoder writes exactly what serde_json writes for the same fields.
    #[test]
    fn verdict_encoding_equals_serde_json() {
        #[derive(Serialize)]
        struct Out<'a> {
            transaction_id: &'a str,
            card_id: &'a str,
            merchant_id: &'a str,
            score: f32,
            decision: Decision,
            reasons: &'a [ReasonCode],
            model_id: &'a str,
            model_version: &'a str,
            event_time_ms: i64,
            processing_time_ms: i64,
            partition: i32,
            offset: i64,
        }
        let reason = |f: &str, value: f32, contribution: f32| ReasonCode {
            feature: f.into(),
            value,
            contribution,
        };
        let cases = [
            ("t1", "c1", 0.75, vec![reason("amount", 12.5, 0.25)], -1i64),
            (
                "tx \"quoted\" \\ back\nline\u{1}é€",
                "ça\t",
                f32::NAN,
                vec![
                    reason("a", f32::INFINITY, -0.0),
                    reason("b", 1e-40, 3.4e38),
                    reason("c\"", 0.1, -123_456.79),
                ],
                i64::MIN,
            ),
            ("", "", 0.0, vec![], i64::MAX),
        ];
        for (id, card, score, reasons, time) in cases {
            for decision in [Decision::Approve, Decision::Review, Decision::Decline] {
                let v = Verdict {
                    transaction_id: id.into(),
                    card_id: card.into(),
                    merchant_id: "m/1".into(),
                    event_time_ms: time,
                    score,
                    decision,
                    reasons: reasons.clone(),
                    model_id: "default".into(),
                    model_version: "v\"2".into(),
                };
                let expected = serde_json::to_vec(&Out {
                    transaction_id: &v.transaction_id,
                    card_id: &v.card_id,
                    merchant_id: &v.merchant_id,
                    score: v.score,
                    decision: v.decision,
                    reasons: &v.reasons,
                    model_id: &v.model_id,
                    model_version: &v.model_version,
                    event_time_ms: v.event_time_ms,
                    processing_time_ms: 7,
                    partition: -1,
                    offset: i64::MAX,
                })
                .expect("serializes");
                let got = encode_verdict(&v, 7, -1, i64::MAX);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&expected)
                );
            }
        }
    }

    #[test]
    fn protobuf_records_decode_like_json_ones() {
        let tx = decode_transaction(Some(b"c1"), Some(TX)).expect("valid");
        let mut full = tx.clone();
        full.currency = Some("EUR".into());
        full.mcc = Some(5411);
        full.country = Some("FR".into());
        full.channel = Some(crate::record::Channel::Online);
        full.lat = Some(48.85);
        full.lon = Some(2.35);
        for t in [tx, full] {
            let bytes = InputFormat::Protobuf.encode(&t);
            let back = decode_transaction_as(InputFormat::Protobuf, Some(b"c1"), Some(&bytes))
                .expect("decodes");
            assert_eq!(back, t);
            let json = InputFormat::Json.encode(&t);
            assert_eq!(
                decode_transaction(Some(b"c1"), Some(&json)).expect("json"),
                back
            );
            // The key rule holds for protobuf records too.
            let e = decode_transaction_as(InputFormat::Protobuf, Some(b"other"), Some(&bytes))
                .expect_err("wrong key");
            assert_eq!(e.reason, DeadLetterReason::KeyMismatch);
        }
        let e = decode_transaction_as(InputFormat::Protobuf, None, Some(&[0xff; 4]))
            .expect_err("garbage");
        assert_eq!(e.reason, DeadLetterReason::Decode);
        let mut bad = decode_transaction(None, Some(TX)).expect("valid");
        bad.amount = f64::NAN;
        let e = decode_transaction_as(
            InputFormat::Protobuf,
            None,
            Some(&InputFormat::Protobuf.encode(&bad)),
        )
        .expect_err("NaN amount");
        assert_eq!(e.reason, DeadLetterReason::Validation);
        assert!(e.message.contains("amount"), "{}", e.message);
        // A JSON record on a protobuf topic is a dead letter, not a panic or a bogus score.
        assert!(decode_transaction_as(InputFormat::Protobuf, None, Some(TX)).is_err());
    }
}
