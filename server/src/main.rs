//! The `qd` binary: everything lives in the library; see `cli.rs`.

fn main() -> std::process::ExitCode {
    qd_server::cli::main_exit()
}
