#!/usr/bin/env bash
# Starts `qd serve --faktory` on a fresh data dir and drives it with the real Node and
# Python Faktory clients (node.mjs, worker.py). Run from .ci/run, after `npm ci` here and
# `pip install -r requirements.txt`. Usage: run.sh path/to/qd
set -euo pipefail
cd "$(dirname "$0")"
qd="$1"
data="$(mktemp -d)"
log="$data/qd.log"
port=$((20000 + RANDOM % 20000))
password="faktory-test-pw"
QD_SECRET="$password" "$qd" serve --data "$data/data" --listen 127.0.0.1:0 \
    --faktory "127.0.0.1:$port" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    grep -q "faktory is listening" "$log" && break
    sleep 0.1
done
grep -q "faktory is listening" "$log" || { cat "$log"; exit 1; }
export FAKTORY_URL="tcp://:$password@127.0.0.1:$port"
node node.mjs
python3 worker.py
