//! [`Scorer`]: one partition's window state, the compiled forest and the model's thresholds; one
//! transaction in, one [`Verdict`] with reason codes out. It does no I/O.

use std::sync::Arc;

use crate::features::{EventOutcome, FeatureEngine, Shard};
use crate::model::Model;
use crate::record::{LabelEvent, Transaction};

use super::verdict::{ReasonCode, Verdict};

/// A model that cannot replace the serving one without rebuilding window state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the new model reads different features (spec fingerprint {offered}) than the serving one \
     ({serving}); window state cannot carry over, so it needs a restart, not a reload"
)]
pub struct SpecMismatch {
    pub serving: String,
    pub offered: String,
}

/// How many reason codes a verdict carries by default.
pub const DEFAULT_REASONS: usize = 3;

/// Scores transactions against one model, keeping the window state the model's spec needs.
///
/// The state is a live [`Shard`]: labels pushed with [`push_label`](Self::push_label) reach the
/// features when the transactions' event time reaches their `known_at`, exactly as the trainer's
/// replay delivers them.
pub struct Scorer {
    model: Arc<Model>,
    /// The model's names as verdicts carry them.
    names: Names,
    state: Shard,
    row: Vec<f32>,
    n_reasons: usize,
}

/// A model's feature names, id and version, shared by every verdict it makes.
struct Names {
    features: Vec<Arc<str>>,
    model_id: Arc<str>,
    model_version: Arc<str>,
}

impl Names {
    fn of(model: &Model) -> Names {
        Names {
            features: model
                .spec
                .feature_names()
                .iter()
                .map(|n| Arc::from(n.as_str()))
                .collect(),
            model_id: Arc::from(model.header.model_id.as_str()),
            model_version: Arc::from(model.header.version.as_str()),
        }
    }
}

impl Scorer {
    pub fn new(model: Arc<Model>) -> Scorer {
        let n = model.spec.n_features();
        Scorer {
            state: Shard::live(model.spec.clone()),
            names: Names::of(&model),
            model,
            row: vec![0.0; n],
            n_reasons: DEFAULT_REASONS,
        }
    }

    /// A scorer whose window state is `state` (restored from a snapshot taken under `model`'s
    /// feature spec).
    pub fn restored(model: Arc<Model>, state: Shard) -> Scorer {
        let mut scorer = Scorer::new(model);
        scorer.state = state;
        scorer
    }

    /// The window state.
    pub fn state(&self) -> &Shard {
        &self.state
    }

    /// Sets how many reason codes each verdict carries.
    pub fn with_reasons(mut self, n: usize) -> Scorer {
        self.n_reasons = n;
        self
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Switches to another model that reads the same features (same spec fingerprint), keeping
    /// the window state: a hot reload. A model with a different spec needs different state and is
    /// refused; the current model stays.
    pub fn set_model(&mut self, model: Arc<Model>) -> Result<(), SpecMismatch> {
        let (have, want) = (
            &self.model.header.feature_fingerprint,
            &model.header.feature_fingerprint,
        );
        if have != want {
            return Err(SpecMismatch {
                serving: have.clone(),
                offered: want.clone(),
            });
        }
        self.names = Names::of(&model);
        self.model = model;
        Ok(())
    }

    pub fn engine(&self) -> &FeatureEngine {
        self.state.engine()
    }

    /// Delivers the labels known by `tx`'s time, scores `tx` and adds it to its card's and
    /// merchant's history (authorization-time scoring).
    pub fn score(&mut self, tx: &Transaction) -> (Verdict, EventOutcome) {
        let outcome = self.state.process(tx, &mut self.row);
        (self.verdict(tx), outcome)
    }

    /// Adds `tx` to the window state without scoring it (rebuilding state from history that was
    /// already scored).
    pub fn warm(&mut self, tx: &Transaction) -> EventOutcome {
        self.state.process(tx, &mut self.row)
    }

    /// Scores `tx` from the current state without changing it (dry run).
    pub fn peek(&mut self, tx: &Transaction) -> Verdict {
        self.state.peek(tx, &mut self.row);
        self.verdict(tx)
    }

    /// Queues a label (chargeback, analyst decision) for the label-delayed risk features; it
    /// counts from the first transaction scored at or after its `known_at`.
    pub fn push_label(&mut self, label: LabelEvent) {
        self.state.push_label(label);
    }

    /// Labels queued and not yet known by the state's event time.
    pub fn pending_labels(&self) -> usize {
        self.state.pending_labels()
    }

    /// The feature row of the last scored transaction, in `model.spec.feature_names()` order.
    pub fn last_features(&self) -> &[f32] {
        &self.row
    }

    fn verdict(&self, tx: &Transaction) -> Verdict {
        let explanation = self.model.compiled.reasons(&self.row, self.n_reasons);
        let names = &self.names.features;
        let reasons = explanation
            .reasons
            .iter()
            .map(|r| ReasonCode {
                feature: Arc::clone(&names[r.feature]),
                value: self.row[r.feature],
                contribution: r.contribution,
            })
            .collect();
        let score = explanation.score;
        Verdict {
            transaction_id: tx.transaction_id.clone(),
            card_id: tx.card_id.clone(),
            merchant_id: tx.merchant_id.clone(),
            event_time_ms: tx.timestamp_ms,
            score,
            decision: self.model.header.thresholds.decide(score),
            reasons,
            model_id: Arc::clone(&self.names.model_id),
            model_version: Arc::clone(&self.names.model_version),
        }
    }
}
