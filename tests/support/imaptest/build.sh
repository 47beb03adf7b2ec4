#!/usr/bin/env bash
# build.sh - builds Dovecot's imaptest from source against Debian's dovecot-dev (2.3), for
# tests/imaptest.rs. CI cannot download it, so that test runs only when IMAPTEST names the
# binary; this script is how a developer gets one.
#
# Usage: build.sh SOURCE [OUT_DIR]
#   SOURCE    a git directory (or clone) of github.com/dovecot/imaptest
#   OUT_DIR   default: target/imaptest (in the crate); gets bin/imaptest and tests/
# (libdovecot.so lives in /usr/lib/dovecot, outside the loader path: the binary gets an rpath.)
# Then: IMAPTEST=OUT_DIR/bin/imaptest cargo test --test imaptest -- --nocapture
#   (IMAPTEST_TESTS defaults to OUT_DIR/tests, next to the binary's bin/)
#
# The commit is pinned: 924f619 is the last one before imaptest followed Dovecot 2.4's API
# (ba1d6ab "Adjust to str_begins() API changes", f4f39aa lib-ssl-iostream), so it builds
# against Debian 12's Dovecot 2.3.19. Its src/tests holds the 71 scripted test groups
# (72 entries minus broken/) the figures in tests/imaptest.rs refer to.
set -euo pipefail
COMMIT=924f619d4ad80f370bd45fb2cec27805fee6d19c
SRC="${1:?usage: build.sh IMAPTEST_GIT_DIR [OUT_DIR]}"
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${2:-$HERE/../../../target/imaptest}"
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"

need=""
for p in dovecot-dev build-essential autoconf automake libtool pkg-config; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
[ -z "$need" ] || { echo "missing Debian packages:$need (apt-get install -y$need)" >&2; exit 1; }

BUILD="$(mktemp -d /tmp/imaptest-build.XXXXXX)"
trap 'rm -rf "$BUILD"' EXIT
# git archive reads the commit without touching the source's work trees
git --git-dir="$( [ -d "$SRC/.git" ] && echo "$SRC/.git" || echo "$SRC")" archive --format=tar "$COMMIT" \
  | tar -x -C "$BUILD"
cd "$BUILD"
# git-version-gen wants a git checkout; the version only shows in --version
echo "0.0.0-$COMMIT" > version
printf '#!/bin/sh\nprintf %%s "0.0.0-%s"\n' "${COMMIT:0:7}" > build-aux/git-version-gen
chmod +x build-aux/git-version-gen
# Debian's 2.3.19.1+deb12u* headers take a 4th argument (struct imap_parser_params *, NULL =
# the old behaviour) that upstream 2.3.19 lacks; adapt the three calls when the header says so.
if grep -q 'const struct imap_parser_params \*params' /usr/include/dovecot/imap-parser.h; then
  sed -i 's/imap_parser_create(\(.*\), NULL, (size_t)-1)/imap_parser_create(\1, NULL, (size_t)-1, NULL)/' \
    src/commands.c src/imap-client.c src/test-parser.c
fi
./autogen.sh >build.log 2>&1 || { tail -30 build.log >&2; exit 1; }
LDFLAGS="-Wl,-rpath,/usr/lib/dovecot" ./configure --with-dovecot=/usr/lib/dovecot >>build.log 2>&1 || { tail -30 build.log >&2; exit 1; }
make -j"$(nproc)" >>build.log 2>&1 || { tail -40 build.log >&2; exit 1; }

mkdir -p "$OUT/bin"
cp src/imaptest "$OUT/bin/imaptest"
rm -rf "$OUT/tests"; cp -r src/tests "$OUT/tests"
echo "$COMMIT" > "$OUT/COMMIT"
echo "IMAPTEST=$OUT/bin/imaptest"
echo "IMAPTEST_TESTS=$OUT/tests"
