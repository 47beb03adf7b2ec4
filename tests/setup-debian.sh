#!/bin/sh
# Installs what the test suite needs on Debian/Ubuntu: a real Dovecot (IMAP, LMTP,
# submission) that the tests start on random loopback ports, plus python3 and openssl used
# by the provider scripts. Nothing is configured system-wide; no service is started.
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PACKAGES="dovecot-imapd dovecot-lmtpd dovecot-submissiond python3 openssl"
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
