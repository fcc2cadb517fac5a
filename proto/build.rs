//! Compiles `proto/**/*.proto` with protox (pure Rust, no system `protoc`)
//! and generates tonic clients and servers plus the encoded descriptor set
//! that server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/p2p/auth/v1/auth.proto",
    "proto/p2p/index/v1/index.proto",
    "proto/p2p/peer/v1/peer.proto",
    "proto/p2p/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out_dir.join("p2p_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Chunk payloads stay `Bytes` end to end: no copy out of the HTTP/2 frame.
        .bytes(".p2p.peer.v1.Chunk.data")
        .compile_fds(fds)?;
    Ok(())
}
