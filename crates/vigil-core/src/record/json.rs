//! The JSON record (the Kafka and `vigil score` wire format): [`Transaction::from_json`], with
//! a fast decoder for the plain shape (`fast_json.rs`) and serde_json for everything else, and
//! the hand-written serde decoding of timestamps and labels.

use serde::Deserialize;

use super::{fast_json, RawLabel, RawTimestamp, RecordError, Transaction};

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
}

// Both are deserialized by hand rather than as `#[serde(untagged)]` enums, which buffer every
// value and try each variant in turn: on the Kafka path that was a large share of decoding a
// record (BENCHMARKS.md, "Figures moved from code comments (vigil-core)").

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Channel;

    #[test]
    fn json_record_round_trip() {
        let t = Transaction::from_json(
            br#"{"transaction_id":"a","timestamp":1522540831000,"card_id":"c","merchant_id":"m","amount":3,"channel":"online"}"#,
        )
        .unwrap();
        assert_eq!(t.channel, Some(Channel::Online));
        assert!(Transaction::from_json(b"{not json").is_err());
    }
}
