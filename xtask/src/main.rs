//! `cargo xtask`: project automation. Owns the command-line dispatch of the tasks;
//! the work itself lives in the libraries they call (`image`: the test-image builder
//! of the `warren-tests` harness).

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask image [--out DIR]

  image   build the busybox test images (warren-test/http, warren-test/echo,
          warren-test/crash, and a two-platform index of http) as an OCI image
          layout in DIR (default: target/test-images); push one with
          skopeo copy --dest-tls-verify=false oci:DIR:http docker://HOST/warren-test/http:1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("image") => image(&args[1..]),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("xtask: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn image(args: &[String]) -> ExitCode {
    let mut out = PathBuf::from("target/test-images");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => match it.next() {
                Some(d) => out = PathBuf::from(d),
                None => {
                    eprintln!("xtask image: --out needs a directory");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("xtask image: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match warren_tests::images::build_layout(&out) {
        Ok(layout) => {
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
                warren_tests::images::HTTP_MULTI_REF,
                layout.http_multi.digest
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask image: {e}");
            ExitCode::FAILURE
        }
    }
}
