#!/bin/bash
# rpm.sh NEW.rpm OLD.rpm: the .rpm installed by the root's own rpm into a clean
# Debian root (--nodeps: the root's libraries are in dpkg's database, not rpm's). No RPM
# distribution is at hand, so this checks what does not depend on one: the
# scriptlets run (under dash), the user exists before the files are unpacked,
# owners and modes, the generated secret, `rpm -V`, the unit starts under
# systemd as PID 1, an upgrade keeps a local edit and the secret, erase stops
# the service and keeps the edited config as .rpmsave.
set -euo pipefail
TEST_NAME=rpm
. "$(dirname "$0")/lib.sh"
need_root
NEW=${1:?usage: rpm.sh NEW.rpm OLD.rpm}
OLD=${2:?usage: rpm.sh NEW.rpm OLD.rpm}
trap cleanup EXIT
new_root
cp "$NEW" "$TEST_ROOT/root/pkgtest/new.rpm"
cp "$OLD" "$TEST_ROOT/root/pkgtest/old.rpm"
# Debian's rpm warns on every call that it is not meant for installing packages.
quiet() { grep -v 'should not be used directly\|assuming you know what' || true; }
version() { rpm -qp --nosignature --queryformat '%{VERSION}-%{RELEASE}' "$1" 2>/dev/null; }

check "rpm -i $(version "$OLD") without a running systemd (scriptlets run)" \
    in_chroot rpm -i --nodeps /root/pkgtest/old.rpm
check "user icegate made by %pre" in_chroot getent passwd "$NAME"
check_eq "config owner and mode" "root:icegate 640" "$(stat_in_root "$CONFIG")"
check_eq "secret owner and mode" "root:icegate 640" "$(stat_in_root "$SECRET")"
secret=$(secret_in_root || true)
check_match "secret: 64 random hex digits" '^[0-9a-f]{64}$' "$secret"
check_eq "state directory" "icegate:icegate 750" "$(stat_in_root "$STATE_DIR")"
check_eq "rpm -V clean" "" "$(in_chroot rpm -V --nodeps "$NAME" 2>&1 | quiet)"
check_eq "the installed config checks out (icegate check-config)" ok \
    "$(in_chroot "$BIN" check-config --config "$CONFIG" 2>&1 || true)"

check "systemctl enable icegate" in_chroot systemctl enable "$UNIT"
boot_container
active=
for _ in $(seq 1 100); do
    active=$(in_ct systemctl is-active "$UNIT" 2>/dev/null || true)
    [ "$active" = active ] && break
    sleep 0.1
done
check_eq "the rpm's unit is active under systemd" active "$active"
pid=$(in_ct systemctl show -P MainPID "$UNIT" 2>/dev/null || echo 0)
check_eq "runs as user icegate" "$(in_ct id -u "$NAME" 2>/dev/null || echo none)" \
    "$(in_ct awk '$1=="Uid:" {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
stun=$(in_ct timeout 20 turnutils_stunclient 127.0.0.1 2>&1 || true)
check_match "STUN answered" 'UDP reflexive addr: 127\.0\.0\.1:[0-9]+' "$stun"

printf '\n# local edit\n' >>"$TEST_ROOT$CONFIG"
check "rpm -U $(version "$NEW")" in_ct rpm -U --nodeps "/root/pkgtest/new.rpm"
newpid=$(in_ct systemctl show -P MainPID "$UNIT" 2>/dev/null || echo 0)
check "%postun restarted the service (pid $pid -> $newpid)" test "${newpid:-0}" -gt 0 -a "$newpid" != "$pid"
check "local edit kept" grep -qx '# local edit' "$TEST_ROOT$CONFIG"
check_eq "config owner and mode after upgrade" "root:icegate 640" "$(stat_in_root "$CONFIG")"
check_eq "secret kept" "$secret" "$(secret_in_root || true)"

check "rpm -e" in_ct rpm -e --nodeps "$NAME"
check_eq "erase stopped the service" inactive "$(in_ct systemctl is-active "$UNIT" 2>/dev/null || true)"
stop_container
check "binary gone" test ! -e "$TEST_ROOT$BIN"
check "edited config kept as icegate.toml.rpmsave" test -e "$TEST_ROOT$CONFIG.rpmsave"
summary
