#!/bin/bash
# build.sh BINARY OUT: package BINARY, an icegate that cargo built already (the
# tests pass the one they were built with), into OUT as the .deb and .rpm that
# `cargo deb` and `cargo generate-rpm` make from Cargo.toml, twice:
#   OUT/new.deb OUT/new.rpm   the crate's version, revision/release 1
#   OUT/old.deb OUT/old.rpm   the same binary as revision/release 0, the
#                             "previous build" for upgrade tests; old.deb ships
#                             a default config that differs by one comment, so
#                             that an upgrade meets a locally edited conffile
#                             whose default changed.
# Nothing is compiled: both tools run on a staging target directory that holds
# BINARY, stripped, where the metadata expects target/release/icegate.
set -euo pipefail
TEST_NAME=build
. "$(dirname "$0")/lib.sh"
BINARY=${1:?usage: build.sh BINARY OUT}
OUT=${2:?usage: build.sh BINARY OUT}
CARGO=${CARGO:-cargo}

mkdir -p "$OUT/target/release"
OUT=$(cd "$OUT" && pwd)
cd "$PKGTEST_DIR/../.."
# What cargo-deb's own strip would do; it also keeps the packages small and quick to compress.
strip --strip-unneeded -o "$OUT/target/release/icegate" "$BINARY"
export CARGO_TARGET_DIR=$OUT/target

# --fast and gzip: the packages' contents are what matters here, not their size.
"$CARGO" deb --no-build --no-dbgsym --fast --quiet --output "$OUT/new.deb" >/dev/null
version=$(dpkg-deb -f "$OUT/new.deb" Version)
"$CARGO" deb --no-build --no-dbgsym --fast --quiet --deb-version "${version%-*}-0" --output "$OUT/old.deb" >/dev/null
"$CARGO" generate-rpm --payload-compress gzip -o "$OUT/new.rpm" >/dev/null
"$CARGO" generate-rpm --payload-compress gzip -s 'release = "0"' -o "$OUT/old.rpm" >/dev/null

# The previous default config: one comment line apart from the current one.
repack=$OUT/old-deb
rm -rf "$repack"
dpkg-deb -R "$OUT/old.deb" "$repack"
printf '# (the previous default)\n' >>"$repack$CONFIG"
if [ -f "$repack/DEBIAN/md5sums" ]; then
    (cd "$repack" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum >DEBIAN/md5sums)
fi
dpkg-deb --root-owner-group -Zgzip -b "$repack" "$OUT/old.deb" >/dev/null
rm -rf "$repack" "$OUT/target"
log "built $(cd "$OUT" && echo *.deb *.rpm) in $OUT"
