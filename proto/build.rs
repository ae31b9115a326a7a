//! Generates prost messages and tonic services from `proto/` with the pure-Rust `protox`
//! compiler, so a fresh machine needs no system `protoc`. The descriptor set is written to
//! `OUT_DIR` for gRPC server reflection.

use prost::Message;

fn main() {
    let files = ["proto/vouchsafe/v1/events.proto", "proto/vouchsafe/v1/services.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"]).expect("proto files compile");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("vouchsafe_descriptor.bin"), descriptors.encode_to_vec()).expect("descriptor set written to OUT_DIR");
    // A media chunk's bytes as `Bytes`: a node sends slices of its cached container without
    // copying them, and a player's decoder hands over the received buffer's bytes instead of
    // copying each chunk into a new vector. The wire format is the same `bytes` field.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".vouchsafe.v1.MediaChunk.data")
        .compile_fds(descriptors)
        .expect("tonic code generation");
}
