#!/bin/bash
# chroot-install.sh NEW.deb OLD.deb: install into a clean Debian root with no
# systemd running (as in an image build), then check the system user, the files
# and their owners and modes, the generated REST secret, the enabled unit and
# `systemd-analyze verify` of it, that the installed config checks out, that an
# upgrade keeps a local edit and the secret, and that purge leaves nothing.
set -euo pipefail
TEST_NAME=chroot-install
. "$(dirname "$0")/lib.sh"
need_root
NEW=${1:?usage: chroot-install.sh NEW.deb OLD.deb}
OLD=${2:?usage: chroot-install.sh NEW.deb OLD.deb}
trap cleanup EXIT
new_root
cp "$NEW" "$TEST_ROOT/root/pkgtest/new.deb"
cp "$OLD" "$TEST_ROOT/root/pkgtest/old.deb"

check "no systemd running in the root" test ! -d "$TEST_ROOT/run/systemd/system"
check "dpkg -i old.deb without a running systemd" in_chroot dpkg -i /root/pkgtest/old.deb
check_eq "package installed" "install ok installed" \
    "$(in_chroot dpkg-query -W -f '${Status}' "$NAME" 2>/dev/null || true)"
check "icegate --version" in_chroot "$BIN" --version
check "system user icegate" in_chroot getent passwd "$NAME"
uid=$(in_chroot getent passwd "$NAME" | cut -d: -f3 || echo 99999)
check "icegate has a system uid ($uid)" test "${uid:-99999}" -lt 1000
check_match "icegate has no login shell" '(nologin|false)$' "$(in_chroot getent passwd "$NAME" || true)"
check_match "icegate's home is $STATE_DIR" ":$STATE_DIR:" "$(in_chroot getent passwd "$NAME" || true)"
check_eq "config registered as a conffile" "$CONFIG" \
    "$(in_chroot dpkg-query -W -f '${Conffiles}\n' "$NAME" | awk 'NF {print $1}')"
check_eq "config owner and mode" "root:icegate 640" "$(stat_in_root "$CONFIG")"
check_eq "secret owner and mode" "root:icegate 640" "$(stat_in_root "$SECRET")"
secret=$(secret_in_root || true)
check_match "secret: 64 random hex digits" '^[0-9a-f]{64}$' "$secret"
check "secret belongs to no package" sh -c "! chroot '$TEST_ROOT' dpkg -S '$SECRET' >/dev/null 2>&1"
check_eq "state directory" "icegate:icegate 750" "$(stat_in_root "$STATE_DIR")"
check "unit enabled (multi-user.target.wants)" \
    test -L "$TEST_ROOT/etc/systemd/system/multi-user.target.wants/$UNIT"
# verify exits 0 on unknown keys and bad values: any output fails. The root
# has no man(1) for the Documentation= pages; they are checked below.
check_eq "systemd-analyze verify $UNIT prints nothing" "" \
    "$(in_chroot systemd-analyze verify --man=no "$UNIT" 2>&1 || echo "exit $?")"
check_eq "the installed config checks out (icegate check-config)" ok \
    "$(in_chroot "$BIN" check-config --config "$CONFIG" 2>&1 || true)"
for page in man8/icegate.8.gz man5/icegate.toml.5.gz; do
    check_eq "man page $page renders without warnings" "" \
        "$(man --warnings -l "$TEST_ROOT/usr/share/man/$page" 2>&1 >/dev/null || echo "exit $?")"
done

# Upgrade over a locally edited config whose default changed too.
printf '\n# local edit\n' >>"$TEST_ROOT$CONFIG"
check "upgrade to $(deb_field "$NEW" Version) (--force-confdef --force-confold)" \
    in_chroot dpkg -i --force-confdef --force-confold /root/pkgtest/new.deb
check_eq "version after upgrade" "$(deb_field "$NEW" Version)" \
    "$(in_chroot dpkg-query -W -f '${Version}' "$NAME")"
check "local edit kept" grep -qx '# local edit' "$TEST_ROOT$CONFIG"
check "the new default beside it as icegate.toml.dpkg-dist" test -e "$TEST_ROOT$CONFIG.dpkg-dist"
check_eq "config owner and mode after upgrade" "root:icegate 640" "$(stat_in_root "$CONFIG")"
check_eq "secret kept by the upgrade" "$secret" "$(secret_in_root || true)"

check "dpkg -r" in_chroot dpkg -r "$NAME"
check "config kept on remove" test -e "$TEST_ROOT$CONFIG"
check "secret kept on remove" test -e "$TEST_ROOT$SECRET"
check "dpkg --purge" in_chroot dpkg --purge "$NAME"
for gone in "$BIN" /etc/icegate "$STATE_DIR" /usr/lib/systemd/system/$UNIT \
    /etc/systemd/system/multi-user.target.wants/$UNIT; do
    check "purge: $gone gone" test ! -e "$TEST_ROOT$gone" -a ! -L "$TEST_ROOT$gone"
done
check "purge: no statoverride left" sh -c "! chroot '$TEST_ROOT' dpkg-statoverride --list '$CONFIG'"
summary
