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
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    // Error details travel as `google.protobuf.Any`, whose type URL is
    // `type.googleapis.com/<full name>` by convention.
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("leasehold_descriptor.bin"))
        .compile_with_config(config, &[PROTO], &["proto"])?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &[PEER_PROTO], &["proto"])?;
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
