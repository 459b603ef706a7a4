//! The `kiln` binary: everything lives in the library (`kiln::cli`).

fn main() -> std::process::ExitCode {
    kiln::cli::Args::parse_and_run()
}
