#!/usr/bin/env bash
# TCP allocations (RFC 6062): icegate's TCP relay beside coturn's, on loopback.
#
# Usage: bench/tcp-relay.sh [-r REPS] [-m CLIENTS] [-n MESSAGES] [-l LENGTH]
#                           [-z MS] [-o OUT_DIR] [--no-pin] [--table FILE]
#   -r REPS       runs per server (default 3); the table shows medians [min-max]
#   -m CLIENTS    uclient clients, each with a TCP allocation (default 4)
#   -n MESSAGES   messages each client sends (default 5000)
#   -l LENGTH     bytes per message (default 1000)
#   -z MS         interval between a client's messages, ms (default 1)
#   -o OUT_DIR    results.txt, configs and logs (default: a fresh dir under /tmp)
#   --no-pin      no taskset; by default the server runs on CPU $SERVER_CPUS (1)
#                 and uclient on CPU $GEN_CPUS (0)
#   --table FILE  only print the table of an earlier results.txt
#
# The load is coturn's own client, `turnutils_uclient -T` (Debian package
# coturn): every client allocates a TCP relay over a TCP connection, connects
# to every other client's relayed address (Connect, ConnectionAttempt,
# ConnectionBind) and sends its messages over those connections. Each server
# runs as a fresh process per run and is stopped by its PID. Figures per run:
# server CPU (utime + stime from /proc/PID/stat around the uclient run), peak
# RSS (VmHWM), the messages and bytes uclient sent and received, and its loss.
#
# Environment: ICEGATE_BIN (a binary to use instead of cargo build --release),
# CARGO_TARGET_DIR, TURN_PORT (13578), RELAY_PORTS (20000-29999), SERVER_CPUS,
# GEN_CPUS, QUIET_CORES (0.3) and QUIET_WAIT (20 s): before each run wait until
# the rest of the machine is idle.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
REPS=3 OUT_DIR="" PIN=1 SUMMARIZE=""
CLIENTS=4 MESSAGES=5000 LENGTH=1000 INTERVAL=1
while [[ $# -gt 0 ]]; do
	case $1 in
	-r) REPS=$2; shift 2 ;;
	-m) CLIENTS=$2; shift 2 ;;
	-n) MESSAGES=$2; shift 2 ;;
	-l) LENGTH=$2; shift 2 ;;
	-z) INTERVAL=$2; shift 2 ;;
	-o) OUT_DIR=$2; shift 2 ;;
	--no-pin) PIN=0; shift ;;
	--table) SUMMARIZE=$2; shift 2 ;;
	-h | --help) sed -n '2,27p' "$0"; exit 0 ;;
	*) echo "unknown argument $1 (-h for help)" >&2; exit 2 ;;
	esac
done

# ---- table: medians per (figure, server), ratios icegate / coturn ----
table() { # results.txt
awk '
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
function cell(key,    n, v) {
	if (vals[key] == "") return "-"
	n = sortv(key, v)
	return n > 1 ? fmt(median(key)) " [" fmt(v[1]) "–" fmt(v[n]) "]" : fmt(median(key))
}
function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "-" : sprintf("%.2f", a / b) }
{
	delete r
	for (i = 1; i <= NF; i++) { k = substr($i, 1, index($i, "=") - 1); r[k] = substr($i, index($i, "=") + 1) }
	if ("aborted" in r) { aborted = aborted "\n  " $0; next }
	if (!("server" in r)) next
	s = r["server"]
	if (!(s in seen)) { seen[s] = 1; srvs[++ns] = s }
	if (load == "") load = "-m " r["clients"] " -n " r["messages"] " -l " r["length"] " -z " r["interval_ms"] ", pin=" r["pin"]
	runs[s]++
	for (k in r) if (r[k] ~ /^-?[0-9.]+$/) vals[s, k] = vals[s, k] (vals[s, k] == "" ? "" : " ") r[k]
}
END {
	figs = "cpu_ms_per_mb:server CPU ms / relayed MB;rss_peak_mb:server peak RSS MB (VmHWM);loss_pct:loss %;lost:lost messages;cpu_ms:server CPU ms;recv_mb:MB received by uclient;sent_mb:MB sent by uclient;wall_s:uclient wall s;bg_cores:background cores;srv_threads:server threads"
	want["cpu_ms_per_mb"] = want["rss_peak_mb"] = want["loss_pct"] = want["cpu_ms"] = 1
	order_n = 0
	for (i = 1; i <= ns; i++) if (srvs[i] == "icegate") olist[++order_n] = srvs[i]
	for (i = 1; i <= ns; i++) if (srvs[i] != "icegate") olist[++order_n] = srvs[i]
	hdr = "| figure |"; sep = "|---|"
	for (i = 1; i <= order_n; i++) { hdr = hdr " " olist[i] " (" runs[olist[i]] ") |"; sep = sep "---|" }
	has_ratio = ("icegate" in seen) && ("coturn" in seen)
	if (has_ratio) { hdr = hdr " icegate / coturn |"; sep = sep "---|" }
	print "\nturnutils_uclient -T " load "; medians [min–max], runs per server in brackets.\n"
	print hdr; print sep
	nf = split(figs, f, ";")
	for (j = 1; j <= nf; j++) {
		split(f[j], kv, ":"); key = kv[1]
		line = "| " kv[2] " |"
		for (i = 1; i <= order_n; i++) line = line " " cell(olist[i] SUBSEP key) " |"
		if (has_ratio) line = line " " (key in want ? ratio(median("icegate" SUBSEP key), median("coturn" SUBSEP key)) : "") " |"
		print line
	}
	if (aborted != "") print "\naborted runs:" aborted
}' "$1"
}

if [[ -n $SUMMARIZE ]]; then
	table "$SUMMARIZE"
	exit 0
fi

OUT_DIR=${OUT_DIR:-$(mktemp -d -t icegate-tcp-relay.XXXXXX)}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
RESULTS=$OUT_DIR/results.txt
TURN_PORT=${TURN_PORT:-13578}
RELAY_PORTS=${RELAY_PORTS:-20000-29999}
MIN_PORT=${RELAY_PORTS%-*} MAX_PORT=${RELAY_PORTS#*-}
SERVER_CPUS=${SERVER_CPUS:-1} GEN_CPUS=${GEN_CPUS:-0}
QUIET_CORES=${QUIET_CORES:-0.3} QUIET_WAIT=${QUIET_WAIT:-20}
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited || $NOFILE -gt 65536 ]] && NOFILE=65536

# ---- builds and tools ----
if [[ -z ${ICEGATE_BIN:-} ]]; then
	cargo build --release --quiet --manifest-path "$root/Cargo.toml" || { echo "icegate does not build" >&2; exit 2; }
	ICEGATE_BIN=${CARGO_TARGET_DIR:-$root/target}/release/icegate
fi
[[ -x $ICEGATE_BIN ]] || { echo "no icegate binary at $ICEGATE_BIN" >&2; exit 2; }

install_coturn() {
	command -v turnserver >/dev/null && command -v turnutils_uclient >/dev/null && return 0
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
# uclient is the load for both servers: without coturn's package there is nothing to run.
install_coturn || { echo "coturn not installed and cannot be (apt-get install coturn): no turnutils_uclient" >&2; exit 2; }

# ---- machine ----
TICK=$(getconf CLK_TCK)
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; } # utime + stime, all threads
wait_quiet() { # the machine may be shared: start when the rest of it is (nearly) idle, or give up waiting
	local waited=0 a b
	while ((waited < QUIET_WAIT)); do
		a=$(busy_ticks); sleep 1; b=$(busy_ticks)
		awk -v d=$((b - a)) -v t="$TICK" -v q="$QUIET_CORES" 'BEGIN{exit !(d / t < q)}' && return 0
		((waited++))
	done
	echo "  (machine still busy after ${QUIET_WAIT} s, running anyway; see bg_cores)" >&2
}
tcp_bound() { [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }
udp_bound() { [[ -n $(ss -Huln "sport = :$1" 2>/dev/null) ]]; }
while tcp_bound "$TURN_PORT" || udp_bound "$TURN_PORT"; do ((TURN_PORT++)); done

write_icegate_config() {
	cat >"$OUT_DIR/icegate.toml" <<TOML
# Generated by bench/tcp-relay.sh: TCP on loopback, one static user, the same settings coturn gets.
realm = "bench.local"
shutdown-grace = "2s"
[log]
level = "info"
[[listen]]
address = "127.0.0.1:$TURN_PORT"
transport = "tcp"
[relay]
addresses = ["127.0.0.1"]
ports = "$MIN_PORT-$MAX_PORT"
allow-peers = ["127.0.0.0/8"]
# coturn has no quota, no cap on a TCP allocation's peer connections and no
# bandwidth cap by default.
max-allocations = 100000
max-allocations-per-user = 100000
max-tcp-connections-per-allocation = 1024
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
		# As in turn.sh, with TCP: no --no-tcp (coturn then listens on TCP and UDP on the port).
		(ulimit -n "$NOFILE" && exec "${spin[@]}" turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 \
			-p "$TURN_PORT" --min-port "$MIN_PORT" --max-port "$MAX_PORT" --lt-cred-mech --user bench:bench \
			--realm bench.local --userdb "$OUT_DIR/turndb" --allow-loopback-peers --no-cli --no-tls --no-dtls \
			--log-file "$log" --simple-log --no-stdout-log --pidfile "$OUT_DIR/coturn.pid") \
			>"$log.stdout" 2>&1 &
		;;
	esac
	SPID=$!
	for ((i = 0; i < 100; i++)); do
		tcp_bound "$TURN_PORT" && { sleep 0.5; return 0; }
		kill -0 "$SPID" 2>/dev/null || break
		sleep 0.1
	done
	echo "  $name did not listen on TCP $TURN_PORT; see $log" >&2
	stop_server
	return 1
}

# uclient's summary: the last lines without the per-second `msz=`.
summary_num() { # file needle -> the number after needle in the last summary line holding it
	grep -v 'msz=' "$1" | grep -F "$2" | tail -1 | sed -e "s/.*$2 *//" -e 's/[^0-9.].*//'
}

run_one() { # server rep
	local server=$1 rep=$2 base gpin=() t0 t1 c0 c1 b0 b1 rc label gen0
	((PIN)) && gpin=(taskset -c "$GEN_CPUS")
	base=$OUT_DIR/$server-r$rep
	label="server=$server rep=$rep pin=$PIN clients=$CLIENTS messages=$MESSAGES length=$LENGTH interval_ms=$INTERVAL"
	wait_quiet
	start_server "$server" "$PIN" "$base.server.log" || { echo "$label aborted=server_did_not_start" >>"$RESULTS"; return; }
	echo "== $server rep=$rep pid=$SPID" >&2
	local threads rss0
	threads=$(awk '/^Threads:/{print $2}' "/proc/$SPID/status")
	rss0=$(awk '/^VmRSS:/{print $2}' "/proc/$SPID/status")
	gen0=$(awk '{print $16 + $17}' /proc/$$/stat)
	c0=$(proc_ticks "$SPID"); b0=$(busy_ticks); t0=$(date +%s.%N)
	(exec "${gpin[@]}" timeout 300 turnutils_uclient -T -u bench -w bench -n "$MESSAGES" -m "$CLIENTS" \
		-l "$LENGTH" -z "$INTERVAL" -p "$TURN_PORT" 127.0.0.1) >"$base.uclient.log" 2>&1
	rc=$?
	t1=$(date +%s.%N); c1=$(proc_ticks "$SPID"); b1=$(busy_ticks)
	local hwm rss1 gen
	hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$SPID/status" 2>/dev/null)
	rss1=$(awk '/^VmRSS:/{print $2}' "/proc/$SPID/status" 2>/dev/null)
	# uclient's CPU, for bg_cores: once reaped it counts in this shell's cutime + cstime.
	gen=$(awk '{print $16 + $17}' /proc/$$/stat)
	if [[ -z $c1 ]]; then
		echo "$label aborted=server_exited_during_run uclient_rc=$rc" >>"$RESULTS"
		echo "  $server exited during the run; see $base.server.log" >&2
		SPID=""
		return
	fi
	local sm rm sb rb lost
	sm=$(summary_num "$base.uclient.log" "tot_send_msgs=")
	rm=$(summary_num "$base.uclient.log" "tot_recv_msgs=")
	sb=$(summary_num "$base.uclient.log" "tot_send_bytes ~")
	rb=$(summary_num "$base.uclient.log" "tot_recv_bytes ~")
	lost=$(summary_num "$base.uclient.log" "Total lost packets")
	if [[ -z $sm || -z $rb || -z $lost ]]; then
		echo "$label aborted=no_uclient_summary uclient_rc=$rc" >>"$RESULTS"
		echo "  uclient printed no summary (exit $rc); see $base.uclient.log" >&2
		stop_server
		return
	fi
	awk -v label="$label" -v rc="$rc" -v t="$TICK" -v c0="$c0" -v c1="$c1" -v b0="$b0" -v b1="$b1" \
		-v g0="$gen0" -v g1="$gen" -v w0="$t0" -v w1="$t1" -v sm="$sm" -v rm="$rm" -v sb="$sb" -v rb="$rb" \
		-v lost="$lost" -v hwm="$hwm" -v rss0="$rss0" -v rss1="$rss1" -v threads="$threads" 'BEGIN {
		wall = w1 - w0; cpu_ms = (c1 - c0) * 1000 / t; gen_s = (g1 - g0) / t
		bg = ((b1 - b0) - (c1 - c0) - (g1 - g0)) / t / wall; if (bg < 0) bg = 0
		printf "%s uclient_rc=%d wall_s=%.2f srv_threads=%d sent_msgs=%d recv_msgs=%d sent_mb=%.3f recv_mb=%.3f lost=%d loss_pct=%.3f", \
			label, rc, wall, threads, sm, rm, sb / 1e6, rb / 1e6, lost, sm ? lost * 100 / sm : 0
		printf " cpu_ms=%.0f cpu_ms_per_mb=%.3f srv_cores=%.3f gen_cores=%.3f bg_cores=%.3f rss_start_kb=%d rss_end_kb=%d rss_peak_kb=%d rss_peak_mb=%.2f\n", \
			cpu_ms, rb ? cpu_ms / (rb / 1e6) : 0, cpu_ms / 1000 / wall, gen_s / wall, bg, rss0, rss1, hwm, hwm / 1024
	}' | tee -a "$RESULTS" | sed 's/^/  /' >&2
	grep -v 'msz=' "$base.uclient.log" | grep -E 'Total lost|round trip' | sed 's/^[0-9]*: : /  uclient: /' >&2
	stop_server
}

command -v turnserver >/dev/null || { echo "no turnserver" >&2; exit 2; }
write_icegate_config
where="server and uclient on any CPU"
((PIN)) && where="server on CPU $SERVER_CPUS, uclient on CPU $GEN_CPUS"
echo "results: $RESULTS (pin=$PIN: $where; TURN port $TURN_PORT, relay ports $RELAY_PORTS)" >&2
for ((rep = 1; rep <= REPS; rep++)); do
	# Alternate the order so a slow drift of background load hits both servers alike.
	if ((rep % 2)); then order=(icegate coturn); else order=(coturn icegate); fi
	for server in "${order[@]}"; do run_one "$server" "$rep"; done
done

table "$RESULTS"
echo
echo "raw result lines: $RESULTS; configs and logs in $OUT_DIR"
