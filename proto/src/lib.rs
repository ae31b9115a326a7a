//! Generated protobuf and gRPC code for Vouchsafe, nothing else.
//!
//! Domain types live in `engine`; the only conversion between them and these messages is
//! `engine::wire` (events) and the gateways (RPC messages).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("vouchsafe.v1");
}

/// The encoded `FileDescriptorSet` of every Vouchsafe proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vouchsafe_descriptor.bin"));
