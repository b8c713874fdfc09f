//! Model files on disk: the only part of `model` that does I/O.

use std::io::Write;
use std::path::Path;

use crate::features::FeatureSpec;
use crate::forest::Forest;

use super::format::{decode, encode, ModelError};
use super::{Model, ModelHeader};

/// Reads and fully checks a model file. See [`decode`].
pub fn load(path: &Path, expected: Option<&FeatureSpec>) -> Result<Model, ModelError> {
    let bytes = std::fs::read(path).map_err(|cause| ModelError::Io {
        path: path.display().to_string(),
        cause,
    })?;
    decode(&bytes, expected)
}

/// Writes a model file atomically: the bytes go to a temporary file in the same directory, which
/// is then renamed over `path`, so a scorer watching `path` never reads half a model.
pub fn save(path: &Path, header: &ModelHeader, forest: &Forest) -> Result<(), ModelError> {
    let io = |cause| ModelError::Io {
        path: path.display().to_string(),
        cause,
    };
    let bytes = encode(header, forest)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
