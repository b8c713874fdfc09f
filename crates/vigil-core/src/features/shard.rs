//! One partition's feature state: the rule "deliver the labels known by this transaction's time,
//! then process it" written once, for the trainer's replay and the live scorer alike.

use std::sync::Arc;

use super::engine::{EngineStats, EventOutcome, FeatureEngine};
use super::labels::LabelSchedule;
use super::snapshot::{Bad, Reader, Writer};
use super::spec::FeatureSpec;
use crate::record::{LabelEvent, Transaction};

/// One partition's feature state: the engine and the labels waiting to become known.
///
/// A label reaches the engine right before the first transaction processed at or after its
/// `known_at` (see [`LabelSchedule`]), never earlier, so a transaction's features only count the
/// labels known by its time. Offline and online state therefore see labels at the same points:
/// offline each replayed transaction queues its own label ([`Shard::replaying`]), online they
/// come from the labels feed ([`Shard::live`], [`Shard::push_label`]).
#[derive(Debug)]
pub struct Shard {
    engine: FeatureEngine,
    labels: LabelSchedule,
    /// Whether each processed transaction's own label is queued (replaying labelled history).
    replaying: bool,
}

impl Shard {
    /// Live state: labels arrive only through [`push_label`](Self::push_label) (the labels
    /// feed).
    pub fn live(spec: Arc<FeatureSpec>) -> Shard {
        Shard::new(spec, false)
    }

    /// Replaying a labelled history: each processed transaction's own label
    /// (`Transaction::label_event(spec.label_latency_ms())`) is queued right after it.
    pub fn replaying(spec: Arc<FeatureSpec>) -> Shard {
        Shard::new(spec, true)
    }

    fn new(spec: Arc<FeatureSpec>, replaying: bool) -> Shard {
        Shard {
            labels: LabelSchedule::new(spec.label_latency_ms()),
            engine: FeatureEngine::new(spec),
            replaying,
        }
    }

    /// Delivers the labels known by `tx.timestamp_ms`, processes `tx` into `row` (see
    /// [`FeatureEngine::process`]), then, when replaying, queues its own label.
    ///
    /// # Panics
    /// If `row.len()` is not the spec's feature count (a programming error, not an input one).
    #[inline]
    pub fn process(&mut self, tx: &Transaction, row: &mut [f32]) -> EventOutcome {
        for label in self.labels.due(tx.timestamp_ms) {
            self.engine.observe_label(&label);
        }
        let outcome = self.engine.process(tx, row);
        if self.replaying {
            self.labels.push(tx);
        }
        outcome
    }

    /// [`process`](Self::process) over a slice, through [`FeatureEngine::process_batch`]
    /// (which prefetches the state of the transactions ahead): `rows` receives one row of
    /// [`FeatureSpec::n_features`] values per transaction, `outcomes` one outcome each, and the
    /// results are identical to calling `process` in a loop.
    ///
    /// # Panics
    /// If `rows.len() != txs.len() * n_features` or `outcomes.len() != txs.len()`.
    pub fn process_batch(
        &mut self,
        txs: &[Transaction],
        rows: &mut [f32],
        outcomes: &mut [EventOutcome],
    ) {
        let Shard {
            engine,
            labels,
            replaying,
        } = self;
        engine.process_batch(txs, rows, outcomes, |engine, i| {
            // Exactly the one-at-a-time loop: the previous transaction's label is queued after
            // it was processed, then the labels known by this one's time are delivered.
            if *replaying && i > 0 {
                labels.push(&txs[i - 1]);
            }
            for label in labels.due(txs[i].timestamp_ms) {
                engine.observe_label(&label);
            }
        });
        if *replaying {
            if let Some(last) = txs.last() {
                labels.push(last);
            }
        }
    }

    /// Features of `tx` from the current state, changing nothing (no label delivery either):
    /// dry-run scoring.
    ///
    /// # Panics
    /// If `row.len()` is not the spec's feature count.
    pub fn peek(&self, tx: &Transaction, row: &mut [f32]) {
        self.engine.peek(tx, row);
    }

    /// Queues a label that arrived on its own (the live labels feed); it reaches the engine
    /// with the first transaction processed at or after its `known_at`.
    pub fn push_label(&mut self, label: LabelEvent) {
        self.labels.push_label(label);
    }

    /// Number of labels queued and not yet delivered.
    pub fn pending_labels(&self) -> usize {
        self.labels.len()
    }

    /// Delivers every pending label (the end of a replay) and returns the engine's stats.
    pub fn finish(&mut self) -> EngineStats {
        for label in self.labels.drain_all() {
            self.engine.observe_label(&label);
        }
        self.engine.stats()
    }

    /// The feature engine (watermark, stats, spec).
    pub fn engine(&self) -> &FeatureEngine {
        &self.engine
    }

    /// The whole state as a snapshot body (see [`super::snapshot`]).
    pub(super) fn encode_body(&self, w: &mut Writer) {
        w.u8(u8::from(self.replaying));
        self.engine.encode(w);
        self.labels.encode(w);
    }

    /// The state [`encode_body`](Self::encode_body) wrote, under `spec`.
    pub(super) fn decode_body(spec: Arc<FeatureSpec>, r: &mut Reader<'_>) -> Result<Shard, Bad> {
        let replaying = r.u8()? != 0;
        let engine = FeatureEngine::decode(Arc::clone(&spec), r)?;
        let labels = LabelSchedule::decode(r)?;
        Ok(Shard {
            engine,
            labels,
            replaying,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
label_latency = "1h"
transaction = ["amount"]
[[risk]]
entity = "merchant"
lengths = ["1d"]
delays = ["30m"]
outputs = ["rate", "count"]
"#;

    fn tx(i: i64, label: Option<bool>) -> Transaction {
        Transaction {
            transaction_id: format!("t{i}"),
            timestamp_ms: i * 20 * 60_000,
            card_id: format!("c{}", i % 3),
            merchant_id: "m".to_string(),
            amount: 10.0 + i as f64,
            label,
            label_time_ms: None,
            currency: None,
            mcc: None,
            country: None,
            channel: None,
            lat: None,
            lon: None,
        }
    }

    /// The batch path gives exactly the rows, outcomes and stats of the one-at-a-time path,
    /// across batch boundaries, with labels delivered mid-batch.
    #[test]
    fn batch_equals_one_at_a_time() {
        let spec = Arc::new(FeatureSpec::from_toml_str(SPEC).expect("spec"));
        let nf = spec.n_features();
        let txs: Vec<Transaction> = (0..40).map(|i| tx(i, Some(i % 4 == 0))).collect();
        let mut one = Shard::replaying(Arc::clone(&spec));
        let mut want = Vec::new();
        let mut row = vec![0.0; nf];
        for t in &txs {
            let o = one.process(t, &mut row);
            want.push((row.clone(), o));
        }
        let mut batch = Shard::replaying(Arc::clone(&spec));
        let mut got = Vec::new();
        for chunk in txs.chunks(7) {
            let mut rows = vec![0.0; chunk.len() * nf];
            let mut outcomes = vec![EventOutcome::InOrder; chunk.len()];
            batch.process_batch(chunk, &mut rows, &mut outcomes);
            for (r, o) in rows.chunks(nf).zip(outcomes) {
                got.push((r.to_vec(), o));
            }
        }
        assert_eq!(got, want);
        assert!(one.engine().stats().labels_applied > 0);
        assert_eq!(batch.pending_labels(), one.pending_labels());
        assert_eq!(batch.finish(), one.finish());
    }

    /// Live state queues no label of its own; pushed labels wait for their `known_at`.
    #[test]
    fn live_state_only_takes_pushed_labels_when_due() {
        let spec = Arc::new(FeatureSpec::from_toml_str(SPEC).expect("spec"));
        let mut shard = Shard::live(Arc::clone(&spec));
        let mut row = vec![0.0; spec.n_features()];
        shard.process(&tx(0, Some(true)), &mut row);
        assert_eq!(shard.pending_labels(), 0);
        let label = tx(0, Some(true))
            .label_event(spec.label_latency_ms())
            .expect("labelled");
        shard.push_label(label);
        // Known 1 h after t0: not yet at 20 and 40 minutes, delivered before the one at 60.
        shard.process(&tx(1, None), &mut row);
        shard.process(&tx(2, None), &mut row);
        assert_eq!(shard.engine().stats().labels_applied, 0);
        shard.peek(&tx(3, None), &mut row);
        assert_eq!(shard.pending_labels(), 1);
        shard.process(&tx(3, None), &mut row);
        assert_eq!(shard.pending_labels(), 0);
        assert_eq!(shard.finish().labels_applied, 1);
    }
}
