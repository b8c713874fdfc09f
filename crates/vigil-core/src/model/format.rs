//! Encoding and decoding of model files (bytes in, bytes out; no I/O). See the parent module for
//! the layout.

use std::sync::Arc;

use crate::features::FeatureSpec;
use crate::forest::compiled::CompiledForest;
use crate::forest::{Forest, ForestError, Node, Tree};

use super::{Model, ModelHeader};

/// First bytes of every model file.
pub const MAGIC: &[u8; 8] = b"VIGILMDL";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes per encoded node.
const NODE_BYTES: usize = 24;
/// Refuse absurd sizes before allocating (a corrupted count must not allocate gigabytes).
const MAX_HEADER_BYTES: usize = 64 << 20;
const MAX_NODES_PER_TREE: usize = 1 << 24;

/// Why a model file was refused. Every variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not a vigil model file (it does not start with {MAGIC:?})")]
    NotAModel,
    #[error("model format version {found}, but this vigil reads version {FORMAT_VERSION}; retrain the model or use a matching vigil")]
    WrongVersion { found: u32 },
    #[error("model file is truncated: {what} needs {needed} bytes at offset {offset}, the file has {len}")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        len: usize,
    },
    #[error(
        "model file is corrupted: checksum {found:08x} does not match the content ({computed:08x})"
    )]
    Checksum { found: u32, computed: u32 },
    #[error("model file has {0} unexpected trailing bytes after the checksum")]
    Trailing(usize),
    #[error("model header is not valid: {0}")]
    Header(String),
    #[error("model's embedded feature spec is invalid: {0}")]
    Spec(String),
    #[error("model's embedded feature spec has fingerprint {computed}, but the header records {recorded}: the file was edited or corrupted")]
    SpecFingerprint { recorded: String, computed: String },
    #[error("model was trained with feature spec {model} but {expected} is required here; retrain with this spec or load the matching spec")]
    SpecMismatch { model: String, expected: String },
    #[error("model's trees are invalid: {0}")]
    Forest(#[from] ForestError),
    #[error("model's thresholds are invalid: {0}")]
    Thresholds(#[from] crate::decision::ThresholdError),
    // The I/O error is part of the message rather than a `source`, so it is printed once.
    #[error("cannot read the file: {cause}")]
    Io { path: String, cause: std::io::Error },
}

/// Content version: FNV-1a 64 over the spec fingerprint, thresholds and encoded trees, as 12 hex
/// digits. Deterministic, so the same training result gets the same version.
pub fn content_version(header: &ModelHeader, forest: &Forest) -> String {
    let mut h = Fnv64::new();
    h.write(header.feature_fingerprint.as_bytes());
    h.write(&header.thresholds.review.to_le_bytes());
    h.write(&header.thresholds.decline.to_le_bytes());
    let mut body = Vec::new();
    encode_trees(forest, &mut body);
    h.write(&body);
    format!("{:012x}", h.finish() >> 16)
}

struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn encode_trees(forest: &Forest, out: &mut Vec<u8>) {
    out.extend_from_slice(&(forest.trees.len() as u32).to_le_bytes());
    for tree in &forest.trees {
        out.extend_from_slice(&(tree.nodes.len() as u32).to_le_bytes());
        for n in &tree.nodes {
            out.extend_from_slice(&n.feature.to_le_bytes());
            out.extend_from_slice(&n.threshold.to_le_bytes());
            out.extend_from_slice(&n.left.to_le_bytes());
            out.extend_from_slice(&n.right.to_le_bytes());
            out.extend_from_slice(&n.value.to_le_bytes());
            out.extend_from_slice(&n.weight.to_le_bytes());
        }
    }
}

/// Encodes a model. The header is written as given (callers set `version` with
/// [`content_version`]).
pub fn encode(header: &ModelHeader, forest: &Forest) -> Result<Vec<u8>, ModelError> {
    let header_json = serde_json::to_vec(header).map_err(|e| ModelError::Header(e.to_string()))?;
    let mut out = Vec::with_capacity(32 + header_json.len() + forest.n_nodes() * NODE_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_json);
    encode_trees(forest, &mut out);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A bounds-checked little-endian reader that reports truncation with the offset.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(ModelError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                len: self.buf.len(),
            }),
        }
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ModelError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes and fully checks a model. With `expected`, the model must have been trained with a
/// spec of the same fingerprint.
pub fn decode(bytes: &[u8], expected: Option<&FeatureSpec>) -> Result<Model, ModelError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(ModelError::NotAModel);
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    r.take(MAGIC.len(), "magic")?;
    let version = r.u32("format version")?;
    if version != FORMAT_VERSION {
        return Err(ModelError::WrongVersion { found: version });
    }
    let header_len = r.u32("header length")? as usize;
    if header_len > MAX_HEADER_BYTES {
        return Err(ModelError::Header(format!(
            "header length {header_len} exceeds {MAX_HEADER_BYTES} bytes"
        )));
    }
    let header_bytes = r.take(header_len, "header")?;
    // Walk the trees' sizes before trusting anything, so truncation is reported as such; then the
    // checksum tells corruption apart.
    let body_start = r.pos;
    let n_trees = r.u32("tree count")? as usize;
    for _ in 0..n_trees {
        let n = r.u32("node count")? as usize;
        if n > MAX_NODES_PER_TREE {
            return Err(ModelError::Header(format!(
                "a tree claims {n} nodes (limit {MAX_NODES_PER_TREE}); the file is corrupted"
            )));
        }
        r.take(n * NODE_BYTES, "tree nodes")?;
    }
    let body_end = r.pos;
    let crc_bytes = r.take(4, "checksum")?;
    let found = le_u32(crc_bytes, 0);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if found != computed {
        return Err(ModelError::Checksum { found, computed });
    }
    if r.pos != bytes.len() {
        return Err(ModelError::Trailing(bytes.len() - r.pos));
    }

    let header: ModelHeader =
        serde_json::from_slice(header_bytes).map_err(|e| ModelError::Header(e.to_string()))?;
    let spec = FeatureSpec::from_toml_str(&header.feature_spec)
        .map_err(|e| ModelError::Spec(e.to_string()))?;
    let computed_fp = spec.fingerprint();
    if computed_fp != header.feature_fingerprint {
        return Err(ModelError::SpecFingerprint {
            recorded: header.feature_fingerprint.clone(),
            computed: computed_fp,
        });
    }
    if spec.feature_names() != header.feature_names.as_slice() {
        return Err(ModelError::Header(
            "feature names differ from those of the embedded spec".into(),
        ));
    }
    if let Some(exp) = expected {
        if exp.fingerprint() != computed_fp {
            return Err(ModelError::SpecMismatch {
                model: computed_fp,
                expected: exp.fingerprint(),
            });
        }
    }
    header.thresholds.validate()?;

    let forest = decode_trees(&bytes[body_start..body_end], spec.n_features());
    let compiled = CompiledForest::compile(&forest)?;
    Ok(Model {
        header,
        spec: Arc::new(spec),
        forest,
        compiled,
    })
}

/// Decodes the tree section, whose sizes were already checked by [`decode`].
fn decode_trees(body: &[u8], n_features: usize) -> Forest {
    let f32_at =
        |at: usize| f32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let n_trees = le_u32(body, 0) as usize;
    let mut pos = 4;
    let mut trees = Vec::with_capacity(n_trees);
    for _ in 0..n_trees {
        let n = le_u32(body, pos) as usize;
        pos += 4;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(Node {
                feature: le_u32(body, pos),
                threshold: f32_at(pos + 4),
                left: le_u32(body, pos + 8),
                right: le_u32(body, pos + 12),
                value: f32_at(pos + 16),
                weight: f32_at(pos + 20),
            });
            pos += NODE_BYTES;
        }
        trees.push(Tree { nodes });
    }
    Forest { n_features, trees }
}
