//! Generated protobuf types, server and client of `vigil.v1` (from `proto/vigil/v1/`, compiled
//! by `build.rs` without protoc). Only `src/api/` uses them; everything else speaks domain types.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("vigil.v1");

/// The encoded `FileDescriptorSet` of `vigil.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vigil_v1_descriptor");
