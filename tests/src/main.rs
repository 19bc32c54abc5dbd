//! `qd` itself, under another name, so that the end-to-end tests can start it as a real
//! process (kill -9 included) and find it through `CARGO_BIN_EXE_qd-under-test`.

fn main() -> std::process::ExitCode {
    qd::main_exit()
}
