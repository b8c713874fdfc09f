//! `vigil model inspect`: what a model file is (after checking all of it).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use vigil::model;

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Print a model's metadata (after checking the whole file).
    Inspect {
        /// The model file.
        model: PathBuf,
        /// Print the header as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Inspect { model, json } => inspect(&model, json),
    }
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let m =
        model::load(path, None).with_context(|| format!("cannot use model {}", path.display()))?;
    let h = &m.header;
    if json {
        let mut v = serde_json::to_value(h)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("feature_spec");
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!("model        {}", m.name());
    outln!("file         {}", path.display());
    outln!("created      {} by {}", h.created_at, h.created_by);
    outln!(
        "forest       {} trees, max depth {}, {} nodes, {} features",
        h.n_trees,
        h.max_depth,
        h.n_nodes,
        h.feature_names.len()
    );
    outln!("spec         fingerprint {}", h.feature_fingerprint);
    outln!(
        "state        {} partition{} (serve it from a transactions topic with as many)",
        h.state_partitions,
        if h.state_partitions == 1 { "" } else { "s" }
    );
    outln!(
        "thresholds   review >= {:.4}, decline >= {:.4}",
        h.thresholds.review,
        h.thresholds.decline
    );
    let t = &h.training;
    outln!("data         {} ({} rows)", t.data, t.history_rows);
    outln!(
        "train        {} to {}: {} rows, {} fraud, fit in {:.1}s",
        t.train_from,
        t.train_to,
        t.train_rows,
        t.train_frauds,
        t.fit_seconds
    );
    if !t.test_from.is_empty() {
        outln!(
            "test         {} to {}: {} rows, {} fraud",
            t.test_from,
            t.test_to,
            t.test_rows,
            t.test_frauds
        );
    }
    outln!("params       {}", t.params);
    if let Some(ev) = &h.evaluation {
        outln!("\nevaluation on the test period:\n{ev}");
    }
    outln!("\nfeatures: {}", h.feature_names.join(", "));
    Ok(())
}
