//! Score + thresholds -> decision. The model file carries the thresholds; this is the only place
//! that turns a probability into approve / review / decline.

use serde::{Deserialize, Serialize};

/// What to do with a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Review,
    Decline,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Review => "review",
            Decision::Decline => "decline",
        }
    }
}

/// Decision thresholds on the fraud score: `score >= decline` declines, else `score >= review`
/// reviews, else approves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub review: f32,
    pub decline: f32,
}

/// Thresholds that do not make sense together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("thresholds must satisfy 0 <= review ({review}) <= decline ({decline}) <= 1")]
pub struct ThresholdError {
    pub review: f32,
    pub decline: f32,
}

impl Thresholds {
    pub fn new(review: f32, decline: f32) -> Result<Thresholds, ThresholdError> {
        let t = Thresholds { review, decline };
        t.validate()?;
        Ok(t)
    }

    pub fn validate(&self) -> Result<(), ThresholdError> {
        if (0.0..=1.0).contains(&self.review)
            && (0.0..=1.0).contains(&self.decline)
            && self.review <= self.decline
        {
            Ok(())
        } else {
            Err(ThresholdError {
                review: self.review,
                decline: self.decline,
            })
        }
    }

    /// A score that is not a number (which a correctly wired scorer never produces) is sent to
    /// review rather than silently approved: failing safe means a person looks at it.
    pub fn decide(&self, score: f32) -> Decision {
        if score.is_nan() {
            Decision::Review
        } else if score >= self.decline {
            Decision::Decline
        } else if score >= self.review {
            Decision::Review
        } else {
            Decision::Approve
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_by_threshold() {
        let t = Thresholds::new(0.3, 0.8).unwrap();
        assert_eq!(t.decide(0.1), Decision::Approve);
        assert_eq!(t.decide(0.3), Decision::Review);
        assert_eq!(t.decide(0.95), Decision::Decline);
        assert!(Thresholds::new(0.9, 0.1).is_err());
        assert!(Thresholds::new(f32::NAN, 0.1).is_err());
        assert_eq!(t.decide(f32::NAN), Decision::Review);
    }
}
