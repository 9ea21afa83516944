//! Compiles every `src/*.bpf.c` with clang into `$OUT_DIR/<name>.bpf.o`, and the
//! helper-free arithmetic of `include/bucket.h` for the host (`src/host/*.c`, for
//! unit tests). The stable Rust toolchain here has no `rust-src`, so the programs
//! are C (see DESIGN.md).
//! `WARREN_CLANG` overrides the compiler (default `clang-19`, then `clang`).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=fixtures");
    println!("cargo:rerun-if-env-changed=WARREN_CLANG");

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = clang();

    // <asm/types.h> lives in the multiarch directory on Debian.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{}-linux-gnu", multiarch_name(&arch));

    let mut sources: Vec<PathBuf> = std::fs::read_dir(manifest.join("src"))
        .expect("read warren-ebpf/src")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();

    for src in sources {
        let name = src.file_name().unwrap().to_string_lossy().replace(".bpf.c", "");
        let obj = out.join(format!("{name}.bpf.o"));
        compile(&clang, &src, &obj, &manifest.join("include"), Path::new(&multiarch));
    }

    // The programs of layout v1 as released, for the upgrade test; built with the
    // flags of their release.
    let v1 = manifest.join("fixtures/v1");
    compile_with(
        &clang,
        &["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"],
        &v1.join("src/warren.bpf.c"),
        &out.join("warren_v1.bpf.o"),
        &v1.join("include"),
        Path::new(&multiarch),
    );
    // The programs of layout v2 as released (the previous version).
    let v2 = manifest.join("fixtures/v2");
    compile(
        &clang,
        &v2.join("src/warren.bpf.c"),
        &out.join("warren_v2.bpf.o"),
        &v2.join("include"),
        Path::new(&multiarch),
    );

    // The BPF-free arithmetic of include/bucket.h, compiled for the host so that
    // unit tests run the very code the programs run (see `host`).
    cc::Build::new()
        .file(manifest.join("src/host/bucket.c"))
        .include(manifest.join("include"))
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("warren_bucket_host");
}

fn clang() -> String {
    if let Ok(c) = env::var("WARREN_CLANG") {
        return c;
    }
    for candidate in ["clang-19", "clang"] {
        if Command::new(candidate).arg("--version").output().is_ok() {
            return candidate.to_string();
        }
    }
    panic!("no clang found: install clang-19 (or set WARREN_CLANG) to build the eBPF programs");
}

fn multiarch_name(arch: &str) -> &str {
    match arch {
        "aarch64" => "aarch64",
        "x86_64" => "x86_64",
        other => other,
    }
}

fn compile(clang: &str, src: &Path, obj: &Path, include: &Path, multiarch: &Path) {
    // v3: 32-bit jumps and ALU (5.1+) and the atomic fetch/cmpxchg forms (emitted
    // only where bucket.h uses them, behind a feature flag).
    let flags = ["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"];
    compile_with(clang, &flags, src, obj, include, multiarch);
}

fn compile_with(clang: &str, flags: &[&str], src: &Path, obj: &Path, include: &Path, multiarch: &Path) {
    let output = Command::new(clang)
        .args(flags)
        .arg("-I")
        .arg(include)
        .arg("-idirafter")
        .arg(multiarch)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .output()
        .unwrap_or_else(|e| panic!("run {clang}: {e}"));
    if !output.status.success() {
        panic!(
            "{clang} failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
