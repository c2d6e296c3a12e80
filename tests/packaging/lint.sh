#!/bin/bash
# lint.sh DEB RPM: the packages as files, without installing them.
#   .deb: control fields, paths, conffiles (the config only, never the secret),
#         maintainer scripts (syntax, set -e, no leftover #DEBHELPER#), lintian
#         with errors and warnings failing.
#   .rpm: header, paths, the config %config(noreplace) root:icegate 0640 in the
#         payload, scriptlets parsed by dash.
#   unit: systemd-analyze security exposure at most 2.5.
set -euo pipefail
TEST_NAME=lint
. "$(dirname "$0")/lib.sh"
DEB=${1:?usage: lint.sh DEB RPM}
RPM=${2:?usage: lint.sh DEB RPM}
work=$(mktemp -d "$PKGTEST_TMP/icegate-lint.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- .deb
check_eq "Package" "$NAME" "$(deb_field "$DEB" Package)"
for f in Version Architecture Maintainer Description Section Priority; do
    check "control has $f" test -n "$(deb_field "$DEB" "$f")"
done
check_match "Depends on libc and systemd (unit, sysusers)" 'libc6.*systemd' "$(deb_field "$DEB" Depends)"
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's#^\./#/#' >"$work/files"
for f in "$BIN" "$CONFIG" /usr/lib/systemd/system/$UNIT /usr/lib/sysusers.d/$NAME.conf \
    /usr/share/man/man8/icegate.8.gz /usr/share/man/man5/icegate.toml.5.gz \
    /usr/share/doc/$NAME/copyright /usr/share/doc/$NAME/changelog.Debian.gz \
    /usr/share/doc/$NAME/signaling.md; do
    check "ships $f" grep -qx "$f" "$work/files"
done
check "does not ship $SECRET (made at install time)" sh -c "! grep -qx '$SECRET' '$work/files'"
dpkg-deb -e "$DEB" "$work/ctl"
check_eq "conffiles: the config and nothing else" "$CONFIG" "$(cat "$work/ctl/conffiles")"
for s in postinst prerm postrm; do
    check "$s present" test -f "$work/ctl/$s"
    [ -f "$work/ctl/$s" ] || continue
    check "$s: sh -n" sh -n "$work/ctl/$s"
    check "$s: set -e" grep -qx 'set -e' "$work/ctl/$s"
    check "$s: no leftover #DEBHELPER#" sh -c "! grep -q '#DEBHELPER#' '$work/ctl/$s'"
done
check "postinst makes the secret only where none is" grep -q "if \[ ! -e \"\$SECRET\" \]" "$work/ctl/postinst"
check "postinst never writes the conffile" sh -c "! grep -E '>>? *\"?(\\\$CONFIG|$CONFIG)' '$work/ctl/postinst'"
# initial-upload-closes-no-bugs asks the first changelog entry to close an ITP
# bug in Debian's tracker; it only concerns uploads to the Debian archive.
if lintian --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs "$DEB" >"$work/lintian" 2>&1; then
    ok "lintian: no errors or warnings"
else
    not_ok "lintian"
    grep -v 'running with root privileges' "$work/lintian" | sed 's/^/    | /'
fi

# --- the unit as shipped
dpkg-deb -x "$DEB" "$work/root"
unit=$work/root/usr/lib/systemd/system/$UNIT
exposure=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
log "systemd-analyze security --offline=yes: exposure $exposure"
check "systemd-analyze security exposure $exposure <= 2.5 (--threshold=25)" \
    systemd-analyze security --offline=yes --threshold=25 "$unit"
for line in Type=notify NotifyAccess=main RestartPreventExitStatus=78 \
    'ExecReload=/usr/bin/icegate check-config --config /etc/icegate/icegate.toml' \
    'ExecStart=/usr/bin/icegate run --config /etc/icegate/icegate.toml' \
    User=icegate AmbientCapabilities=CAP_NET_BIND_SERVICE CapabilityBoundingSet=CAP_NET_BIND_SERVICE \
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK' After=network-online.target; do
    check "unit: $line" grep -qxF "$line" "$unit"
done
check "unit: WatchdogSec set" grep -q '^WatchdogSec=' "$unit"
check "unit: no PrivateUsers (it voids CAP_NET_BIND_SERVICE)" sh -c "! grep -q '^PrivateUsers=' '$unit'"

# --- .rpm
q() { rpm -qp --nosignature "$@" "$RPM" 2>/dev/null; }
check_eq "rpm NAME" "$NAME" "$(q --queryformat '%{NAME}')"
for tag in VERSION RELEASE ARCH LICENSE SUMMARY DESCRIPTION URL; do
    v=$(q --queryformat "%{$tag}")
    check "rpm header $tag set" test -n "$v" -a "$v" != "(none)"
done
q -l >"$work/rpmfiles"
for f in "$BIN" "$CONFIG" /usr/lib/systemd/system/$UNIT /usr/lib/sysusers.d/$NAME.conf \
    /usr/share/man/man8/icegate.8 /usr/share/man/man5/icegate.toml.5; do
    check "rpm ships $f" grep -qx "$f" "$work/rpmfiles"
done
# FILEFLAGS: 1 = %config, 16 = noreplace
entry=$(q --queryformat '[%{FILENAMES} %{FILEFLAGS} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:octal}\n]' |
    awk -v c="$CONFIG" '$1==c')
check_eq "rpm: $CONFIG is %config(noreplace) root:icegate 0640" "$CONFIG 17 root:icegate 100640" "$entry"
check_eq "rpm: config files" "$CONFIG" "$(q --configfiles)"
for s in PREIN POSTIN PREUN POSTUN; do
    q --queryformat "%{$s}" >"$work/$s"
    check "rpm scriptlet $s present" sh -c "[ \"\$(cat '$work/$s')\" != '(none)' ]"
    check "rpm scriptlet $s: dash -n" dash -n "$work/$s"
done
check "rpm %pre creates the user" grep -q 'useradd' "$work/PREIN"
check "rpm requires /bin/sh" sh -c "rpm -qp --nosignature --requires '$RPM' 2>/dev/null | grep -qx /bin/sh"
glibc=$(q --requires | sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -V | tail -n1)
log "rpm: highest GLIBC symbol version required: ${glibc:-none}"
summary
