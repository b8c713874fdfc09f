//! Compiles `proto/vigil/v1/*.proto` without protoc: `protox` (a protobuf compiler in Rust)
//! parses the files into a `FileDescriptorSet`, which `tonic-prost-build` turns into the message
//! types, the server trait and the client. The encoded descriptor set is written next to the
//! generated code for server reflection (`vigil::api::pb::FILE_DESCRIPTOR_SET`).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/vigil/v1/scoring.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("vigil_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
