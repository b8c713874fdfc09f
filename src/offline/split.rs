//! The time-based split of a history into warm-up, training and test periods.

use chrono::NaiveDate;

use crate::record::{format_timestamp, parse_timestamp};

use super::OfflineError;

/// A half-open event-time interval [from, to) in epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Period {
    pub fn contains(&self, t: i64) -> bool {
        self.from_ms <= t && t < self.to_ms
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}, {})",
            format_timestamp(self.from_ms),
            format_timestamp(self.to_ms)
        )
    }
}

/// Parses an instant for the command line: `YYYY-MM-DD` (midnight UTC), RFC 3339, or epoch ms.
pub fn parse_instant(s: &str) -> Result<i64, String> {
    if let Ok(d) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    parse_timestamp("date", s).map_err(|e| e.reason)
}

/// How to cut history into warm-up, training and test periods.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitSpec {
    /// Explicit dates. Rows before `train.from` are warm-up; rows between the periods only feed
    /// window state.
    Dates { train: Period, test: Option<Period> },
    /// By fractions of the history's time span: the first `warmup_ms` are warm-up only; of the
    /// rest, the first `train_frac` is training, then a gap of `gap_ms` (label delay), then test.
    Fractions {
        warmup_ms: i64,
        train_frac: f64,
        gap_ms: i64,
    },
}

/// The resolved periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub train: Period,
    pub test: Option<Period>,
}

impl SplitSpec {
    /// Resolves against the history's first and last event times.
    pub fn resolve(&self, first_ms: i64, last_ms: i64) -> Result<Split, OfflineError> {
        let bad = |m: String| Err(OfflineError::Split(m));
        match *self {
            SplitSpec::Dates { train, test } => {
                if train.from_ms >= train.to_ms {
                    return bad(format!("training period {train} is empty"));
                }
                if let Some(t) = test {
                    if t.from_ms >= t.to_ms {
                        return bad(format!("test period {t} is empty"));
                    }
                    if t.from_ms < train.to_ms {
                        return bad(format!(
                            "test period {t} starts before the training period {train} ends: a time-based split must not overlap"
                        ));
                    }
                }
                Ok(Split { train, test })
            }
            SplitSpec::Fractions {
                warmup_ms,
                train_frac,
                gap_ms,
            } => {
                if !(train_frac > 0.0 && train_frac <= 1.0) {
                    return bad(format!("--train-frac {train_frac} must be in (0, 1]"));
                }
                let start = first_ms.saturating_add(warmup_ms.max(0));
                let end = last_ms + 1;
                if start >= end {
                    return bad(format!(
                        "the warm-up of {} h covers the whole history ({} to {})",
                        warmup_ms / 3_600_000,
                        format_timestamp(first_ms),
                        format_timestamp(last_ms)
                    ));
                }
                // Cut at UTC midnights when the history is long enough, so periods read as
                // dates and a day is never split between training and test.
                const DAY: i64 = 86_400_000;
                let long = end - start >= 3 * DAY;
                let start = if long && start.rem_euclid(DAY) != 0 {
                    start - start.rem_euclid(DAY) + DAY
                } else {
                    start
                };
                let span = (end - start) as f64;
                let mut train_to = start + (span * train_frac) as i64;
                if long && train_frac < 1.0 && train_to - train_to.rem_euclid(DAY) > start {
                    train_to -= train_to.rem_euclid(DAY);
                }
                let train = Period {
                    from_ms: start,
                    to_ms: train_to,
                };
                let test = if train_frac >= 1.0 {
                    None
                } else {
                    let from = train_to.saturating_add(gap_ms.max(0));
                    if from >= end {
                        return bad(format!(
                            "the gap leaves no test period (training ends {}, history ends {})",
                            format_timestamp(train_to),
                            format_timestamp(last_ms)
                        ));
                    }
                    Some(Period {
                        from_ms: from,
                        to_ms: end,
                    })
                };
                Ok(Split { train, test })
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_split_is_time_ordered_with_gap() {
        let day = 86_400_000;
        let s = SplitSpec::Fractions {
            warmup_ms: 10 * day,
            train_frac: 0.5,
            gap_ms: 2 * day,
        }
        .resolve(0, 50 * day - 1)
        .unwrap();
        assert_eq!(s.train.from_ms, 10 * day);
        assert_eq!(s.train.to_ms, 30 * day);
        let t = s.test.unwrap();
        assert_eq!(t.from_ms, 32 * day);
        assert_eq!(t.to_ms, 50 * day);
    }

    #[test]
    fn overlapping_dates_are_refused() {
        let p = |a, b| Period {
            from_ms: a,
            to_ms: b,
        };
        let err = SplitSpec::Dates {
            train: p(0, 10),
            test: Some(p(5, 20)),
        }
        .resolve(0, 20)
        .unwrap_err();
        assert!(err.to_string().contains("overlap"));
    }

    #[test]
    fn instants_parse_dates_and_rfc3339() {
        assert_eq!(parse_instant("2018-04-01").unwrap(), 1_522_540_800_000);
        assert_eq!(
            parse_instant("2018-04-01T00:00:31Z").unwrap(),
            1_522_540_831_000
        );
        assert!(parse_instant("April").is_err());
    }
}
