#!/usr/bin/env bash
# tests/package.sh - builds the Debian package with cargo-deb and tests it on this (Debian)
# machine, as CI does after the README's test command (.ci/run):
#   lintian reports no error; dpkg -i installs it; the installed unit passes
#   `systemd-analyze verify`; the service user exists and owns /var/lib/coi-proxy (0700) and the
#   local CA; `coi-proxy setup` configures an account against a local autoconfig file and a real
#   Dovecot; the installed binary runs `coi-proxy check` as the service user; the daemon runs
#   from the packaged config as that user; an upgrade keeps state and config; remove keeps the
#   conffile and the state; `dpkg --purge` leaves no file, user or group behind.
# Needs root (dpkg), Debian, the packages of tests/setup-debian.sh, and cargo-deb (installed
# here from crates.io if missing). Refuses to run if a coi-proxy package is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { echo "package test: $*"; }
fail() { echo "package test: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || { echo "package test: SKIPPED: needs root for dpkg -i (CI runs as root)"; exit 0; }
command -v dpkg-deb >/dev/null || { echo "package test: SKIPPED: not a Debian system"; exit 0; }
exec 9>/tmp/coi-proxy-package-test.lock
flock -w 600 9 || fail "another package test holds /tmp/coi-proxy-package-test.lock"
if dpkg-query -W -f='${Status}' coi-proxy 2>/dev/null | grep -q installed; then
	fail "a coi-proxy package is already installed here; this test installs and purges its own"
fi
getent passwd coi-proxy >/dev/null && fail "a coi-proxy user exists already (left over?)"
[ -e /var/lib/coi-proxy ] && fail "/var/lib/coi-proxy exists already (left over?)"
[ -e /etc/coi-proxy ] && fail "/etc/coi-proxy exists already (left over?)"

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
for tool in lintian systemd-analyze runuser python3; do
	command -v "$tool" >/dev/null || fail "$tool is missing (run tests/setup-debian.sh)"
done

say "cargo deb"
cargo deb --locked >/tmp/coi-proxy-cargo-deb.log 2>&1 || { cat /tmp/coi-proxy-cargo-deb.log; fail "cargo deb"; }
DEB=$(ls -t target/debian/coi-proxy_*.deb | head -1)
say "built $DEB ($(du -h "$DEB" | cut -f1))"
dpkg-deb --contents "$DEB" | awk '{print "  " $1, $6}'

say "lintian"
LINTIAN_OUT=$(lintian --fail-on error --display-level ">=warning" "$DEB" 2>&1) && LINTIAN_RC=0 || LINTIAN_RC=$?
echo "${LINTIAN_OUT:-  (no tags)}"
[ "$LINTIAN_RC" = 0 ] || fail "lintian reports errors"

# From here on the working directory is /, so that no command finds this repository's
# ./proxy.toml before the packaged /etc/coi-proxy/proxy.toml.
DEB=$(realpath "$DEB")
cd /
W=$(mktemp -d /tmp/coi-pkg.XXXXXX)
chmod 711 "$W" # Dovecot's processes must traverse it
PROVIDER_STATE=""
DAEMON_PID=""
HTTP_PID=""
cleanup() {
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
	[ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null || true
	[ -n "$PROVIDER_STATE" ] && "$ROOT/tests/support/provider/stop-provider.sh" "$PROVIDER_STATE" --clean >/dev/null 2>&1 || true
	if dpkg-query -W -f='${Status}' coi-proxy 2>/dev/null | grep -q installed; then
		dpkg --purge coi-proxy >/dev/null 2>&1 || true
	fi
	rm -rf "$W"
}
trap cleanup EXIT

# Every path in the places a package touches, to compare after the purge.
snapshot() {
	find /etc /usr /var/lib /opt /srv -xdev \
		\( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/ucf -o -path /usr/local/cargo -o -path /opt/imap-providers \) -prune -o -print 2>/dev/null | sort
}
snapshot >"$W/before"

say "dpkg -i"
dpkg -i "$DEB" >"$W/install.log" 2>&1 || { cat "$W/install.log"; fail "dpkg -i"; }
cat "$W/install.log" | sed 's/^/  /'
grep -q "not started" "$W/install.log" || fail "postinst did not say that the service waits for a provider"

UNIT=/usr/lib/systemd/system/coi-proxy.service
[ -f "$UNIT" ] && [ -f /usr/lib/systemd/system/coi-proxy.service.d/debian.conf ] || fail "unit or drop-in missing"
say "systemd-analyze verify $UNIT"
VERIFY=$(SYSTEMD_COLORS=0 systemd-analyze verify "$UNIT" 2>&1) || fail "systemd-analyze verify: $VERIFY"
[ -z "$VERIFY" ] || fail "systemd-analyze verify says: $VERIFY"
SHOWN=$(SYSTEMD_COLORS=0 systemd-analyze cat-config "$UNIT" 2>/dev/null || cat "$UNIT" /usr/lib/systemd/system/coi-proxy.service.d/debian.conf)
echo "$SHOWN" | grep -q '^User=coi-proxy' || fail "the drop-in does not set User=coi-proxy"
[ -L /etc/systemd/system/multi-user.target.wants/coi-proxy.service ] || fail "the unit is not enabled"

getent passwd coi-proxy >/dev/null || fail "no coi-proxy user"
[ "$(stat -c '%a %U %G' /var/lib/coi-proxy)" = "700 coi-proxy coi-proxy" ] || fail "/var/lib/coi-proxy: $(stat -c '%a %U %G' /var/lib/coi-proxy)"
[ "$(stat -c '%U' /var/lib/coi-proxy/tls/ca.pem)" = coi-proxy ] || fail "the local CA is not the service user's"
dpkg-query -W -f='${Conffiles}\n' coi-proxy | grep -q /etc/coi-proxy/proxy.toml || fail "proxy.toml is not a conffile"
man -w coi-proxy >/dev/null 2>&1 || [ -f /usr/share/man/man1/coi-proxy.1.gz ] || fail "no man page"
[ -f /usr/share/bash-completion/completions/coi-proxy ] || fail "no bash completion"

say "check --offline fails until a provider is configured (the unit's ExecCondition)"
if runuser -u coi-proxy -- /usr/bin/coi-proxy --config /etc/coi-proxy/proxy.toml check --offline >"$W/offline.txt" 2>&1; then
	fail "check --offline passed without a provider"
fi
grep -q "coi-proxy setup" "$W/offline.txt" || fail "check --offline does not say how to configure: $(cat "$W/offline.txt")"

say "coi-proxy setup alice@example.org against a local autoconfig file and Dovecot"
PROVIDER_STATE="$W/prov"
"$ROOT/tests/support/provider/start-provider.sh" "$PROVIDER_STATE" >"$W/provider.env"
# shellcheck disable=SC1091
. "$W/provider.env"
mkdir -p "$W/www/mail"
cat >"$W/www/mail/config-v1.1.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1"><emailProvider id="example.org"><domain>example.org</domain>
<incomingServer type="imap"><hostname>127.0.0.1</hostname><port>$PROVIDER_IMAP_PORT</port>
<socketType>plain</socketType><username>%EMAILADDRESS%</username><authentication>password-cleartext</authentication></incomingServer>
<outgoingServer type="smtp"><hostname>127.0.0.1</hostname><port>$PROVIDER_SMTP_PORT</port>
<socketType>plain</socketType><username>%EMAILADDRESS%</username><authentication>password-cleartext</authentication></outgoingServer>
</emailProvider></clientConfig>
XML
python3 -m http.server 0 --bind 127.0.0.1 --directory "$W/www" >"$W/http.log" 2>&1 &
HTTP_PID=$!
for _ in $(seq 100); do grep -q "port [0-9]" "$W/http.log" && break; sleep 0.1; done
HTTP_PORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$W/http.log" | head -1)
[ -n "$HTTP_PORT" ] || fail "the autoconfig web server did not start: $(cat "$W/http.log")"
echo secret | /usr/bin/coi-proxy setup alice@example.org --password-stdin \
	--autoconfig-url "http://127.0.0.1:$HTTP_PORT" --timeout 5 >"$W/setup.out" 2>"$W/setup.err" \
	|| { cat "$W/setup.err"; fail "coi-proxy setup"; }
sed 's/^/  /' "$W/setup.err" "$W/setup.out"
grep -q "wrote /etc/coi-proxy/proxy.toml" "$W/setup.out" || fail "setup did not write the packaged config"
grep -q "^state_dir = \"/var/lib/coi-proxy\"" /etc/coi-proxy/proxy.toml || fail "setup lost state_dir"
grep -q "^# The default provider" /etc/coi-proxy/proxy.toml || fail "setup lost the comments"

say "coi-proxy check as the service user"
runuser -u coi-proxy -- /usr/bin/coi-proxy check >"$W/check.txt" 2>&1 || { cat "$W/check.txt"; fail "coi-proxy check as coi-proxy"; }
sed 's/^/  /' "$W/check.txt"
grep -q "config: /etc/coi-proxy/proxy.toml (valid)" "$W/check.txt" || fail "check did not read the packaged config"
grep -q "reachable: yes" "$W/check.txt" || fail "check did not reach the provider"
runuser -u coi-proxy -- /usr/bin/coi-proxy --config /etc/coi-proxy/proxy.toml check --offline >/dev/null \
	|| fail "check --offline still fails with a provider"

say "the daemon as the service user, as the unit starts it (no systemd here to do it)"
if python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1",1143))' 2>/dev/null; then
	runuser -u coi-proxy -- /usr/bin/coi-proxy --config /etc/coi-proxy/proxy.toml --state-dir /var/lib/coi-proxy run \
		>"$W/daemon.log" 2>&1 &
	DAEMON_PID=$!
	for _ in $(seq 200); do grep -q "coi-proxy ready" "$W/daemon.log" && break; sleep 0.05; done
	grep -q "coi-proxy ready" "$W/daemon.log" || { cat "$W/daemon.log"; fail "the daemon did not start"; }
	python3 - <<'PY' || fail "login through the installed daemon"
import imaplib, ssl
ctx = ssl.create_default_context(cafile="/var/lib/coi-proxy/tls/ca.pem")
m = imaplib.IMAP4_SSL("localhost", 1993, ssl_context=ctx)
m.login("alice@example.org", "secret")
assert m.select("INBOX")[0] == "OK"
m.logout()
print("  login through 127.0.0.1:1993 with the packaged CA: OK")
PY
	kill "$DAEMON_PID"
	wait "$DAEMON_PID" 2>/dev/null || true
	DAEMON_PID=""
else
	echo "package test: SKIPPED the daemon run: port 1143 is taken on this machine"
fi

say "upgrade (reinstall) keeps state and config"
SUM_STATE=$(find /var/lib/coi-proxy -type f -exec sha256sum {} + | sort)
SUM_CONF=$(sha256sum /etc/coi-proxy/proxy.toml)
dpkg -i "$DEB" >"$W/upgrade.log" 2>&1 </dev/null || { cat "$W/upgrade.log"; fail "upgrade"; }
[ "$SUM_CONF" = "$(sha256sum /etc/coi-proxy/proxy.toml)" ] || fail "the upgrade changed the config"
[ "$SUM_STATE" = "$(find /var/lib/coi-proxy -type f -exec sha256sum {} + | sort)" ] || fail "the upgrade changed the state"

say "remove keeps the conffile and the state"
dpkg -r coi-proxy >"$W/remove.log" 2>&1 || { cat "$W/remove.log"; fail "dpkg -r"; }
[ ! -e /usr/bin/coi-proxy ] || fail "the binary is still there after remove"
[ -f /etc/coi-proxy/proxy.toml ] || fail "remove deleted the conffile"
[ -f /var/lib/coi-proxy/tls/ca.pem ] || fail "remove deleted the state"

say "purge leaves nothing behind"
dpkg --purge coi-proxy >"$W/purge.log" 2>&1 || { cat "$W/purge.log"; fail "dpkg --purge"; }
getent passwd coi-proxy >/dev/null && fail "the coi-proxy user is still there"
getent group coi-proxy >/dev/null && fail "the coi-proxy group is still there"
snapshot >"$W/after"
LEFT=""
while read -r path; do
	# Something another process installed meanwhile belongs to another package.
	dpkg -S "$path" >/dev/null 2>&1 || LEFT="$LEFT $path"
done < <(comm -13 "$W/before" "$W/after")
[ -z "$LEFT" ] || fail "left behind after purge:$LEFT"
say "PASS (installed, verified, checked as the service user, upgraded, removed, purged clean)"
