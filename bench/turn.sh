#!/usr/bin/env bash
# turn.sh: icegate's TURN relay beside coturn on loopback, in one run. Builds
# icegate and bench/turnload, then for every scenario and repetition starts a
# fresh server process with the same settings (UDP 127.0.0.1:TURN_PORT, realm
# bench.local, user bench/bench, relay address 127.0.0.1, relay ports
# RELAY_PORTS, loopback peers allowed), drives it with turnload, stops it by its
# PID, and prints a table of medians with icegate / coturn ratios.
#
# usage: bench/turn.sh [-r REPS] [-s "SCENARIOS"] [--servers "icegate coturn turn-rs"]
#        [-o OUT_DIR] [--no-pin] [--table RESULTS] [-- TURNLOAD_ARGS...]
#
#   -r REPS       repetitions of every (scenario, server) (default 3); the table
#                 shows medians [min-max]
#   -s LIST       from: small-chan big-chan small-send audio-100 alloc
#                 unpinned-vs-pinned (default: all of them)
#   --servers L   servers to compare (default "icegate coturn"); turn-rs is
#                 recognised and skipped with the reason (bench/README.md)
#   -o OUT_DIR    results.txt, configs and logs (default: a fresh dir under /tmp)
#   --no-pin      no taskset; by default the server runs on CPU $SERVER_CPUS (1)
#                 and turnload on CPU $GEN_CPUS (0)
#   --table FILE  only print the table of an earlier results.txt (with MAX_BG, say)
#   -- ARGS       passed to every turnload run (e.g. -- --secs 2 --allocs 500)
#
# unpinned-vs-pinned runs icegate only: a 170 B ChannelData flood from 32 clients,
# once pinned as above and once with neither process pinned, and reports the
# ratio of relayed packets per second.
#
# Environment: ICEGATE_BIN (a binary to use instead of building one),
# CARGO_TARGET_DIR, TURN_PORT (13478), RELAY_PORTS (20000-29999), SERVER_CPUS,
# GEN_CPUS, QUIET_CORES (0.3) and QUIET_WAIT (20 s): before each run wait until
# the rest of the machine is idle; MAX_BG (e.g. 0.3): leave out of the table runs
# during which other processes used more cores than this.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
REPS=3 OUT_DIR="" PIN=1 GEN_ARGS=() SUMMARIZE=""
SCENARIOS="small-chan big-chan small-send audio-100 alloc unpinned-vs-pinned"
SERVERS="icegate coturn"
while [[ $# -gt 0 ]]; do
	case $1 in
	-r) REPS=$2; shift 2 ;;
	-s) SCENARIOS=$2; shift 2 ;;
	--servers) SERVERS=$2; shift 2 ;;
	-o) OUT_DIR=$2; shift 2 ;;
	--no-pin) PIN=0; shift ;;
	--table) SUMMARIZE=$2; shift 2 ;;
	--) shift; GEN_ARGS=("$@"); break ;;
	-h | --help) sed -n '2,33p' "$0"; exit 0 ;;
	*) echo "unknown argument $1 (-h for help)" >&2; exit 2 ;;
	esac
done
for s in $SCENARIOS; do
	case $s in
	small-chan | big-chan | small-send | audio-100 | alloc | unpinned-vs-pinned) ;;
	*) echo "unknown scenario $s" >&2; exit 2 ;;
	esac
done

# ---- table: medians per (scenario, figure, server), ratios icegate / coturn ----
table() { # results.txt
awk -v pin="$PIN" -v max_bg="${MAX_BG:-}" '
function sortv(key, v,    n, i, j, t) {
	n = split(vals[key], v, " ")
	for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
	return n
}
function median(key,    n, v) {
	if (vals[key] == "") return ""
	n = sortv(key, v)
	return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
function fmt(x) {
	if (x == "") return "-"
	x += 0
	return (x >= 100 || x <= -100) ? sprintf("%.0f", x) : (x >= 10 || x <= -10) ? sprintf("%.1f", x) : (x >= 0.1 || x == 0) ? sprintf("%.2f", x) : sprintf("%.3f", x)
}
function cell(key,    n, v, m) {
	if (vals[key] == "") return "-"
	n = sortv(key, v)
	m = fmt(median(key))
	return n > 1 ? m " [" fmt(v[1]) "–" fmt(v[n]) "]" : m
}
function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "-" : sprintf("%.2f", a / b) }
{
	delete r
	for (i = 1; i <= NF; i++) { k = substr($i, 1, index($i, "=") - 1); r[k] = substr($i, index($i, "=") + 1) }
	if ("skipped" in r) { skipped = skipped "\n  " r["server"] ": " r["skipped"]; next }
	if ("aborted" in r) { aborted = aborted "\n  " $0; next }
	if (!("scenario" in r)) next
	if (max_bg != "" && r["bg_cores"] + 0 > max_bg + 0) { busy++; next }
	sc = r["scenario"]; s = r["server"]
	if (sc == "small-chan-32") { key = sc SUBSEP "pin" r["pin"]; pinruns[r["pin"]]++ } else { if (r["pin"] != pin) next; key = sc SUBSEP s }
	if (!(sc in seen_sc)) { seen_sc[sc] = 1; scs[++nsc] = sc }
	if (!(s in seen_s)) { seen_s[s] = 1; srvs[++ns] = s }
	runs[key]++
	for (k in r) if (r[k] ~ /^-?[0-9.]+$/) vals[key, k] = vals[key, k] (vals[key, k] == "" ? "" : " ") r[k]
}
END {
	flow = "pps:relayed pkt/s (both ways);mbps:payload Mbit/s;loss_pct:loss %;us_per_pkt:server µs CPU / relayed pkt;rtt_p50_us:RTT p50 µs;rtt_p99_us:RTT p99 µs;jitter_ms:jitter ms (RFC 3550);srv_cores:server cores;gen_cores:turnload cores;bg_cores:background cores"
	alloc = "allocs_per_s:allocations/s;us_per_alloc:server µs CPU / allocation;kb_per_1000_allocs:RSS MB per 1000 held allocations;deallocs_per_s:deallocations/s;us_per_dealloc:server µs CPU / deallocation;alloc_errors:failed allocations;bg_cores:background cores"
	# ratio rows: the figures the comparison is carried on
	want["us_per_pkt"] = want["loss_pct"] = want["us_per_alloc"] = want["kb_per_1000_allocs"] = want["pps"] = want["allocs_per_s"] = want["rtt_p99_us"] = 1
	hdr = "| scenario | figure |"; sep = "|---|---|"
	order_n = 0
	for (i = 1; i <= ns; i++) if (srvs[i] == "icegate") olist[++order_n] = srvs[i]
	for (i = 1; i <= ns; i++) if (srvs[i] != "icegate") olist[++order_n] = srvs[i]
	for (i = 1; i <= order_n; i++) { hdr = hdr " " olist[i] " |"; sep = sep "---|" }
	has_ratio = ("icegate" in seen_s) && ("coturn" in seen_s)
	if (has_ratio) { hdr = hdr " icegate / coturn |"; sep = sep "---|" }
	print "\nMedians [min–max] over the runs (pin=" pin "); runs per server in brackets after the scenario.\n"
	print hdr; print sep
	for (a = 1; a <= nsc; a++) {
		sc = scs[a]
		if (sc == "small-chan-32") continue
		nf = split(sc == "alloc" ? alloc : flow, figs, ";")
		label = sc " ("
		for (i = 1; i <= order_n; i++) label = label (i > 1 ? "/" : "") (runs[sc SUBSEP olist[i]] + 0)
		label = label ")"
		first = 1
		for (f = 1; f <= nf; f++) {
			split(figs[f], kv, ":")
			key = kv[1]; desc = kv[2]
			if (key == "kb_per_1000_allocs") scale = 1 / 1000; else scale = 1
			any = 0; line = "| " (first ? label : "") " | " desc " |"
			for (i = 1; i <= order_n; i++) {
				k = sc SUBSEP olist[i] SUBSEP key
				if (vals[k] != "") any = 1
				if (scale != 1 && vals[k] != "") { n = split(vals[k], v, " "); vals[k] = ""; for (j = 1; j <= n; j++) vals[k] = vals[k] (j > 1 ? " " : "") v[j] * scale }
				line = line " " cell(k) " |"
			}
			if (!any) continue
			if (has_ratio) line = line " " (key in want ? ratio(median(sc SUBSEP "icegate" SUBSEP key), median(sc SUBSEP "coturn" SUBSEP key)) : "") " |"
			print line; first = 0
		}
	}
	if (pinruns[1] + pinruns[0] > 0) {
		k1 = "small-chan-32" SUBSEP "pin1"; k0 = "small-chan-32" SUBSEP "pin0"
		print "\nicegate, 170 B ChannelData flood from 32 clients, pinned (server CPU 1, turnload CPU 0) and unpinned:\n"
		print "| figure | pinned (" (pinruns[1] + 0) ") | unpinned (" (pinruns[0] + 0) ") | unpinned / pinned |"
		print "|---|---|---|---|"
		split("pps:relayed pkt/s;us_per_pkt:server µs CPU / relayed pkt;loss_pct:loss %;srv_cores:server cores;gen_cores:turnload cores;bg_cores:background cores;srv_threads:server threads", pf, ";")
		for (f = 1; f in pf; f++) {
			split(pf[f], kv, ":"); key = kv[1]; desc = kv[2]
			print "| " desc " | " cell(k1 SUBSEP key) " | " cell(k0 SUBSEP key) " | " (key == "pps" || key == "us_per_pkt" ? ratio(median(k0 SUBSEP key), median(k1 SUBSEP key)) : "") " |"
		}
	}
	if (busy) print "\n(" busy " runs left out: other processes used more than " max_bg " cores)"
	if (skipped != "") print "\nservers left out:" skipped
	if (aborted != "") print "\naborted runs:" aborted
}' "$1"
}

if [[ -n $SUMMARIZE ]]; then
	table "$SUMMARIZE"
	exit 0
fi

OUT_DIR=${OUT_DIR:-$(mktemp -d -t icegate-turn.XXXXXX)}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
RESULTS=$OUT_DIR/results.txt
TURN_PORT=${TURN_PORT:-13478}
RELAY_PORTS=${RELAY_PORTS:-20000-29999}
MIN_PORT=${RELAY_PORTS%-*} MAX_PORT=${RELAY_PORTS#*-}
SERVER_CPUS=${SERVER_CPUS:-1} GEN_CPUS=${GEN_CPUS:-0}
QUIET_CORES=${QUIET_CORES:-0.3} QUIET_WAIT=${QUIET_WAIT:-20}
# 2000 allocations are 2000 relay sockets in the server and 2000 client sockets in turnload.
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited || $NOFILE -gt 65536 ]] && NOFILE=65536

# ---- builds and tools ----
if [[ -z ${ICEGATE_BIN:-} ]]; then
	cargo build --release --quiet --manifest-path "$root/Cargo.toml" || { echo "icegate does not build" >&2; exit 2; }
	ICEGATE_BIN=${CARGO_TARGET_DIR:-$root/target}/release/icegate
fi
[[ -x $ICEGATE_BIN ]] || { echo "no icegate binary at $ICEGATE_BIN" >&2; exit 2; }
# turnload has its own lock file and dependencies: keep its build apart from icegate's.
turnload_target=${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/turnload}
turnload_target=${turnload_target:-$here/turnload/target}
CARGO_TARGET_DIR=$turnload_target cargo build --release --quiet --manifest-path "$here/turnload/Cargo.toml" ||
	{ echo "turnload does not build" >&2; exit 2; }
TURNLOAD=$turnload_target/release/turnload

install_coturn() {
	command -v turnserver >/dev/null && return 0
	command -v apt-get >/dev/null && [[ $(id -u) == 0 ]] || return 1
	echo "installing coturn (apt-get); its service is not started" >&2
	# policy-rc.d 101 keeps the package's maintainer scripts from starting the service.
	local policy=/usr/sbin/policy-rc.d made=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1
	fi
	apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn >/dev/null
	local rc=$?
	((made)) && rm -f "$policy"
	return $rc
}

SERVER_LIST=()
for s in $SERVERS; do
	case $s in
	icegate) SERVER_LIST+=(icegate) ;;
	coturn)
		if install_coturn; then SERVER_LIST+=(coturn); else echo "coturn not installed and cannot be (apt-get install coturn); left out" >&2; fi
		;;
	turn-rs)
		# Read from turn-server 4.1.5's source (src/service/routing.rs, session/mod.rs).
		echo "turn-rs left out: turn-server relays only between its own allocations (\"virtual ports\": a peer must be" \
			"its own external address and the port of another of its sessions), never to a UDP peer; see bench/README.md" >&2
		echo "server=turn-rs skipped=relays_only_between_its_own_allocations" >>"$RESULTS"
		;;
	*) echo "unknown server $s (icegate, coturn, turn-rs)" >&2; exit 2 ;;
	esac
done
[[ ${#SERVER_LIST[@]} -gt 0 ]] || { echo "no server to run" >&2; exit 2; }

# ---- machine ----
TICK=$(getconf CLK_TCK)
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
wait_quiet() { # the machine may be shared: start when the rest of it is (nearly) idle, or give up waiting
	local waited=0 a b
	while ((waited < QUIET_WAIT)); do
		a=$(busy_ticks); sleep 1; b=$(busy_ticks)
		awk -v d=$((b - a)) -v t="$TICK" -v q="$QUIET_CORES" 'BEGIN{exit !(d / t < q)}' && return 0
		((waited++))
	done
	echo "  (machine still busy after ${QUIET_WAIT} s, running anyway; see bg_cores)" >&2
}
udp_bound() { [[ -n $(ss -Huln "sport = :$1" 2>/dev/null) ]]; }
while udp_bound "$TURN_PORT"; do ((TURN_PORT++)); done

write_icegate_config() {
	cat >"$OUT_DIR/icegate.toml" <<TOML
# Generated by bench/turn.sh: UDP on loopback, one static user, the same settings coturn gets.
realm = "bench.local"
# Allocations are released by turnload; a short grace keeps a SIGTERM from waiting long.
shutdown-grace = "2s"
[log]
level = "info"
[[listen]]
address = "127.0.0.1:$TURN_PORT"
transport = "udp"
[relay]
addresses = ["127.0.0.1"]
ports = "$MIN_PORT-$MAX_PORT"
allow-peers = ["127.0.0.0/8"]
# coturn has no quota by default; the alloc scenario holds 2000 allocations of one user.
max-allocations = 100000
max-allocations-per-user = 100000
# coturn has no bandwidth cap by default either; the big scenarios relay more than 40 Mbit/s.
max-bps = "unlimited"
[auth]
[[auth.users]]
name = "bench"
password = "bench"
[admin]
# Any free port: the default 9641 may be taken by another icegate on the machine.
address = "127.0.0.1:0"
TOML
	"$ICEGATE_BIN" check-config --config "$OUT_DIR/icegate.toml" >"$OUT_DIR/icegate.check.log" 2>&1 ||
		{ echo "icegate rejects the generated config:" >&2; cat "$OUT_DIR/icegate.check.log" >&2; exit 2; }
}

SPID=""
stop_server() {
	[[ -n $SPID ]] || return 0
	kill -TERM "$SPID" 2>/dev/null
	for ((i = 0; i < 50; i++)); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$SPID" 2>/dev/null; then
		echo "  server $SPID did not stop in 5 s after SIGTERM; SIGKILL" >&2
		kill -KILL "$SPID" 2>/dev/null
	fi
	wait "$SPID" 2>/dev/null
	SPID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

start_server() { # name pin log
	local name=$1 pin=$2 log=$3 spin=()
	((pin)) && spin=(taskset -c "$SERVER_CPUS")
	case $name in
	icegate)
		(ulimit -n "$NOFILE" && exec "${spin[@]}" "$ICEGATE_BIN" run --config "$OUT_DIR/icegate.toml") >"$log" 2>&1 &
		;;
	coturn)
		rm -f "$OUT_DIR/turndb"
		# -n: no config file; --userdb and --pidfile in OUT_DIR keep it away from system paths.
		(ulimit -n "$NOFILE" && exec "${spin[@]}" turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 \
			-p "$TURN_PORT" --min-port "$MIN_PORT" --max-port "$MAX_PORT" --lt-cred-mech --user bench:bench \
			--realm bench.local --userdb "$OUT_DIR/turndb" --allow-loopback-peers --no-cli --no-tls --no-dtls \
			--no-tcp --log-file "$log" --simple-log --no-stdout-log --pidfile "$OUT_DIR/coturn.pid") \
			>"$log.stdout" 2>&1 &
		;;
	esac
	SPID=$!
	for ((i = 0; i < 100; i++)); do
		udp_bound "$TURN_PORT" && { sleep 0.5; return 0; } # startup allocations settle before RSS is read
		kill -0 "$SPID" 2>/dev/null || break
		sleep 0.1
	done
	echo "  $name did not listen on UDP $TURN_PORT; see $log" >&2
	stop_server
	return 1
}

run_one() { # server scenario rep pin [name and turnload args]
	local server=$1 scenario=$2 rep=$3 pin=$4 name=${5:-$2} base gpin=()
	shift 5 2>/dev/null || shift $#
	((pin)) && gpin=(taskset -c "$GEN_CPUS")
	base=$OUT_DIR/$server-$name-r$rep-p$pin
	wait_quiet
	start_server "$server" "$pin" "$base.server.log" || {
		echo "server=$server scenario=$name rep=$rep pin=$pin aborted=server_did_not_start" >>"$RESULTS"
		return
	}
	echo "== $server $name rep=$rep pin=$pin pid=$SPID" >&2
	(ulimit -n "$NOFILE" && exec "${gpin[@]}" timeout 300 "$TURNLOAD" --scenario "$scenario" --name "$name" \
		--server "127.0.0.1:$TURN_PORT" --pid "$SPID" --label "server=$server rep=$rep pin=$pin" "$@" "${GEN_ARGS[@]}") \
		>>"$RESULTS" 2>"$base.gen.log" || echo "  turnload exit $? (see $base.gen.log)" >&2
	sed 's/^/  /' "$base.gen.log" >&2
	stop_server
}

write_icegate_config
where="server and turnload on any CPU"
((PIN)) && where="server on CPU $SERVER_CPUS, turnload on CPU $GEN_CPUS"
echo "results: $RESULTS (pin=$PIN: $where; TURN port $TURN_PORT, relay ports $RELAY_PORTS)" >&2
for ((rep = 1; rep <= REPS; rep++)); do
	# Alternate the order so a slow drift of background load hits every server alike.
	order=("${SERVER_LIST[@]}")
	if ((rep % 2 == 0)); then
		order=()
		for ((k = ${#SERVER_LIST[@]} - 1; k >= 0; k--)); do order+=("${SERVER_LIST[k]}"); done
	fi
	for scenario in $SCENARIOS; do
		if [[ $scenario == unpinned-vs-pinned ]]; then
			run_one icegate small-chan "$rep" 1 small-chan-32 --clients 32
			run_one icegate small-chan "$rep" 0 small-chan-32 --clients 32
			continue
		fi
		for server in "${order[@]}"; do run_one "$server" "$scenario" "$rep" "$PIN"; done
	done
done

table "$RESULTS"
echo
echo "raw result lines: $RESULTS; configs and logs in $OUT_DIR"
