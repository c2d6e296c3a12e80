#!/bin/bash
# service.sh NEW.deb OLD.deb: the package as a running service. Boots a clean
# Debian root with systemd as PID 1 (systemd-nspawn, a network namespace of its
# own with only loopback, cgroup v2), installs OLD.deb with apt and checks:
#   - postinst started the unit: Type=notify READY (active/running), STATUS=,
#     watchdog, user icegate, only CAP_NET_BIND_SERVICE, no new privileges,
#     seccomp; listening on 3478 udp and tcp;
#   - STUN (turnutils_stunclient); TURN with the generated REST secret is
#     refused a loopback peer by the shipped config (EVENT=peer-refused), a
#     wrong secret is logged (EVENT=auth-failed); `journalctl -u icegate
#     EVENT=ready` finds the start, with the version and syslog identifier;
#   - tests/packaging/loopback.toml as the local config, applied by
#     `systemctl reload` (same MainPID; it adds a listener on port 443, which
#     needs CAP_NET_BIND_SERVICE): TURN over UDP and over TCP on 443 relays
#     every packet to turnutils_peer;
#   - a relay session spans `systemctl reload` with a good config that adds a
#     user (MainPID kept; the user can relay after it) and with a broken one
#     (the reload fails before the daemon sees it, the process keeps
#     serving), and every one of its packets comes back;
#   - icegate ctl status and kill through the admin listener;
#   - upgrade to NEW.deb restarts the service and keeps the local config and
#     the secret; a listener on an address that comes up after the start
#     answers once it does; stop exits 0; remove stops it; purge removes config, secret,
#     state and unit.
# The coturn package in the root provides the client tools; its own service is masked.
set -euo pipefail
TEST_NAME=service
. "$(dirname "$0")/lib.sh"
need_root
NEW=${1:?usage: service.sh NEW.deb OLD.deb}
OLD=${2:?usage: service.sh NEW.deb OLD.deb}
OVERRIDE=$PKGTEST_DIR/loopback.toml
PEER_PORT=3480
ALICE=alice-password-$$
LONG_PID=

finish() {
    if [ -n "$LONG_PID" ] && kill -0 "$LONG_PID" 2>/dev/null; then kill "$LONG_PID" 2>/dev/null || true; fi
    cleanup
}
trap finish EXIT
new_root
cp "$NEW" "$TEST_ROOT/root/pkgtest/new.deb"
cp "$OLD" "$TEST_ROOT/root/pkgtest/old.deb"
t0=$(date +%s)
boot_container
log "container booted in $(($(date +%s) - t0)) s"

prop() { in_ct systemctl show -P "$1" "$UNIT" 2>/dev/null || true; }
# Journal positions are entry counts: journalctl --after-cursor combined with
# field matches skips the first match (systemd 252).
# jcount FIELD=VALUE...: how many entries of the unit with those fields so far.
jcount() { in_ct journalctl -u "$UNIT" -o json --no-pager "$@" 2>/dev/null | wc -l; }
# journal_has N FIELD=VALUE...: more than N such entries, within ~10 s.
journal_has() {
    local n=$1 i
    shift
    for i in $(seq 1 50); do
        [ "$(jcount "$@")" -gt "$n" ] && return 0
        sleep 0.2
    done
    return 1
}
wait_active() {
    local i
    for i in $(seq 1 100); do
        [ "$(prop ActiveState)/$(prop SubState)" = active/running ] && return 0
        sleep 0.1
    done
    return 1
}
ct_file() { cat "$TEST_ROOT/root/pkgtest/$1" 2>/dev/null || true; }
# tally LOG: "sent received lost" from uclient's closing summary (lines without msz=).
tally() {
    local out sent recv lost
    out=$(grep -v 'msz=' "$1" 2>/dev/null || true)
    sent=$(printf '%s\n' "$out" | sed -n 's/.*tot_send_msgs=\([0-9]*\).*/\1/p' | tail -n1)
    recv=$(printf '%s\n' "$out" | sed -n 's/.*tot_recv_msgs=\([0-9]*\).*/\1/p' | tail -n1)
    lost=$(printf '%s\n' "$out" | sed -n 's/.*Total lost packets \([0-9]*\).*/\1/p' | tail -n1)
    echo "${sent:-?} ${recv:-?} ${lost:-?}"
}
# uclient LOG ARGS...: turnutils_uclient in the container (at most 60 s), output in /root/pkgtest/LOG.
uclient() {
    local out=$1
    shift
    in_ct timeout 60 turnutils_uclient "$@" >"$TEST_ROOT/root/pkgtest/$out" 2>&1
}
secret() { secret_in_root; }

# --- Install (as an operator does) with the shipped config
check "apt-get install ./old.deb in the booted container" \
    in_ct env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/pkgtest/old.deb
check "postinst started the service (active/running = READY=1 received)" wait_active
check_eq "unit enabled" enabled "$(in_ct systemctl is-enabled "$UNIT" 2>/dev/null || true)"
check_eq "Type" notify "$(prop Type)"
check_eq "NRestarts" 0 "$(prop NRestarts)"
check_match "STATUS= from the daemon" 'allocations' "$(prop StatusText)"
check_eq "WatchdogUSec" 30s "$(prop WatchdogUSec)"
pid=$(prop MainPID)
check "main process ($pid)" test "${pid:-0}" -gt 0
status=$(in_ct cat "/proc/$pid/status" 2>/dev/null || true)
field() { printf '%s\n' "$status" | awk -v k="$1:" '$1==k {print $2}'; }
check_eq "runs as user icegate" "$(in_ct id -u "$NAME" 2>/dev/null || echo none)" "$(field Uid)"
check_eq "runs as group icegate" "$(in_ct id -g "$NAME" 2>/dev/null || echo none)" "$(field Gid)"
for cap in CapEff CapPrm CapBnd CapAmb; do
    check_eq "$cap: CAP_NET_BIND_SERVICE only" 0000000000000400 "$(field "$cap")"
done
check_eq "NoNewPrivs" 1 "$(field NoNewPrivs)"
check_eq "Seccomp filter" 2 "$(field Seccomp)"
log "LimitNOFILE=$(prop LimitNOFILE); in effect: $(in_ct awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null) (a container gets at most the host's hard limit)"
check "bound udp 3478" sh -c "nsenter -t $LEADER -n -- ss -Hlun 'sport = :3478' | grep -q ."
check "listening tcp 3478" sh -c "nsenter -t $LEADER -n -- ss -Hltn 'sport = :3478' | grep -q ."
check_eq "secret owner and mode" "root:icegate 640" "$(stat_in_root "$SECRET")"
check_eq "config owner and mode" "root:icegate 640" "$(stat_in_root "$CONFIG")"

check "journalctl -u icegate EVENT=ready" journal_has 0 EVENT=ready
ready=$(in_ct journalctl -u "$UNIT" -o export --no-pager EVENT=ready 2>/dev/null || true)
check_match "ready entry: SYSLOG_IDENTIFIER=icegate" '^SYSLOG_IDENTIFIER=icegate$' "$ready"
check_match "ready entry: ICEGATE_VERSION=" '^ICEGATE_VERSION=[0-9]' "$ready"
check_match "ready entry: _SYSTEMD_UNIT=$UNIT" "^_SYSTEMD_UNIT=$UNIT\$" "$ready"
check_match "ready entry: native journal protocol" '^_TRANSPORT=journal$' "$ready"

stun=$(in_ct timeout 20 turnutils_stunclient 127.0.0.1 2>&1 || true)
check_match "STUN Binding answered (turnutils_stunclient)" 'UDP reflexive addr: 127\.0\.0\.1:[0-9]+' "$stun"

c=$(jcount EVENT=peer-refused)
# -s: CreatePermission and Send indications (no channels, whose numbers this
# uclient picks outside what the shipped config accepts).
uclient refused.log -s -u bob -W "$(secret)" -e 127.0.0.1 -r "$PEER_PORT" -c -n 5 127.0.0.1 || true
check "the shipped config refuses a loopback peer (journalctl -u icegate EVENT=peer-refused)" \
    journal_has "$c" EVENT=peer-refused
c=$(jcount EVENT=auth-failed)
uclient wrong.log -u bob -W not-the-generated-secret -e 127.0.0.1 -c -n 5 127.0.0.1 || true
check "a wrong secret fails (journalctl -u icegate EVENT=auth-failed)" journal_has "$c" EVENT=auth-failed

# --- The local config for relaying on loopback, applied by a reload
pid=$(prop MainPID)
cat "$OVERRIDE" >"$TEST_ROOT$CONFIG" # in place: keeps owner and mode
check "icegate check-config on the local config, as user icegate" \
    in_ct runuser -u "$NAME" -- "$BIN" check-config --config "$CONFIG"
c=$(jcount EVENT=reload RESULT=ok)
check "systemctl reload with the local config" in_ct systemctl reload "$UNIT"
check "the daemon applied it (EVENT=reload RESULT=ok)" journal_has "$c" EVENT=reload RESULT=ok
check_eq "MainPID kept by the reload" "$pid" "$(prop MainPID)"
check "the reload added a listener on tcp 443 (CAP_NET_BIND_SERVICE)" \
    sh -c "nsenter -t $LEADER -n -- ss -Hltn 'sport = :443' | grep -q ."
check "turnutils_peer echoing on 127.0.0.1:$PEER_PORT" \
    in_ct systemd-run --quiet --unit=pkgtest-peer /usr/bin/turnutils_peer -L 127.0.0.1 -p "$PEER_PORT"
sleep 0.5

uclient udp.log -u bob -W "$(secret)" -e 127.0.0.1 -r "$PEER_PORT" -c -m 2 -n 50 -l 120 127.0.0.1 || true
check_eq "TURN over UDP: 2 sessions x 50 messages relayed there and back, none lost" \
    "100 100 0" "$(tally "$TEST_ROOT/root/pkgtest/udp.log")"
uclient tcp.log -t -p 443 -u bob -W "$(secret)" -e 127.0.0.1 -r "$PEER_PORT" -c -m 2 -n 50 -l 120 127.0.0.1 || true
check_eq "TURN over TCP on port 443: 2 sessions x 50 messages, none lost" \
    "100 100 0" "$(tally "$TEST_ROOT/root/pkgtest/tcp.log")"

# --- Reloads while a relay session runs (one allocation, 400 messages 25 ms apart: ~10 s)
c=$(jcount EVENT=allocation-created)
in_ct timeout 90 turnutils_uclient -u bob -W "$(secret)" -e 127.0.0.1 -r "$PEER_PORT" -c -m 1 \
    -n 400 -z 25 -l 120 127.0.0.1 >"$TEST_ROOT/root/pkgtest/long.log" 2>&1 &
LONG_PID=$!
check "relay session allocated (EVENT=allocation-created)" journal_has "$c" EVENT=allocation-created
# Its packets flow before the reloads: one of bob's allocations has carried some.
relaying() {
    in_ct "$BIN" ctl allocations --user bob 2>/dev/null |
        awk 'NR > 1 && $6 != "0B/0p" {found = 1} END {exit !found}'
}
wait_relaying() {
    local i
    for i in $(seq 1 100); do
        relaying && return 0
        sleep 0.2
    done
    return 1
}
check "the session relays (icegate ctl allocations)" wait_relaying
c=$(jcount EVENT=reload RESULT=ok)
printf '\n# local edit\n[[auth.users]]\nname = "alice"\npassword = "%s"\n' "$ALICE" >>"$TEST_ROOT$CONFIG"
check "systemctl reload adding user alice" in_ct systemctl reload "$UNIT"
check "the daemon applied it (EVENT=reload RESULT=ok)" journal_has "$c" EVENT=reload RESULT=ok
check_eq "MainPID kept by the reload" "$pid" "$(prop MainPID)"
check_eq "active after the reload" active "$(prop ActiveState)"
good=$(cat "$TEST_ROOT$CONFIG")
c=$(jcount EVENT=reload)
printf 'broken = [\n' >>"$TEST_ROOT$CONFIG"
check "systemctl reload with a broken config fails" sh -c "! nsenter -t $LEADER -a -- systemctl reload $UNIT"
check_eq "MainPID kept after the failed reload" "$pid" "$(prop MainPID)"
check_eq "active after the failed reload" active "$(prop ActiveState)"
check_eq "the broken file never reached the daemon (no EVENT=reload)" "$c" "$(jcount EVENT=reload)"
printf '%s\n' "$good" >"$TEST_ROOT$CONFIG"
check "the relay session was still running across both reloads" kill -0 "$LONG_PID"
stun=$(in_ct timeout 20 turnutils_stunclient 127.0.0.1 2>&1 || true)
check_match "STUN answered after the failed reload" 'UDP reflexive addr: 127\.0\.0\.1:' "$stun"
for i in $(seq 1 600); do kill -0 "$LONG_PID" 2>/dev/null || break; sleep 0.1; done
wait "$LONG_PID" 2>/dev/null || true
LONG_PID=
check_eq "every packet of the session relayed across the reloads" \
    "400 400 0" "$(tally "$TEST_ROOT/root/pkgtest/long.log")"
check_eq "MainPID still the same" "$pid" "$(prop MainPID)"
check "watchdog keep-alives received" test "$(prop WatchdogTimestampMonotonic)" -gt 0
uclient alice.log -u alice -w "$ALICE" -e 127.0.0.1 -r "$PEER_PORT" -c -m 1 -n 20 127.0.0.1 || true
check_eq "user alice, added by the reload, relays" "20 20 0" "$(tally "$TEST_ROOT/root/pkgtest/alice.log")"

# --- The admin listener; then nothing is left to drain when the service stops
status=$(in_ct "$BIN" ctl status 2>&1 || true)
check_match "icegate ctl status (the admin listener)" '^allocations: [0-9]+' "$status"
# turnutils_uclient leaves one unused allocation behind per run (it makes one
# before the one it relays on), and the refused client left its own.
end_allocations() {
    local user
    for user in bob alice; do
        check_match "icegate ctl kill $user" '^ended [0-9]+ allocations' "$(in_ct "$BIN" ctl kill "$user" 2>&1 || true)"
    done
    check_match "no allocation left" '^allocations: 0 ' "$(in_ct "$BIN" ctl status 2>&1 || true)"
}
end_allocations

# --- Upgrade, stop, remove, purge
stat_before=$(stat_in_root "$CONFIG")
secret_before=$(secret)
readies=$(jcount EVENT=ready)
check "upgrade to $(deb_field "$NEW" Version) (dpkg -i --force-confdef --force-confold)" \
    in_ct dpkg -i --force-confdef --force-confold /root/pkgtest/new.deb
check "active/running after the upgrade" wait_active
newpid=$(prop MainPID)
check "the upgrade restarted the service (pid $pid -> $newpid)" test "${newpid:-0}" -gt 0 -a "$newpid" != "$pid"
check "ready again after the upgrade" journal_has "$readies" EVENT=ready
check "local config kept" grep -qx '# local edit' "$TEST_ROOT$CONFIG"
check "local config kept (allow-peers)" grep -q '^allow-peers = \["127.0.0.0/8"\]' "$TEST_ROOT$CONFIG"
check "the new default beside it as icegate.toml.dpkg-dist" test -e "$TEST_ROOT$CONFIG.dpkg-dist"
check_eq "config owner and mode kept" "$stat_before" "$(stat_in_root "$CONFIG")"
check_eq "secret kept" "$secret_before" "$(secret)"
check "198.51.100.7 is not up yet" sh -c "! nsenter -t $LEADER -n -- ip -o addr show | grep -q 198.51.100.7"
check "the address comes up after the start" nsenter -t "$LEADER" -n -- ip addr add 198.51.100.7/32 dev lo
stun=$(in_ct timeout 20 turnutils_stunclient -p 3479 198.51.100.7 2>&1 || true)
check_match "the listener on it answers STUN (IP_FREEBIND)" 'UDP reflexive addr: 198\.51\.100\.7:' "$stun"
uclient after.log -u bob -W "$(secret)" -e 127.0.0.1 -r "$PEER_PORT" -c -m 1 -n 20 127.0.0.1 || true
check_eq "TURN relays after the upgrade" "20 20 0" "$(tally "$TEST_ROOT/root/pkgtest/after.log")"

end_allocations
check "systemctl stop" in_ct systemctl stop "$UNIT"
check_eq "stopped cleanly (Result)" success "$(prop Result)"
check_eq "exit status 0 on SIGTERM" 0 "$(prop ExecMainStatus)"
check "systemctl start" in_ct systemctl start "$UNIT"
check "active/running" wait_active

check "dpkg -r icegate" in_ct dpkg -r "$NAME"
check_eq "remove stopped the service" inactive "$(in_ct systemctl is-active "$UNIT" 2>/dev/null || true)"
check "config kept on remove" test -e "$TEST_ROOT$CONFIG"
check "dpkg --purge icegate" in_ct dpkg --purge "$NAME"
for gone in /etc/icegate "$STATE_DIR"; do
    check "purge: $gone gone" test ! -e "$TEST_ROOT$gone"
done
check "purge: unit unknown to systemd" sh -c "! nsenter -t $LEADER -a -- systemctl cat $UNIT >/dev/null 2>&1"
summary
