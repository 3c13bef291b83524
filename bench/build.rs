//! Generates the messages, the tonic server and the tonic client of
//! proto/codereview/v1 (the same file the `codereview` crate builds from) with
//! tonic-prost-build and the vendored protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/codereview/v1/codereview.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &[proto], &["../proto"])?;
    Ok(())
}
