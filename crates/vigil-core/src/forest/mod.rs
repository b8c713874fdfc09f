//! Random forests: the plain tree representation ([`tree`]), the histogram-based trainer
//! ([`train`]) and the compiled branch-free scorer with reason codes ([`compiled`]).
//!
//! Nothing here does I/O or knows where features come from: inputs are `f32` rows.

pub mod compiled;
pub mod train;
pub mod tree;

pub use tree::{Forest, ForestError, Node, Tree, LEAF};
