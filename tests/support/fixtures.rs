//! What the repository ships and tests start from: the default model, the sample history, the
//! default feature spec; and free loopback ports.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use vigil::features::FeatureSpec;
use vigil::model::Model;
use vigil::record::{self, ReadOptions, Transaction};

/// The repository root (where `cargo test` runs the tests and the `vigil` binary).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `models/default.vgm`, the shipped model.
pub fn default_model_path() -> PathBuf {
    repo().join("models/default.vgm")
}

/// `data/sample.csv`, the shipped sample history.
pub fn sample_path() -> PathBuf {
    repo().join("data/sample.csv")
}

/// `training/features.toml`, the default feature spec (the shipped model's).
pub fn default_spec_path() -> PathBuf {
    repo().join("training/features.toml")
}

/// The shipped model, loaded once per test binary.
pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    Arc::clone(MODEL.get_or_init(|| {
        Arc::new(vigil::model::load(&default_model_path(), None).expect("the shipped model loads"))
    }))
}

/// The default feature spec, freshly loaded.
pub fn default_spec() -> Arc<FeatureSpec> {
    Arc::new(FeatureSpec::load(&default_spec_path()).expect("the default spec loads"))
}

/// The sample history, in event-time order (read once per test binary).
pub fn sample_history() -> &'static [Transaction] {
    static ROWS: OnceLock<Vec<Transaction>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let mut h =
            record::read_history(&sample_path(), ReadOptions::default()).expect("sample reads");
        h.sort_by_time();
        h.transactions
    })
}

/// The first `n` transactions of the sample history, in event-time order.
pub fn sample(n: usize) -> Vec<Transaction> {
    sample_history()[..n].to_vec()
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// `127.0.0.1:<a free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// The path as a `&str` (temporary and repository paths are UTF-8 here).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("paths are UTF-8")
}
