//! The protobuf form of vigil's records: the generated types, server and client of `vigil.v1`
//! (from `proto/vigil/v1/`, compiled by `build.rs` without protoc), and [`codec`], the one place
//! that converts them to and from domain types. The gRPC API ([`crate::api`]) and the Kafka
//! path's protobuf input ([`crate::stream::wire`]) both use it; everything else speaks domain
//! types.

pub mod codec;

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("vigil.v1");
}

pub use generated::*;

/// The encoded `FileDescriptorSet` of `vigil.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vigil_v1_descriptor");
