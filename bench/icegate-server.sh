#!/usr/bin/env bash
# Starts icegate the way ../shared/bench/run-anchors.sh expects of any server:
# UDP on 127.0.0.1:PORT, realm bench.local, user bench/bench, relays on
# 127.0.0.1 in MIN-MAX, loopback peers allowed.
# Usage: icegate-server.sh PORT MIN_PORT MAX_PORT OUT_DIR
set -euo pipefail
port=$1 min=$2 max=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
cat >"$out/icegate.toml" <<TOML
realm = "bench.local"
[[listen]]
address = "127.0.0.1:$port"
[relay]
addresses = ["127.0.0.1"]
ports = "$min-$max"
allow-peers = ["127.0.0.0/8"]
# turnutils_uclient (coturn 4.6) picks RFC 5766 channel numbers.
rfc5766-channel-numbers = true
# coturn has no per-user quota by default; the harness allocates as one user.
max-allocations-per-user = 100000
max-allocations = 100000
[auth]
[[auth.users]]
name = "bench"
password = "bench"
TOML
exec "${ICEGATE:-$here/../target/release/icegate}" run --config "$out/icegate.toml"
