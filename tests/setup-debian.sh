#!/bin/sh
# Installs what the test suite needs on Debian/Ubuntu: a real Dovecot (IMAP, LMTP,
# submission) that the tests start on random loopback ports, python3 and openssl used by the
# provider scripts, systemd for `systemd-analyze` (tests/ops.rs checks the shipped unit files
# with it), Postfix (tests/receipts.rs runs a private instance as the provider's MTA, for
# DSNs), Delta Chat (deltachat-rpc-server/-client from PyPI) and the mail clients of
# tests/clients.rs (isync, offlineimap3, neomutt, curl) for the real-client tests, three more
# IMAP providers for tests/providers.rs: Cyrus, Courier and GNU Mailutils imap4d, dnsmasq and
# man for tests/setup.rs and tests/packaging.rs, and lintian for tests/package.sh; for the
# benches (bench/README.md), nginx's mail proxy, which `cargo bench --bench peers` measures
# coi-proxy against; for the scale-out tests (tests/cluster.rs), etcd and HAProxy, and protoc
# with the well-known .proto files, which the etcd-client crate's build needs. Nothing is
# configured system-wide; no service is started.
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PACKAGES="dovecot-imapd dovecot-lmtpd dovecot-submissiond python3 openssl systemd \
  isync offlineimap3 neomutt curl dnsmasq-base man-db lintian \
  etcd-server etcd-client haproxy protobuf-compiler libprotobuf-dev"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  # policy-rc.d-less machines would start the system Dovecot; it is not needed, stop it again.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
  $SUDO systemctl disable --now dovecot 2>/dev/null || true
  $SUDO systemctl disable --now etcd 2>/dev/null || true
  $SUDO systemctl disable --now haproxy 2>/dev/null || true
fi

# Postfix without a system configuration (the tests write their own, see tests/support/provider).
if ! dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q "ok installed"; then
  echo 'postfix postfix/main_mailer_type select No configuration' | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postfix
  $SUDO systemctl disable --now postfix 2>/dev/null || true
fi

# nginx's mail proxy for bench/peers.rs (it runs a private instance from its own config).
if ! dpkg-query -W -f='${Status}' libnginx-mod-mail 2>/dev/null | grep -q "ok installed"; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light libnginx-mod-mail
  $SUDO systemctl disable --now nginx 2>/dev/null || true
fi

# Delta Chat for tests/deltachat.rs, into the python3 the tests run.
if ! python3 -c "import deltachat_rpc_client, deltachat_rpc_server" 2>/dev/null; then
  python3 -m pip --version >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip
  python3 -m pip install --quiet deltachat-rpc-server deltachat-rpc-client 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages deltachat-rpc-server deltachat-rpc-client
fi

# Cyrus, Courier and GNU imap4d for tests/providers.rs (tests/support/provider/start-*.sh).
# cyrus-imapd and courier-imap Conflict: imap-server, which dovecot-imapd provides, so those two
# are not installed but unpacked into /opt/imap-providers (what the start scripts look for);
# their libraries and helpers come from the packages that install beside Dovecot. A
# policy-rc.d that exits 101 keeps the installs from starting system daemons.
# (gamin/libgamin0: courier-imap's imapd links libfam; the unpacked .deb brings no dependencies)
OTHERS="cyrus-common cyrus-admin cyrus-clients sasl2-bin courier-base courier-authdaemon courier-authlib-userdb gamin libgamin0 mailutils-imap4d"
missing=""
for p in $OTHERS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
  [ -z "$made_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
PROV_ROOT=/opt/imap-providers
for pkg in cyrus-imapd courier-imap; do
  if [ ! -f "$PROV_ROOT/$pkg/.unpacked" ]; then
    $SUDO mkdir -p "$PROV_ROOT/debs" "$PROV_ROOT/$pkg"
    (cd "$PROV_ROOT/debs" && ls "${pkg}"_*.deb >/dev/null 2>&1 || $SUDO apt-get download "$pkg")
    $SUDO dpkg-deb -x "$(ls -t "$PROV_ROOT/debs/${pkg}"_*.deb | head -1)" "$PROV_ROOT/$pkg"
    $SUDO touch "$PROV_ROOT/$pkg/.unpacked"
  fi
done
# The unpacked binaries must find every library (their Depends were installed above).
for bin in $PROV_ROOT/cyrus-imapd/usr/lib/cyrus/bin/imapd $PROV_ROOT/courier-imap/usr/bin/imapd; do
  if ldd "$bin" | grep -q "not found"; then
    echo "$bin: missing libraries:" >&2; ldd "$bin" | grep "not found" >&2; exit 1
  fi
done
