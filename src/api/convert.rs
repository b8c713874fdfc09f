//! The gRPC front end's conversions: requests to domain calls, results to responses, and the
//! deadline a request carries. Transactions and verdicts themselves are converted by
//! [`crate::proto::codec`] (shared with the Kafka path's protobuf input).

use std::time::{Duration, Instant};

use tonic::Status;

use crate::decision::Decision;
use crate::features::EventOutcome;
use crate::model::Model;
use crate::proto as pb;
use crate::proto::codec::{decision_from_pb, transaction, verdict, verdict_owned, FieldError};
use crate::record::Transaction;
use crate::scoring::{Rebuilding, ScoreOptions, Scored, Verdict};

use super::AlertFilter;

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

/// The future-timestamp rule (`[scoring] max_future_skew`) against this server's clock: a
/// transaction dated further ahead is INVALID_ARGUMENT on `transaction.timestamp` (in a batch,
/// that item's error), so one call cannot move its partition's event time ahead.
pub fn timely(core: &crate::scoring::ScoringCore, tx: &Transaction) -> Result<(), FieldError> {
    let now = chrono::Utc::now().timestamp_millis();
    core.check_time(crate::telemetry::ScoringPath::Grpc, tx, now)
        .map_err(|e| FieldError::new(e.field, e.reason).under("transaction"))
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

pub fn placement(outcome: Option<EventOutcome>) -> pb::Placement {
    match outcome {
        None => pb::Placement::NotRecorded,
        Some(EventOutcome::InOrder) => pb::Placement::InOrder,
        Some(EventOutcome::Late) => pb::Placement::Late,
        Some(EventOutcome::TooLate) => pb::Placement::TooLate,
        Some(EventOutcome::Duplicate) => pb::Placement::Duplicate,
    }
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

pub fn batch_item(result: Result<pb::ScoreResponse, ItemFailure>) -> pb::ScoreBatchResult {
    use pb::score_batch_result::Result as R;
    pb::ScoreBatchResult {
        result: Some(match result {
            Ok(r) => R::Scored(r),
            Err(ItemFailure::Invalid(e)) => R::Error(pb::ItemError {
                code: "INVALID_ARGUMENT".to_string(),
                field: e.field,
                message: e.message,
            }),
            Err(ItemFailure::Unavailable(e)) => R::Error(pb::ItemError {
                code: "UNAVAILABLE".to_string(),
                field: String::new(),
                message: e.to_string(),
            }),
        }),
    }
}

/// Why one item of a batch was not scored: the gRPC code its error carries.
#[derive(Debug)]
pub enum ItemFailure {
    /// INVALID_ARGUMENT: the item names the field.
    Invalid(FieldError),
    /// UNAVAILABLE: its card's partition is being rebuilt; retrying the item later succeeds.
    Unavailable(Rebuilding),
}

impl From<FieldError> for ItemFailure {
    fn from(e: FieldError) -> ItemFailure {
        ItemFailure::Invalid(e)
    }
}

impl From<Rebuilding> for Status {
    fn from(e: Rebuilding) -> Status {
        Status::unavailable(e.to_string())
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
