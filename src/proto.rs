//! The public gRPC contract, generated from
//! `proto/leasehold/v1/leasehold.proto` by `build.rs`. The proto file is the
//! documentation client authors read; [`crate::convert`] maps these messages
//! to and from the engine's types.

/// Package `leasehold.v1`: messages, `leasehold_server` and
/// `leasehold_client`.
pub mod v1 {
    // Generated code: its style is prost's and tonic's, not ours.
    #![allow(clippy::all, clippy::pedantic)]

    tonic::include_proto!("leasehold.v1");
    include!(concat!(env!("OUT_DIR"), "/clients/leasehold.v1.rs"));
}

/// Package `leasehold.internal.v1`: the node-to-node API (Raft transport,
/// leadership handover, state digests). Not a public contract.
pub mod peer {
    // Generated code: its style is prost's and tonic's, not ours.
    #![allow(clippy::all, clippy::pedantic)]

    tonic::include_proto!("leasehold.internal.v1");
    include!(concat!(
        env!("OUT_DIR"),
        "/clients/leasehold.internal.v1.rs"
    ));
}

/// The encoded `FileDescriptorSet` of `leasehold.v1`, for gRPC server
/// reflection on the client port.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/leasehold_descriptor.bin"));
