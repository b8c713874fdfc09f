//! The `[scoring]` table: how the scoring core is sized.

use serde::{Deserialize, Serialize};

use crate::config::{check_duration, duration, KeyError};

use super::DEFAULT_ALERT_BUFFER;

/// The scoring core's configuration (`[scoring]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Partitions of window state when no Kafka topic sizes them (`kafka.enabled = false`);
    /// 0 = as many as the model was trained with (`vigil train --partitions`). With Kafka the
    /// state always has the transactions topic's partition count.
    pub partitions: u32,
    /// Alerts buffered per alert subscriber (gRPC `StreamAlerts`) before a slow one starts
    /// losing the oldest (it is told how many).
    pub alert_buffer: usize,
    /// Transactions dated more than this after they are received (the Kafka record's
    /// timestamp, the wall clock for gRPC) are refused: dead letter `future_timestamp`,
    /// INVALID_ARGUMENT. "0s" turns the rule off.
    pub max_future_skew: String,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            partitions: 0,
            alert_buffer: DEFAULT_ALERT_BUFFER,
            max_future_skew: "5m".into(),
        }
    }
}

impl ScoringConfig {
    /// Keys are relative to `[scoring]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.partitions > 4096 {
            return Err(KeyError::new(
                "partitions",
                format!("{} is more than 4096", self.partitions),
            ));
        }
        if self.alert_buffer == 0 || self.alert_buffer > 1 << 20 {
            return Err(KeyError::new(
                "alert_buffer",
                format!("{} is out of range (1..=1048576)", self.alert_buffer),
            ));
        }
        check_duration("max_future_skew", &self.max_future_skew, true)?;
        Ok(())
    }

    /// The future-timestamp bound, ms (0: off).
    pub fn max_future_skew_ms(&self) -> i64 {
        i64::try_from(duration(&self.max_future_skew).as_millis()).unwrap_or(i64::MAX)
    }
}
