#!/usr/bin/env bash
# Runs the live-server suite of the `faktory` crate (its `tests/real`, shipped in the crate
# published on crates.io) against `qd serve --faktory`. The source comes through cargo: the
# crate is a dev-dependency of qd-tests, so `cargo fetch` puts it in the registry cache.
# Usage: crate-suite.sh path/to/qd
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
qd="$1"
version="$(sed -n '/^name = "faktory"$/{n;s/version = "\(.*\)"/\1/p}' "$root/Cargo.lock")"
cargo fetch --locked --manifest-path "$root/Cargo.toml" >/dev/null
registry="${CARGO_HOME:-$HOME/.cargo}/registry"
crate="$(ls "$registry"/cache/*/faktory-"$version".crate | head -1)"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
pid=""
tar xzf "$crate" -C "$work"
port=$((20000 + RANDOM % 20000))
"$qd" serve --data "$work/data" --listen 127.0.0.1:0 --faktory "127.0.0.1:$port" 2>"$work/qd.log" &
pid=$!
for _ in $(seq 100); do
    grep -q "faktory is listening" "$work/qd.log" && break
    sleep 0.1
done
# Its own lock file and a target dir of its own: its dev-dependencies are not ours.
# The wildcard queue test is #[ignore]d by the crate (it pauses and removes every queue);
# this server is ours alone, so it runs too, after the others.
cd "$work/faktory-$version"
export FAKTORY_URL="tcp://127.0.0.1:$port" CARGO_TARGET_DIR="$root/target/faktory-suite"
cargo test --locked --test real
cargo test --locked --test real -- --ignored
