//! Compiles `proto/*.proto` with a vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = tonic_prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(cfg, &["proto/pgquorum.proto"], &["proto"])?;
    // tonic-prost-build prints no rerun-if-changed lines itself; without these the
    // generated code is rewritten on every edit and forces a full crate rebuild.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
