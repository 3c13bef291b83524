//! Generates the protobuf message types from `proto/` with prost-build and a vendored protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let protos = [
        "proto/codereview/v1/codereview.proto",
        "proto/grpc/health/v1/health.proto",
        "proto/grpc/testing/empty.proto",
        "proto/grpc/testing/messages.proto",
        "proto/grpc/testing/test.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    prost_build::Config::new()
        .protoc_executable(protoc)
        .bytes(["."])
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
