//! Generates the Rust types and tonic services of the vendored protos (see `proto/README.md`)
//! with protox, a protobuf compiler in Rust: no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let includes = [
        "proto",
        "proto/data-plane-api",
        "proto/xds",
        "proto/protoc-gen-validate",
    ];
    let files = [
        "drl/v1/ratelimiter.proto",
        "envoy/service/ratelimit/v3/rls.proto",
    ];
    let descriptors = protox::compile(files, includes)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The clients take a channel from the caller (`Client::new`), so this crate does not
        // need tonic's client transport.
        .build_transport(false)
        // Undecodable requests are INVALID_ARGUMENT (see `src/codec.rs`).
        .codec_path("crate::codec::StrictCodec")
        .include_file("mod.rs")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
