//! Builds the busybox test images (what `cargo xtask image` and `cargo xtask up`
//! run): an OCI image layout, or one image as an OCI archive for `warren image load`.
//!
//! ```text
//! warren-test-images [--out DIR]
//! warren-test-images --archive http|echo|crash NAME FILE
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use warren_tests::images::{self, TestImage};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = PathBuf::from("target/test-images");
    let mut archive: Option<(TestImage, String, PathBuf)> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => match it.next() {
                Some(d) => out = PathBuf::from(d),
                None => return usage("--out needs a directory"),
            },
            "--archive" => {
                let (Some(kind), Some(name), Some(file)) = (it.next(), it.next(), it.next()) else {
                    return usage("--archive needs IMAGE NAME FILE");
                };
                let image = match kind.as_str() {
                    "http" => TestImage::Http,
                    "echo" => TestImage::Echo,
                    "crash" => TestImage::Crash,
                    other => return usage(&format!("unknown image {other:?} (http, echo or crash)")),
                };
                archive = Some((image, name.clone(), PathBuf::from(file)));
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let layout = match images::build_layout(&out) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("warren-test-images: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some((image, name, file)) = archive {
        if let Err(e) = images::oci_archive(&layout, image, &name, &file) {
            eprintln!("warren-test-images: {e}");
            return ExitCode::FAILURE;
        }
        println!("{name} -> {}", file.display());
        return ExitCode::SUCCESS;
    }
    for (image, m) in &layout.manifests {
        println!(
            "{:<20} oci:{}:{:<10} {}",
            image.repository(),
            out.display(),
            image.layout_ref(),
            m.digest
        );
    }
    println!(
        "{:<20} oci:{}:{:<10} {} (linux/amd64 + linux/arm64 index; push with skopeo copy --all)",
        "warren-test/http",
        out.display(),
        images::HTTP_MULTI_REF,
        layout.http_multi.digest
    );
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "warren-test-images: {problem}\nusage: warren-test-images [--out DIR] | --archive http|echo|crash NAME FILE"
    );
    ExitCode::from(2)
}
