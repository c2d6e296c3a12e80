#!/bin/bash
# run.sh BINARY [OUT]: the whole packaging suite for BINARY, an icegate cargo
# built already: build the .deb and .rpm (new and old, see build.sh) into OUT
# (default: a temporary directory, removed after), then lint.sh,
# chroot-install.sh, service.sh and rpm.sh, with their timings. Ends with
# `packaging: N passed, N failed`; exits non-zero on any failure.
# Run as root; the first run builds the clean Debian root (mmdebstrap, about a
# minute, needs the Debian archive) and keeps it in ~/.cache/icegate-packaging.
set -uo pipefail
TEST_NAME=run
. "$(dirname "$0")/lib.sh"
BINARY=${1:?usage: run.sh BINARY [OUT]}
OUT=${2:-}
need_root
if ! missing=$(missing_tools); then
    printf '%s\n' "$missing" >&2
    die "tools missing; .ci/run installs them all"
fi
[ -x "$BINARY" ] || die "no binary at $BINARY"
if [ -z "$OUT" ]; then
    OUT=$(mktemp -d "$PKGTEST_TMP/icegate-packages.XXXXXX")
    trap 'rm -rf "$OUT"' EXIT
fi

TOTAL_P=0
TOTAL_F=0
step() {
    local name=$1 s t out rc p f
    shift
    s=$(date +%s.%N)
    out=$("$@" 2>&1)
    rc=$?
    t=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    p=$(printf '%s\n' "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' | tail -n1)
    f=$(printf '%s\n' "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' | tail -n1)
    p=${p:-0}
    f=${f:-0}
    [ "$rc" -eq 0 ] || [ "$f" -gt 0 ] || f=1 # a script that could not run counts as a failure
    TOTAL_P=$((TOTAL_P + p))
    TOTAL_F=$((TOTAL_F + f))
    printf '== %-15s %6ss  %s passed, %s failed\n' "$name" "$t" "$p" "$f"
    printf '%s\n' "$out" | sed 's/^/   | /'
}
D=$PKGTEST_DIR
step rootfs bash -c ". '$D/lib.sh' && ensure_rootfs && echo '0 passed, 0 failed'"
step build bash -c "'$D/build.sh' '$BINARY' '$OUT' && echo '0 passed, 0 failed'"
if [ -s "$OUT/new.deb" ] && [ -s "$OUT/old.deb" ] && [ -s "$OUT/new.rpm" ] && [ -s "$OUT/old.rpm" ]; then
    step lint "$D/lint.sh" "$OUT/new.deb" "$OUT/new.rpm"
    step chroot-install "$D/chroot-install.sh" "$OUT/new.deb" "$OUT/old.deb"
    step service "$D/service.sh" "$OUT/new.deb" "$OUT/old.deb"
    step rpm "$D/rpm.sh" "$OUT/new.rpm" "$OUT/old.rpm"
fi
echo "packaging: $TOTAL_P passed, $TOTAL_F failed"
[ "$TOTAL_F" -eq 0 ] && [ "$TOTAL_P" -gt 0 ]
