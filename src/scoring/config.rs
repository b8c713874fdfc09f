//! The `[scoring]` table: how the scoring core is sized.

use serde::{Deserialize, Serialize};

use crate::config::KeyError;

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
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            partitions: 0,
            alert_buffer: DEFAULT_ALERT_BUFFER,
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
        Ok(())
    }
}
