//! The feature matrix of a history: every row from the one feature engine, with window state
//! split per partition as the scorer splits it.

use std::sync::Arc;

use ndarray::Array2;

use crate::features::{self, FeatureSpec};
use crate::record::Transaction;

use super::Reporter;

/// Replays `txs` (in processing order) through the feature engine and returns the full matrix,
/// one row per transaction. With `partitions > 1` window state is split as a scorer consuming a
/// topic of that many partitions keeps it ([`replay_history`]).
pub fn feature_matrix(
    spec: &Arc<FeatureSpec>,
    txs: &[Transaction],
    partitions: u32,
    reporter: &dyn Reporter,
) -> Array2<f32> {
    let n = spec.n_features();
    let mut x = Array2::<f32>::zeros((txs.len(), n));
    reporter.stage("features", txs.len() as u64);
    {
        let flat = x
            .as_slice_mut()
            .expect("a freshly allocated Array2 is contiguous");
        replay_history(spec, txs, partitions, |i, row| {
            flat[i * n..(i + 1) * n].copy_from_slice(row);
            if i % 65_536 == 0 {
                reporter.progress(i as u64);
            }
        });
    }
    reporter.progress(txs.len() as u64);
    reporter.finish();
    x
}

/// The feature rows of `txs` with window state per partition, as `vigil serve` holds it for a
/// transactions topic of `partitions` partitions: each card's transactions in the partition
/// Kafka's default partitioner gives its card id ([`crate::partition`]). One partition is the
/// plain [`features::replay`].
pub fn replay_history(
    spec: &Arc<FeatureSpec>,
    txs: &[Transaction],
    partitions: u32,
    on_row: impl FnMut(usize, &[f32]),
) -> features::EngineStats {
    let n = partitions.max(1);
    features::replay_sharded(
        spec,
        txs,
        n as usize,
        |t| crate::partition::partition_for(t.card_id.as_bytes(), n) as usize,
        on_row,
    )
}
