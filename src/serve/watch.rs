//! The model watcher: the serving model is reloaded when its file changes (polled) or on
//! SIGHUP. A new file is checked completely before it replaces the serving model; a bad one is
//! refused, named, counted, and the serving model stays.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};

use crate::model::{self, Model};
use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::telemetry;

/// What identifies a version of the model file on disk.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

pub fn run(
    core: &ScoringCore,
    path: &Path,
    watch: bool,
    every: Duration,
    forced: &Receiver<()>,
    shutdown: &Shutdown,
) {
    let mut last = stamp(path);
    while !shutdown.is_triggered() {
        let force = match forced.recv_timeout(every) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = stamp(path);
        if force || (watch && now.is_some() && now != last) {
            last = now;
            match reload_model(core, path) {
                Ok(Some(name)) => tracing::info!(model = %name, "model reloaded"),
                Ok(None) => tracing::info!("model file unchanged in content; nothing to do"),
                Err(e) => tracing::error!("{e:#}"),
            }
        }
    }
}

/// Says so when `model` was trained with window state split into another number of partitions
/// than it is served with: its merchant windows then see other transactions than in training
/// (card windows are unaffected). Not an error: the model still scores, with that skew.
pub fn warn_on_partition_mismatch(model: &Model, partitions: u32) {
    let trained = model.header.state_partitions;
    if trained != partitions {
        tracing::warn!(
            model = %model.name(),
            trained_with = trained,
            serving_with = partitions,
            "the model was trained with window state in {trained} partition(s) and is served \
             with {partitions}: merchant windows differ from training; retrain with \
             `vigil train --partitions {partitions}` (or serve from a topic with {trained})"
        );
    }
}

/// Loads `path` and makes it the serving model. `Ok(None)` when it is the serving model
/// already. A file that fails its checks or reads different features is refused and the
/// serving model stays.
pub fn reload_model(core: &ScoringCore, path: &Path) -> Result<Option<String>> {
    let new = match model::load(path, None) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            telemetry::model_reload("invalid");
            return Err(anyhow!(
                "model reload refused, {} keeps serving: {}: {e}",
                core.model().name(),
                path.display()
            ));
        }
    };
    let current = core.model();
    if current.header.version == new.header.version
        && current.header.model_id == new.header.model_id
    {
        return Ok(None);
    }
    match core.replace_model(Arc::clone(&new)) {
        Ok(old) => {
            warn_on_partition_mismatch(&new, core.partitions());
            telemetry::model_reload("ok");
            telemetry::model_serving(
                &new.header.model_id,
                &new.header.version,
                Some((&old.header.model_id, &old.header.version)),
            );
            Ok(Some(new.name()))
        }
        Err(e) => {
            telemetry::model_reload("spec_mismatch");
            Err(anyhow!(
                "model reload refused, {} keeps serving: {}: {e}",
                current.name(),
                path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::load_model;

    fn default_model_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.vgm")
    }

    #[test]
    fn reload_refuses_bad_files_and_keeps_serving() {
        let model = load_model(&default_model_path()).expect("shipped model");
        let core = ScoringCore::new(Arc::clone(&model), 2, 16);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.vgm");

        // Truncated file: refused, named, old model still serving.
        let bytes = std::fs::read(default_model_path()).expect("bytes");
        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
        let e = reload_model(&core, &path)
            .expect_err("truncated")
            .to_string();
        assert!(e.contains("refused") && e.contains(&model.name()), "{e}");
        assert_eq!(core.model().header.version, model.header.version);

        // Same model again: nothing to do.
        std::fs::write(&path, &bytes).expect("write");
        assert!(reload_model(&core, &path).expect("valid").is_none());

        // (A model reading other features is refused by `ScoringCore::replace_model`; its
        // test is in `service`.)

        // A real new version: swapped in.
        let mut next = model.header.clone();
        next.thresholds = crate::decision::Thresholds::new(0.2, 0.4).expect("thresholds");
        next.version = crate::model::format::content_version(&next, &model.forest);
        crate::model::save(&path, &next, &model.forest).expect("save");
        let name = reload_model(&core, &path).expect("valid").expect("swapped");
        assert!(name.ends_with(&next.version));
        assert_eq!(core.model().header.version, next.version);
    }
}
