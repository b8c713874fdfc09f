//! What scoring one transaction produces, and the one rule for which verdicts are alerts.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::features::EventOutcome;

/// One reason code: a feature that pushed the score up, with its value for this transaction and
/// its contribution to the score (in probability points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasonCode {
    /// Shared with the model's feature list (a verdict per transaction copies no names).
    pub feature: Arc<str>,
    pub value: f32,
    pub contribution: f32,
}

/// The outcome of scoring one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub transaction_id: String,
    pub card_id: String,
    pub merchant_id: String,
    /// Event time of the transaction, epoch ms.
    pub event_time_ms: i64,
    /// Fraud probability in [0, 1].
    pub score: f32,
    pub decision: Decision,
    /// Features that pushed the score up most, largest first.
    pub reasons: Vec<ReasonCode>,
    pub model_id: Arc<str>,
    pub model_version: Arc<str>,
}

/// A verdict and how the feature engine placed its transaction.
#[derive(Debug, Clone)]
pub struct Scored {
    pub verdict: Verdict,
    /// How the engine placed the transaction; `None` for a dry run (state untouched).
    pub outcome: Option<EventOutcome>,
    /// The feature row the model scored, in `model.spec.feature_names()` order, when asked for.
    pub features: Option<Vec<f32>>,
}

impl Scored {
    /// Whether this verdict is an alert: see [`is_alert`].
    pub fn is_alert(&self) -> bool {
        is_alert(self.verdict.decision, self.outcome)
    }
}

/// The one rule for which verdicts are alerts, on every path (the `alerts` topic, the
/// `StreamAlerts` fan-out): a non-approve decision on a transaction that joined the state. A
/// dry run (`outcome` `None`) changed nothing and raises nothing; a duplicate (a transaction id
/// the state already holds: a retried gRPC call, or a transaction scored over gRPC and later
/// read from Kafka) raised its alert with the original, so it raises none again. Every verdict,
/// alert or not, still goes to the `verdicts` topic and back to a gRPC caller.
pub fn is_alert(decision: Decision, outcome: Option<EventOutcome>) -> bool {
    decision != Decision::Approve && matches!(outcome, Some(o) if o != EventOutcome::Duplicate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_non_approve_verdicts_that_joined_the_state() {
        use Decision::*;
        use EventOutcome::*;
        assert!(is_alert(Decline, Some(InOrder)));
        assert!(is_alert(Review, Some(Late)));
        assert!(is_alert(Review, Some(TooLate)));
        assert!(!is_alert(Approve, Some(InOrder)));
        assert!(
            !is_alert(Decline, Some(Duplicate)),
            "its alert went out with the original"
        );
        assert!(!is_alert(Decline, None), "a dry run raises nothing");
    }
}
