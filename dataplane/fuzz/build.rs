//! The control protocol's Rust types for control.rs, generated as the data
//! plane's own build.rs generates them (prost, from the one definition,
//! shared/proto/dataplane.proto), so the fuzzed decoder is the data plane's.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let proto_dir = dir.join("..").join("..").join("shared").join("proto");
    let proto = proto_dir.join("dataplane.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_dir]).unwrap_or_else(|e| panic!("{}: {e}", proto.display()));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating Rust from {}: {e}", proto.display()));
}
