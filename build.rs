//! Generates the protobuf message types from `proto/` with prost-build and a
//! vendored protoc, and the FileDescriptorSet of the same files
//! (`$OUT_DIR/descriptors.bin`, embedded for server reflection: never
//! maintained by hand).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let protos = [
        "proto/codereview/v1/codereview.proto",
        "proto/grpc/health/v1/health.proto",
        "proto/grpc/testing/empty.proto",
        "proto/grpc/testing/messages.proto",
        "proto/grpc/testing/test.proto",
        "proto/grpc/reflection/v1/reflection.proto",
        "proto/grpc/reflection/v1alpha/reflection.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    prost_build::Config::new()
        .protoc_executable(protoc.clone())
        .file_descriptor_set_path(descriptors)
        .bytes(["."])
        .compile_protos(&protos, &["proto"])?;
    // The durable format: internal, so kept out of the reflected set. Its
    // imports are the package generated above.
    let store = "proto/codereview/store/v1/store.proto";
    println!("cargo:rerun-if-changed={store}");
    prost_build::Config::new()
        .protoc_executable(protoc)
        .bytes(["."])
        .extern_path(".codereview.v1", "crate::pb::codereview")
        .compile_protos(&[store], &["proto"])?;
    Ok(())
}
