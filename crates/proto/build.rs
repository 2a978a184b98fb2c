//! Compiles `proto/flwr/proto/*.proto` with protox (pure Rust), so building needs no `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let dir = root.join("flwr/proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    // Every RPC path of the schema, for the servers' metrics (a path outside it is "unknown").
    let mut paths = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("rpc_paths.rs");
    std::fs::write(
        out,
        format!("/// Every RPC path of the schema (`/package.Service/Method`), sorted.\npub const RPC_PATHS: &[&str] = &{paths:?};\n"),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".flwr.proto")
        .compile_fds(fds)?;
    Ok(())
}
