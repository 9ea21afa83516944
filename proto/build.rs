//! Compiles `warren.proto` into Rust with tonic/prost. Needs `protoc` (Debian
//! `protobuf-compiler`); the error below names it so that a fresh machine says what
//! is missing instead of failing deep inside prost-build.

fn main() {
    println!("cargo:rerun-if-changed=warren.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() && which("protoc").is_none() {
        panic!(
            "protoc not found: install Debian's protobuf-compiler \
             (apt-get install -y --no-install-recommends protobuf-compiler) or set PROTOC"
        );
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["warren.proto"], &["."])
        .expect("compiling warren.proto");
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(bin)).find(|p| p.is_file()))
}
