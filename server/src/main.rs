//! The `qd` binary: everything lives in the library; see `cli.rs`.

fn main() -> std::process::ExitCode {
    match qd_server::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
