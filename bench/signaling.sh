#!/usr/bin/env bash
# signaling.sh: icegate's WebSocket signaling under load on loopback. For each N,
# starts a fresh icegate (release build) with a generated config, drives it with
# bench/sigload, stops it by its PID; with --anchors, then measures the PeerJS
# server and y-webrtc's signaling server with the shared harness for the same N,
# and prints icegate beside them with ratios. With --nodes 2, also a cluster of two
# icegate nodes sharing one redis-server, each room with peers on both.
#
# usage: bench/signaling.sh [-n "1000 5000 10000"] [-r REPS] [-o OUT_DIR]
#        [--anchors] [--broadcast] [--nodes 2] [--no-pin] [-- SIGLOAD_ARGS...]
#
#   -n LIST     connection counts (default "1000 5000 10000")
#   -r REPS     repetitions per N, of icegate and of each anchor (default 1); the
#               table shows medians
#   -o OUT_DIR  results.txt, configs and logs (default: a fresh dir under /tmp)
#   --anchors   also run the shared harness (HARNESS, default
#               ../shared/bench/signaling/run-signaling-anchors.sh) for the same N; it is
#               copied to ANCHOR_DIR (default ~/.cache/icegate-bench/signaling-anchors)
#               and set up there (npm ci, its generator's build), never in place
#   --broadcast also run icegate with every signal a `broadcast` to the sender's room
#               (server=icegate-broadcast), the way y-webrtc's publish fans out: each
#               other member's copy counts as a delivery
#   --nodes 2   after each one-node run, the same load on two nodes (server=icegate-2nodes):
#               a redis-server (Debian package; free loopback port, no persistence) and
#               two icegate nodes with [cluster] sharing it; sigload's clients take the
#               two ports in turn within each room. Both nodes and Redis run on the
#               server's CPU, so the cluster has the one core a single node has; server
#               CPU and memory figures are the three processes together
#   --no-pin    no taskset; by default icegate runs on CPU $SERVER_CPUS (1) and the
#               generator on CPU $GEN_CPUS (0), as the harness pins its servers
#   -- ARGS     passed to every sigload run (e.g. -- --rooms 4-4 --window 128)
#
# Environment: CARGO_TARGET_DIR (where icegate and sigload are built), ICEGATE (a
# binary to use instead of building one), REDIS_SERVER (/usr/bin/redis-server),
# BASE_PORT (18600), SERVER_CPUS, GEN_CPUS, NOFILE (16384, or N + 1024 if larger;
# capped at the hard limit), QUIET_CORES (0.3)
# and QUIET_WAIT (20 s): before each run wait until the rest of the machine is idle;
# MAX_BG (e.g. 0.3): leave out of the table runs during which other processes used
# more cores than this in a signal phase.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
NS="1000 5000 10000" REPS=1 OUT_DIR="" ANCHORS=0 BROADCAST=0 NODES=1 PIN=1 GEN_ARGS=()
while [[ $# -gt 0 ]]; do
	case $1 in
	-n) NS=$2; shift 2 ;;
	-r) REPS=$2; shift 2 ;;
	-o) OUT_DIR=$2; shift 2 ;;
	--anchors) ANCHORS=1; shift ;;
	--broadcast) BROADCAST=1; shift ;;
	--nodes) NODES=$2; shift 2 ;;
	--no-pin) PIN=0; shift ;;
	--) shift; GEN_ARGS=("$@"); break ;;
	-h | --help) sed -n '2,39p' "$0"; exit 0 ;;
	*) echo "unknown argument $1 (-h for help)" >&2; exit 2 ;;
	esac
done

[[ $NODES == 1 || $NODES == 2 ]] || { echo "--nodes takes 1 or 2" >&2; exit 2; }
REDIS_SERVER=${REDIS_SERVER:-/usr/bin/redis-server}
if ((NODES > 1)) && [[ ! -x $REDIS_SERVER ]]; then
	echo "--nodes 2 needs $REDIS_SERVER: apt-get install redis-server" >&2; exit 2
fi
OUT_DIR=${OUT_DIR:-$(mktemp -d -t icegate-signaling.XXXXXX)}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
RESULTS=$OUT_DIR/results.txt
BASE_PORT=${BASE_PORT:-18600}
SERVER_CPUS=${SERVER_CPUS:-1} GEN_CPUS=${GEN_CPUS:-0}
QUIET_CORES=${QUIET_CORES:-0.3} QUIET_WAIT=${QUIET_WAIT:-20}
SPIN=() GPIN=()
((PIN)) && SPIN=(taskset -c "$SERVER_CPUS") GPIN=(taskset -c "$GEN_CPUS")

# ---- builds ----
if [[ -z ${ICEGATE:-} ]]; then
	cargo build --release --quiet --manifest-path "$root/Cargo.toml" || { echo "icegate does not build" >&2; exit 2; }
	ICEGATE=${CARGO_TARGET_DIR:-$root/target}/release/icegate
fi
[[ -x $ICEGATE ]] || { echo "no icegate binary at $ICEGATE" >&2; exit 2; }
# sigload has its own lock file and dependencies: keep its build apart from icegate's.
sigload_target=${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/sigload}
sigload_target=${sigload_target:-$here/sigload/target}
CARGO_TARGET_DIR=$sigload_target cargo build --release --quiet --manifest-path "$here/sigload/Cargo.toml" ||
	{ echo "sigload does not build" >&2; exit 2; }
SIGLOAD=$sigload_target/release/sigload

# ---- machine ----
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
wait_quiet() { # the machine may be shared: start when the rest of it is (nearly) idle, or give up waiting
	local waited=0 a b
	while ((waited < QUIET_WAIT)); do
		a=$(busy_ticks); sleep 1; b=$(busy_ticks)
		awk -v d=$((b - a)) -v q="$QUIET_CORES" 'BEGIN{exit !(d/100 < q)}' && return 0
		((waited++))
	done
	echo "  (machine still busy after ${QUIET_WAIT} s, running anyway; see *_bg_cores)" >&2
}
port=$BASE_PORT
free_port() { while [[ -n $(ss -ltnH "sport = :$port") ]]; do ((port++)); done; }
nofile_for() { # fds for N connections and some to spare, within the hard limit
	local want=$((${NOFILE:-16384} > $1 + 1024 ? ${NOFILE:-16384} : $1 + 1024)) hard
	hard=$(ulimit -Hn)
	[[ $hard != unlimited ]] && ((want > hard)) && want=$hard
	echo "$want"
}

write_config() { # file port n [redis-port node-name]
	local limit=$(($2 + 1000))
	cat >"$1" <<TOML
# Generated by bench/signaling.sh: signaling only, on loopback, limits raised for N = $3.
realm = "bench.local"
[log]
level = "info"
[[listen]]
address = "127.0.0.1:$2"
transport = "http"
[auth]
# TURN credentials are required by the config; the benchmark never uses them.
secrets = ["signaling-bench-only-0123456789abcdef"]
[connections]
max-connections = $limit
max-connections-per-ip = $limit
[signal]
auth = "none"
max-connections = $limit
max-connections-per-ip = $limit
# One client may send far more than a browser does in the closed-loop phase.
messages-per-second = 1000000
message-burst = 1000000
# With sigload --proto peerjs every client is in one key's room.
peerjs-max-peers = $limit
[admin]
# Unused here; any free port, so that two nodes side by side do not collide.
address = "127.0.0.1:0"
TOML
	if [[ -n ${4:-} ]]; then
		cat >>"$1" <<TOML
[cluster]
redis = "redis://127.0.0.1:$4"
node-name = "$5"
TOML
	fi
}

stop_server() { # pid [name]
	local i
	kill -TERM "$1" 2>/dev/null
	for ((i = 0; i < 50; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$1" 2>/dev/null; then
		echo "  ${2:-icegate} did not stop in 5 s after SIGTERM; SIGKILL" >&2
		kill -KILL "$1" 2>/dev/null
	fi
	wait "$1" 2>/dev/null
}

listening() { [[ -n $(ss -ltnH "sport = :$1") ]]; }
wait_listen() { # port pid: up to 10 s, while the process lives
	local i
	for ((i = 0; i < 100; i++)); do
		listening "$1" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.1
	done
	listening "$1"
}

# The servers of the current run (global, for the trap): nodes, and the Redis they share.
PIDS=() RPID=""
stop_all() { # the nodes before their Redis
	local p
	for p in "${PIDS[@]}"; do stop_server "$p"; done
	[[ -z $RPID ]] || stop_server "$RPID" redis-server
	PIDS=() RPID=""
}
trap 'stop_all; exit 130' INT TERM

run_one() { # nodes n rep [server-name sigload-args...]
	local nodes=$1 n=$2 rep=$3 name=${4:-icegate} base nofile i rport=""
	local extra=("${@:5}") ports=() cfgs=()
	base=$OUT_DIR/$name-n$n-r$rep
	nofile=$(nofile_for "$n")
	if ((nodes > 1)); then
		free_port; rport=$port; ((port++))
	fi
	for ((i = 0; i < nodes; i++)); do
		free_port; ports+=("$port"); ((port++))
		cfgs+=("$base${rport:+.node$i}.toml")
		write_config "${cfgs[i]}" "${ports[i]}" "$n" ${rport:+"$rport" "bench-$i"}
		"$ICEGATE" check-config --config "${cfgs[i]}" >"$base.check.log" 2>&1 ||
			{ echo "config rejected, see $base.check.log:" >&2; cat "$base.check.log" >&2; exit 2; }
	done
	wait_quiet
	if [[ -n $rport ]]; then
		# Redis as a cache only: no RDB snapshots, no AOF, nothing written to disk.
		"${SPIN[@]}" "$REDIS_SERVER" --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
			--protected-mode yes --logfile "$base.redis.log" &
		RPID=$!
		if ! wait_listen "$rport" "$RPID"; then
			echo "server=$name rep=$rep pin=$PIN n=$n aborted=redis_did_not_listen" >>"$RESULTS"
			echo "redis-server did not listen on $rport; log:" >&2; tail -n 20 "$base.redis.log" >&2
			stop_all; return
		fi
	fi
	for ((i = 0; i < nodes; i++)); do
		local log=$base${rport:+.node$i}.server.log
		(ulimit -n "$nofile" && exec "${SPIN[@]}" "$ICEGATE" run --config "${cfgs[i]}") >"$log" 2>&1 &
		PIDS+=("$!")
	done
	for ((i = 0; i < nodes; i++)); do
		wait_listen "${ports[i]}" "${PIDS[i]}" && continue
		echo "server=$name rep=$rep pin=$PIN n=$n aborted=server_did_not_listen" >>"$RESULTS"
		echo "icegate did not listen on ${ports[i]}; log:" >&2; tail -n 20 "$base${rport:+.node$i}.server.log" >&2
		stop_all; return
	done
	sleep 1 # startup allocations settle (and nodes meet in Redis) before the RSS before clients is read
	local port_list pid_list
	port_list=$(IFS=,; echo "${ports[*]}")
	pid_list=$(IFS=,; echo "${PIDS[*]}${RPID:+,$RPID}")
	echo "== $name n=$n rep=$rep port=$port_list pid=$pid_list nofile=$nofile" >&2
	(ulimit -n "$nofile" && exec "${GPIN[@]}" timeout 300 "$SIGLOAD" --port "$port_list" --pid "$pid_list" --n "$n" \
		--label "server=$name rep=$rep pin=$PIN" "${GEN_ARGS[@]}" "${extra[@]}") >>"$RESULTS" 2>"$base.gen.log" ||
		echo "  sigload exit $? (see $base.gen.log)" >&2
	sed -n '/^  clients/,$p' "$base.gen.log" >&2
	stop_all
	for ((i = 0; i < nodes; i++)); do
		local log=$base${rport:+.node$i}.server.log
		echo "  server log: $(wc -l <"$log") lines, $(grep -c -i -E 'warn|error' "$log") warnings/errors ($log)" >&2
		# Whether the node took part in the cluster, in its own words.
		[[ -n $rport ]] && grep -m 2 -i 'cluster' "$log" | sed 's/^/    /' >&2
	done
}

echo "results: $RESULTS (pin=$PIN, server ${SPIN[*]:-any CPU}, generator ${GPIN[*]:-any CPU})" >&2
((NODES > 1)) && echo "two nodes: both icegate nodes and redis-server on ${SPIN[*]:-any CPU}, where the single node runs; their server figures are the three processes summed" >&2
for ((rep = 1; rep <= REPS; rep++)); do
	for n in $NS; do
		run_one 1 "$n" "$rep"
		((NODES > 1)) && run_one "$NODES" "$n" "$rep" icegate-2nodes
		((BROADCAST)) && run_one 1 "$n" "$rep" icegate-broadcast --broadcast 1
		((BROADCAST && NODES > 1)) && run_one "$NODES" "$n" "$rep" icegate-2nodes-broadcast --broadcast 1
	done
done

# ---- anchors ----
ANCHOR_RESULTS=""
if ((ANCHORS)); then
	harness=${HARNESS:-$root/../shared/bench/signaling/run-signaling-anchors.sh}
	[[ -x $harness ]] || harness=/work/shared/bench/signaling/run-signaling-anchors.sh
	if [[ ! -x $harness ]]; then
		echo "anchor harness not found (set HARNESS)" >&2
	else
		src=$(dirname "$harness")
		ANCHOR_DIR=${ANCHOR_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/icegate-bench/signaling-anchors}
		# A private copy: the harness installs node_modules and builds its generator beside itself.
		if ! cmp -s "$src/package-lock.json" "$ANCHOR_DIR/package-lock.json" || ! diff -rq "$src/siggen/src" "$ANCHOR_DIR/siggen/src" >/dev/null 2>&1; then
			rm -rf "$ANCHOR_DIR" && mkdir -p "$ANCHOR_DIR"
			(cd "$src" && tar --exclude=node_modules --exclude=target -cf - .) | (cd "$ANCHOR_DIR" && tar -xf -)
			chmod -R u+w "$ANCHOR_DIR"
		fi
		if [[ ! -d $ANCHOR_DIR/node_modules/peer ]]; then
			(cd "$ANCHOR_DIR" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed in $ANCHOR_DIR" >&2; exit 2; }
		fi
		pin_arg=()
		((PIN)) || pin_arg=(--no-pin)
		echo "== anchors (PeerJS, y-webrtc) from $ANCHOR_DIR" >&2
		# The harness looks for its generator in its own siggen/target.
		env -u CARGO_TARGET_DIR "$ANCHOR_DIR/run-signaling-anchors.sh" -r "$REPS" -n "$NS" -o "$OUT_DIR/anchors" "${pin_arg[@]}" >"$OUT_DIR/anchors.summary" 2>&1 ||
			echo "  anchor harness exit $? (see $OUT_DIR/anchors.summary)" >&2
		ANCHOR_RESULTS=$OUT_DIR/anchors/results.txt
		[[ -f $ANCHOR_RESULTS ]] || { echo "no anchor results; see $OUT_DIR/anchors.summary" >&2; ANCHOR_RESULTS=""; }
	fi
fi

# ---- table: medians per (server, N), then anchor ÷ icegate ----
awk -v pin="$PIN" -v max_bg="${MAX_BG:-}" '
function median(key,    n, i, j, t, v) {
	n = split(vals[key], v, " ")
	if (n == 0 || vals[key] == "") return ""
	for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
	return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
function fmt(x) {
	if (x == "" || x == "-") return "-"
	x += 0
	return (x >= 100 || x <= -100) ? sprintf("%.0f", x) : (x >= 10 || x <= -10) ? sprintf("%.1f", x) : sprintf("%.2f", x)
}
function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "-" : sprintf("%.2f", a / b) }
{
	delete r
	for (i = 1; i <= NF; i++) { k = substr($i, 1, index($i, "=") - 1); r[k] = substr($i, index($i, "=") + 1) }
	if (!("server" in r) || r["pin"] != pin || ("aborted" in r)) { if ("aborted" in r) aborted = aborted "\n  " $0; next }
	# how busy the rest of the machine was in the busier of the two signal phases
	if (r["f_bg_cores"] ~ /^-?[0-9.]+$/ && r["m_bg_cores"] ~ /^-?[0-9.]+$/) r["bg_max"] = (r["f_bg_cores"] > r["m_bg_cores"] + 0) ? r["f_bg_cores"] : r["m_bg_cores"]
	if (max_bg != "" && ("bg_max" in r) && r["bg_max"] > max_bg + 0) { busy++; next }
	s = r["server"]; n = r["n"]
	if (!((s, n) in seen)) { seen[s, n] = 1; rows[++nrows] = s SUBSEP n; if (!(n in ns)) { ns[n] = 1; nlist[++nn] = n } }
	runs[s, n]++
	for (k in r) if (r[k] != "-" && r[k] ~ /^-?[0-9.]+$/) vals[s, n, k] = vals[s, n, k] (vals[s, n, k] == "" ? "" : " ") r[k]
}
END {
	split("conn_ok rss_kb_per_conn conn_cpu_us idle_cpu_pct f_deliv_pct f_p50_ms f_p99_ms f_cpu_us_per_msg m_msgs_per_s m_cpu_us_per_msg m_srv_cores m_gen_cores bg_max rss_closed_kb", cols, " ")
	print "\n| N | server | runs | joined | RSS KB/conn | srv µs/join | idle CPU % | fixed deliv % | p50 ms | p99 ms | srv µs/deliv | max deliv/s | srv µs/deliv at max | srv cores | gen cores | bg cores | RSS closed MB |"
	print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for (a = 1; a <= nn; a++) for (pass = 1; pass <= 2; pass++) for (i = 1; i <= nrows; i++) {
		split(rows[i], sn, SUBSEP) # icegate first, then the anchors
		if (sn[2] != nlist[a] || (sn[1] ~ /^icegate/) != (pass == 1)) continue
		line = "| " sn[2] " | " sn[1] " | " runs[sn[1], sn[2]]
		for (c = 1; c <= 14; c++) {
			m = median(sn[1] SUBSEP sn[2] SUBSEP cols[c])
			if (cols[c] == "rss_closed_kb" && m != "") m = m / 1024
			line = line " | " (cols[c] == "conn_ok" ? (m == "" ? "-" : m) : fmt(m))
		}
		print line " |"
	}
	hdr = 0
	for (a = 1; a <= nn; a++) {
		n = nlist[a]
		for (v = 1; v <= 2; v++) {
		ours = v == 1 ? "icegate" : "icegate-broadcast"
		if (!((ours, n) in seen)) continue
		for (i = 1; i <= nrows; i++) {
			split(rows[i], sn, SUBSEP); s = sn[1]
			if (sn[2] != n || s ~ /^icegate/) continue
			if (!hdr++) {
				print "\nAnchor ÷ icegate (above 1: icegate uses less memory or CPU, has less delay; for max deliv/s, icegate ÷ anchor):\n"
				print "| N | icegate | anchor | RSS KB/conn | srv µs/join | srv µs/deliv (fixed) | p50 ms | p99 ms | srv µs/deliv at max | max deliv/s |"
				print "|---|---|---|---|---|---|---|---|---|---|"
			}
			g = ours SUBSEP n SUBSEP; o = s SUBSEP n SUBSEP
			print "| " n " | " ours " | " s " | " ratio(median(o "rss_kb_per_conn"), median(g "rss_kb_per_conn")) " | " ratio(median(o "conn_cpu_us"), median(g "conn_cpu_us")) \
				" | " ratio(median(o "f_cpu_us_per_msg"), median(g "f_cpu_us_per_msg")) " | " ratio(median(o "f_p50_ms"), median(g "f_p50_ms")) \
				" | " ratio(median(o "f_p99_ms"), median(g "f_p99_ms")) " | " ratio(median(o "m_cpu_us_per_msg"), median(g "m_cpu_us_per_msg")) \
				" | " ratio(median(g "m_msgs_per_s"), median(o "m_msgs_per_s")) " |"
		}
		}
	}
	# two nodes beside one, same N and mode: delivery, delay, highest rate
	hdr = 0
	split("cross_node_pct f_deliv_pct f_p50_ms f_p99_ms m_msgs_per_s m_p50_ms m_p99_ms m_cpu_us_per_msg m_srv_cores", two_cols, " ")
	for (a = 1; a <= nn; a++) {
		n = nlist[a]
		for (v = 1; v <= 2; v++) {
			one = v == 1 ? "icegate" : "icegate-broadcast"; two = v == 1 ? "icegate-2nodes" : "icegate-2nodes-broadcast"
			if (!((one, n) in seen) || !((two, n) in seen)) continue
			if (!hdr++) {
				print "\nTwo nodes (one Redis) beside one node; the cluster pinned to the one node'"'"'s CPU, its figures summed over both nodes and Redis:\n"
				print "| N | server | cross-node pairs % | fixed deliv % | p50 ms | p99 ms | max deliv/s | p50 ms at max | p99 ms at max | srv µs/deliv at max | srv cores |"
				print "|---|---|---|---|---|---|---|---|---|---|---|"
			}
			for (w = 1; w <= 2; w++) {
				s = w == 1 ? one : two
				line = "| " n " | " s
				for (c = 1; c <= 9; c++) line = line " | " fmt(median(s SUBSEP n SUBSEP two_cols[c]))
				print line " |"
			}
			line = "| " n " | 2 nodes ÷ 1"
			for (c = 1; c <= 9; c++) line = line " | " (c == 1 ? "" : ratio(median(two SUBSEP n SUBSEP two_cols[c]), median(one SUBSEP n SUBSEP two_cols[c])))
			print line " |"
		}
	}
	if (busy) print "\n(" busy " runs left out: other processes used more than " max_bg " cores)"
	if (aborted != "") print "\naborted runs:" aborted
}' "$RESULTS" ${ANCHOR_RESULTS:+"$ANCHOR_RESULTS"}
echo
echo "raw result lines: $RESULTS${ANCHOR_RESULTS:+ and $ANCHOR_RESULTS}; logs in $OUT_DIR"
