//! The layer rule as a test: imports inside the server point one way,
//! `server → net → engine → broker + store`, with `model` shared by the core and the store
//! and `config` read by everything above the store. The core and the store never import each
//! other; effects (`model::Change`) are the interface. docs/ARCHITECTURE.md states the same
//! rule; `.ci/run` checks the crate-level half (no client, CLI or benchmark crates here) with
//! `cargo tree`.
//!
//! The check reads the source: every `crate::NAME` path outside comments, including each
//! item of a `crate::{a, b::c}` group, must name a module the file's layer may use.

use std::path::Path;

/// For each top-level module: the top-level modules it may import through `crate::`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("broker", &["model"]),
    ("metrics", &[]),
    ("store", &["model", "metrics"]),
    ("config", &["store"]),
    ("engine", &["broker", "store", "model", "config", "metrics"]),
    // The PostgreSQL backend: consumes the engine's `Command`s and reuses its admin
    // mapping; uses the broker's pure policy (validation, backoff, retry rule), never its
    // stateful core, and no `store`.
    ("pg", &["engine", "broker", "model", "config", "metrics"]),
    ("net", &["engine", "model", "config"]),
    ("http", &["engine", "model", "config", "metrics"]),
    ("faktory", &["net", "engine", "model", "config"]),
    (
        "server",
        &[
            "net", "http", "faktory", "engine", "pg", "config", "model", "broker", "store",
            "metrics",
        ],
    ),
];

/// The top-level modules a piece of source names through `crate::`.
fn crate_imports(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `qd_crate::x` or `some_crate::x` is not ours.
        let before = code.len() - rest.len() + at;
        let prev = code[..before].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if prev.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group, up to its matching brace.
            let (mut depth, mut item, mut items) = (1, String::new(), Vec::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                    _ if depth == 1 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            found.extend(items.iter().map(|i| first_segment(i)).filter(|s| !s.is_empty()));
        } else {
            found.push(first_segment(rest));
        }
    }
    found
}

fn first_segment(path: &str) -> String {
    path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir").map(|e| e.expect("dir entry")) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The violations of [`ALLOWED`] in the source of `module`, as `"path: module -> import"`.
fn violations(module: &str, file: &str, source: &str) -> Vec<String> {
    let allowed = match ALLOWED.iter().find(|(m, _)| *m == module) {
        Some((_, allowed)) => *allowed,
        None => return vec![format!("{file}: module `{module}` has no entry in ALLOWED")],
    };
    crate_imports(source)
        .into_iter()
        .filter(|import| import != module && !allowed.contains(&import.as_str()))
        .map(|import| format!("{file}: {module} -> {import}"))
        .collect()
}

#[test]
fn imports_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative.components().next().expect("non-empty").as_os_str();
        let module = top.to_string_lossy().trim_end_matches(".rs").to_string();
        // The crate root only declares modules; this file's own test data names them all.
        if module == "lib" || module == "layers" {
            continue;
        }
        let source = std::fs::read_to_string(file).expect("read source");
        bad.extend(violations(&module, &relative.display().to_string(), &source));
    }
    assert!(files.len() > 10, "found the sources ({} files)", files.len());
    assert!(bad.is_empty(), "imports against the layer direction:\n{}", bad.join("\n"));
}

#[test]
fn the_check_catches_each_form_of_import() {
    let source = "//! mentions crate::store in a comment\n\
                  use crate::model::Change;\n\
                  use crate::{store::StoreError, engine};\n\
                  fn f() -> crate::net::conn::ConnLimits { todo!() }\n\
                  use qd_crate::ignored;\n";
    assert_eq!(crate_imports(source), ["model", "store", "engine", "net"]);
    assert_eq!(
        violations("broker", "broker/x.rs", source),
        [
            "broker/x.rs: broker -> store",
            "broker/x.rs: broker -> engine",
            "broker/x.rs: broker -> net"
        ]
    );
    assert!(violations("server", "server.rs", source).is_empty());
}
