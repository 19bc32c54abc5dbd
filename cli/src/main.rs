//! The `qd` binary: everything lives in the library; see `cli.rs`.

fn main() -> std::process::ExitCode {
    qd::main_exit()
}
