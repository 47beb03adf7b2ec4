#!/bin/sh
# Installs what the test suite needs on Debian/Ubuntu: a real Dovecot (IMAP, LMTP,
# submission) that the tests start on random loopback ports, python3 and openssl used by the
# provider scripts, systemd for `systemd-analyze` (tests/ops.rs checks the shipped unit files
# with it), Postfix (tests/receipts.rs runs a private instance as the provider's MTA, for
# DSNs), and Delta Chat (deltachat-rpc-server/-client from PyPI) for the real-client tests;
# for the benches (bench/README.md), nginx's mail proxy, which `cargo bench --bench peers`
# measures coi-proxy against. Nothing is configured system-wide; no service is started.
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PACKAGES="dovecot-imapd dovecot-lmtpd dovecot-submissiond python3 openssl systemd"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  # policy-rc.d-less machines would start the system Dovecot; it is not needed, stop it again.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
  $SUDO systemctl disable --now dovecot 2>/dev/null || true
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
