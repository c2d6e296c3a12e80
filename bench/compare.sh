#!/usr/bin/env bash
# icegate side by side with coturn (and Pion) on loopback, using the shared
# harness. Needs: apt-get install coturn iperf3 golang-go golang-github-pion-turn.v2-dev
# Usage: bench/compare.sh [-r REPS] [-s "small-chan big-chan alloc"]  (extra args go to run-anchors.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
harness=${HARNESS:-$here/../../shared/bench/run-anchors.sh}
[[ -x $harness ]] || { echo "shared bench harness not found at $harness (set HARNESS)" >&2; exit 2; }
cargo build --release --manifest-path "$here/../Cargo.toml"
exec "$harness" --server icegate="$here/icegate-server.sh {PORT} {MIN_PORT} {MAX_PORT} {OUT}" "$@"
