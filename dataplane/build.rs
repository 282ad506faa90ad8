//! Generates the control protocol's Rust types (prost) from the one
//! definition both sides share, shared/proto/dataplane.proto; the agent's
//! TypeScript types come from the same file (scripts/gen-proto.ts). protox
//! compiles the .proto in Rust, so building needs no protoc.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let proto_dir = dir.join("..").join("shared").join("proto");
    let proto = proto_dir.join("dataplane.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_dir]).unwrap_or_else(|e| panic!("{}: {e}", proto.display()));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating Rust from {}: {e}", proto.display()));
}
