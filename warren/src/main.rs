//! The `warren` binary (also installed as `wrn`): everything is in the library.

fn main() -> std::process::ExitCode {
    warren::cli::main()
}
