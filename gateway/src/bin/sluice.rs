//! The `sluice` binary: a thin shim into [`sluice::cli::run`].

fn main() -> std::process::ExitCode {
    sluice::cli::run()
}
