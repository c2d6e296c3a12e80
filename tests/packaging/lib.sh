# lib.sh: shared by the packaging test scripts (sourced by bash).
#
# Every script prints `ok   - ...` or `FAIL - ...` per check and ends with
# `N passed, N failed`; it exits non-zero on any failure and 2 when it cannot
# run at all. Nothing outside $PKGTEST_TMP (throwaway roots) and $PKGTEST_CACHE
# (the clean Debian root, built once) is touched.
#
# Environment:
#   PKGTEST_SUITE   Debian suite of the clean root (default: bookworm)
#   PKGTEST_MIRROR  mirror for mmdebstrap (default: its own)
#   PKGTEST_CACHE   where the root tarball is kept (default: ~/.cache/icegate-packaging)
#   PKGTEST_TMP     where roots are unpacked (default: $TMPDIR or /tmp)
#   PKGTEST_KEEP=1  keep unpacked roots after the run, for debugging

NAME=icegate
CONFIG=/etc/icegate/icegate.toml
SECRET=/etc/icegate/rest-secret
STATE_DIR=/var/lib/icegate
UNIT=icegate.service
BIN=/usr/bin/icegate

PKGTEST_SUITE=${PKGTEST_SUITE:-bookworm}
PKGTEST_CACHE=${PKGTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/icegate-packaging}
PKGTEST_TMP=${PKGTEST_TMP:-${TMPDIR:-/tmp}}
PKGTEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The clean root: a bootable minimal Debian, plus coturn for its client tools
# (turnutils_stunclient, turnutils_uclient, turnutils_peer; its server is
# masked) and rpm, to install the .rpm from inside the running container.
ROOT_PACKAGES=systemd,systemd-sysv,dbus,coturn,rpm
# Changing the package list or the suite names a new tarball.
ROOTFS_TAR=$PKGTEST_CACHE/$PKGTEST_SUITE-$(printf '%s' "$ROOT_PACKAGES mask-coturn" | md5sum | cut -c1-8).tar

PASS=0
FAIL=0
NSPAWN_PID=
LEADER=
TEST_ROOT=

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${TEST_NAME:-packaging}" "$*" >&2; }
die() { log "cannot run: $*"; exit 2; }
ok() { PASS=$((PASS + 1)); printf 'ok   - %s\n' "$*"; }
not_ok() { FAIL=$((FAIL + 1)); printf 'FAIL - %s\n' "$*"; }
# check DESCRIPTION CMD ARGS...: passes when CMD exits 0; its output is shown on failure.
check() {
    local d=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$d"; else not_ok "$d"; [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    | /'; fi
}
# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1 (expected '$2', got '$3')"; fi
}
# check_match DESCRIPTION EXTENDED-REGEX TEXT
check_match() {
    if printf '%s\n' "$3" | grep -Eq -- "$2"; then ok "$1"; else
        not_ok "$1 (no match for /$2/)"; printf '%s\n' "$3" | tail -n 20 | sed 's/^/    | /'
    fi
}
summary() {
    echo "$PASS passed, $FAIL failed"
    [ "$FAIL" -eq 0 ]
}

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (chroot, systemd-nspawn, dpkg in a root)"; }

# The tools the suite needs, each with how to get it. Prints every missing one.
missing_tools() {
    local missing=0 entry cmd how
    for entry in \
        "dpkg-deb:apt-get install dpkg" \
        "lintian:apt-get install lintian" \
        "rpm:apt-get install rpm" \
        "mmdebstrap:apt-get install mmdebstrap" \
        "systemd-nspawn:apt-get install systemd-container" \
        "systemd-analyze:apt-get install systemd" \
        "nsenter:apt-get install util-linux" \
        "flock:apt-get install util-linux" \
        "ss:apt-get install iproute2" \
        "ip:apt-get install iproute2" \
        "dash:apt-get install dash" \
        "man:apt-get install man-db" \
        "strip:apt-get install binutils" \
        "cargo-deb:cargo install --locked cargo-deb" \
        "cargo-generate-rpm:cargo install --locked cargo-generate-rpm"; do
        cmd=${entry%%:*}
        how=${entry#*:}
        if ! command -v "$cmd" >/dev/null 2>&1; then
            echo "missing $cmd: $how"
            missing=1
        fi
    done
    return $missing
}

deb_field() { dpkg-deb -f "$1" "$2"; }

# The clean root, built once and kept (mmdebstrap, ~30 s, needs the Debian archive).
ensure_rootfs() {
    mkdir -p "$PKGTEST_CACHE"
    (
        flock 9
        [ -s "$ROOTFS_TAR" ] && exit 0
        # Roots made from an older package list are of no more use.
        find "$PKGTEST_CACHE" -maxdepth 1 -name "$PKGTEST_SUITE-*.tar*" -delete
        log "building $ROOTFS_TAR ($ROOT_PACKAGES)"
        start=$(date +%s)
        mmdebstrap --quiet --format=tar --variant=minbase --include="$ROOT_PACKAGES" \
            --customize-hook='chroot "$1" systemctl mask coturn.service' \
            "$PKGTEST_SUITE" "$ROOTFS_TAR.tmp" ${PKGTEST_MIRROR:+"$PKGTEST_MIRROR"} >&2 &&
            mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR" &&
            log "built $(du -h "$ROOTFS_TAR" | cut -f1) in $(($(date +%s) - start)) s"
    ) 9>"$PKGTEST_CACHE/.lock" || die "could not build the clean root (mmdebstrap $PKGTEST_SUITE)"
}

# new_root: unpack the clean root into a fresh directory; sets TEST_ROOT.
new_root() {
    ensure_rootfs
    TEST_ROOT=$(mktemp -d "$PKGTEST_TMP/icegate-pkgtest.XXXXXX")
    tar --numeric-owner -xpf "$ROOTFS_TAR" -C "$TEST_ROOT"
    mkdir -p "$TEST_ROOT/root/pkgtest" # not /tmp: nspawn mounts a tmpfs there
}

drop_root() {
    [ -n "$TEST_ROOT" ] || return 0
    if [ "${PKGTEST_KEEP:-0}" = 1 ]; then log "kept $TEST_ROOT"; return 0; fi
    rm -rf --one-file-system "$TEST_ROOT"
    TEST_ROOT=
}

in_chroot() { chroot "$TEST_ROOT" "$@"; }

# boot_container: systemd as PID 1 of a systemd-nspawn container on TEST_ROOT,
# with a network namespace of its own (only its loopback) and cgroup v2.
# --register=no --keep-unit: the host need not run systemd.
boot_container() {
    local machine=icegate$$ state= i=0 c
    NSPAWN_LOG=$TEST_ROOT.nspawn.log
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet -D "$TEST_ROOT" -M "$machine" -b \
        --register=no --keep-unit --private-network --console=pipe </dev/null >"$NSPAWN_LOG" 2>&1 &
    NSPAWN_PID=$!
    # nspawn forks an intermediate child; the container's PID 1 is its child named systemd.
    while [ -z "$LEADER" ]; do
        for c in $(pgrep -P "$NSPAWN_PID" 2>/dev/null || true); do
            [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && LEADER=$c
        done
        [ -n "$LEADER" ] && break
        i=$((i + 1))
        if [ $i -gt 300 ] || ! kill -0 "$NSPAWN_PID" 2>/dev/null; then
            cat "$NSPAWN_LOG" >&2
            die "the container did not start"
        fi
        sleep 0.1
    done
    for i in $(seq 1 60); do
        state=$(timeout 60 nsenter -t "$LEADER" -a -- systemctl is-system-running --wait 2>/dev/null || true)
        case "$state" in running | degraded) break ;; esac
        sleep 1
    done
    case "$state" in
        running) ;;
        degraded) in_ct systemctl --failed --no-pager >&2 || true ;;
        *) cat "$NSPAWN_LOG" >&2; die "container boot state '$state'" ;;
    esac
}

# in_ct CMD...: run CMD inside the booted container (all its namespaces).
in_ct() { nsenter -t "$LEADER" -a -- "$@"; }

stop_container() {
    local i=0
    [ -n "$NSPAWN_PID" ] || return 0
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
        [ -z "$LEADER" ] || in_ct systemctl poweroff >/dev/null 2>&1 || true
        while kill -0 "$NSPAWN_PID" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        if kill -0 "$NSPAWN_PID" 2>/dev/null; then
            log "the container did not power off; terminating systemd-nspawn $NSPAWN_PID"
            kill -TERM "$NSPAWN_PID" 2>/dev/null || true
            sleep 3
            kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        fi
    fi
    wait "$NSPAWN_PID" 2>/dev/null || true
    rm -f "$NSPAWN_LOG"
    NSPAWN_PID=
    LEADER=
}

cleanup() {
    stop_container
    drop_root
}

# stat_in_root PATH: "user:group mode" of PATH inside TEST_ROOT, names from the root's own files.
stat_in_root() {
    local f=$TEST_ROOT$1 uid gid u g
    [ -e "$f" ] || { echo missing; return 0; }
    uid=$(stat -c %u "$f"); gid=$(stat -c %g "$f")
    u=$(awk -F: -v id="$uid" '$3==id{print $1; exit}' "$TEST_ROOT/etc/passwd")
    g=$(awk -F: -v id="$gid" '$3==id{print $1; exit}' "$TEST_ROOT/etc/group")
    echo "${u:-$uid}:${g:-$gid} $(stat -c %a "$f")"
}

# The REST secret the package generated: the last line that is not a comment.
secret_in_root() { grep -v '^[[:space:]]*\(#\|$\)' "$TEST_ROOT$SECRET" | tail -n 1; }
