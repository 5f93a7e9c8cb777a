//! Generates the gRPC servers, clients and messages of the public
//! `leasehold.v1` contract and of the node-to-node `leasehold.internal.v1`
//! API, plus the public contract's file descriptor set, which server
//! reflection serves on the client port. The node-to-node API is compiled
//! apart, so that set does not describe it.

use std::env;
use std::error::Error;
use std::path::PathBuf;

const PROTO: &str = "proto/leasehold/v1/leasehold.proto";
const PEER_PROTO: &str = "proto/leasehold/internal/v1/peer.proto";

/// Debian's protobuf-compiler, the one the project documents.
const DEBIAN_PROTOC: &str = "/usr/bin/protoc";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={PEER_PROTO}");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protoc = protoc()?;
    // Messages and servers, the public contract's with the file
    // descriptor set that reflection serves on the client port; the
    // node-to-node API apart, so that set does not describe it. Servers
    // decode with our codec: a request that does not decode is the
    // caller's fault (INVALID_ARGUMENT), where prost's codec calls it
    // INTERNAL.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    // Error details travel as `google.protobuf.Any`, whose type URL is
    // `type.googleapis.com/<full name>` by convention.
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::server::codec::ServerCodec")
        .file_descriptor_set_path(out_dir.join("leasehold_descriptor.bin"))
        .compile_with_config(config, &[PROTO], &["proto"])?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::server::codec::ServerCodec")
        .compile_with_config(config, &[PEER_PROTO], &["proto"])?;
    // Clients, over the messages above, with prost's codec: an answer that
    // does not decode is no fault of the caller's.
    let clients = out_dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .extern_path(".leasehold.v1", "crate::proto::v1")
        .extern_path(".leasehold.internal.v1", "crate::proto::peer")
        .out_dir(&clients)
        .compile_with_config(config, &[PROTO, PEER_PROTO], &["proto"])?;
    Ok(())
}

/// `$PROTOC` if set, else Debian's; prost-build's own fallback (a bare
/// `protoc` on PATH) fails with a message that does not say what to install.
fn protoc() -> Result<PathBuf, String> {
    if let Some(path) = env::var_os("PROTOC") {
        return Ok(path.into());
    }
    let debian = PathBuf::from(DEBIAN_PROTOC);
    if debian.exists() {
        return Ok(debian);
    }
    Err(format!(
        "protoc not found: PROTOC is unset and {DEBIAN_PROTOC} is missing. Install it \
         (`apt-get install protobuf-compiler`) or set PROTOC to a protoc binary."
    ))
}
