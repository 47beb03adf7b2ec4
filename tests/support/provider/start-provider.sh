#!/usr/bin/env bash
# start-provider.sh - stand up an ordinary (non-COI) mail provider on loopback:
#   Dovecot 2.3 IMAP (plain+STARTTLS and implicit TLS), Dovecot submission
#   (AUTH PLAIN/LOGIN, plain+STARTTLS and implicit TLS) and Dovecot LMTP for
#   local delivery.  Everything (configs, certs, mail, logs, sockets, pids)
#   lives in one state directory; nothing system-wide is touched.
#   Used by the integration tests (tests/support/provider.rs); also handy by hand.
#
# Usage: start-provider.sh [options] [STATE_DIR]
#   STATE_DIR                default: $(mktemp -d "${TMPDIR:-/tmp}/provider.XXXXXX")
#   --imap-port N            plain/STARTTLS IMAP      (default: free port)
#   --imaps-port N           implicit-TLS IMAP        (default: free port)
#   --smtp-port N            plain/STARTTLS submission (default: free port)
#   --smtps-port N           implicit-TLS submission  (default: free port)
#   --lmtp-port N            LMTP listener, e.g. to inject "incoming" mail (default: free)
#   --relay-port N           internal SMTP->LMTP relay used by submission (default: free)
#   --domain D               mail domain (repeatable; default example.org)
#   --users "a b c"          local parts (default "alice bob carol")
#   --password P             password for every user (default "secret")
#   --no-idle                legacy variant: remove IDLE from CAPABILITY
#   --metadata               enable RFC 5464 METADATA (off by default in Dovecot 2.3)
#   --compress               offer COMPRESS=DEFLATE (RFC 4978; Dovecot's imap_zlib plugin)
#   --slash-separator        "/" as hierarchy separator (default: Maildir++'s ".")
#   --remove-cap "X Y"       remove arbitrary tokens from the post-login CAPABILITY
#   --rawlog                 rawlogs: post-login per user in STATE/rawlog/<user>/,
#                            pre-login (both protocols) in STATE/rawlog/login/
#   --verbose                auth_verbose + mail_debug into STATE/log/dovecot.log
#   --max-conns N            mail_max_userip_connections (default 100); above 500 the
#                            process and client limits of every service grow with it
#   --imap-client-limit N    sessions one imap process serves (default 1), so that very many
#                            sessions need few processes (10,000 at 1 would be 10,000 processes);
#                            above 1 the login service runs in Dovecot's high-performance mode
#                            too (long-lived imap-login processes, one per core), so that a
#                            storm of logins is not a storm of forks
#   --require-auth-delay     keep Dovecot's 2 s auth_failure_delay (default 0 s)
#   --oauth2-introspection-url URL
#                            OAuth2 bearer tokens (IMAP AUTHENTICATE and submission
#                            AUTH): an oauth2 passdb that asks URL (RFC 7662, POST)
#                            whether a token is active and whose it is; passwords
#                            still work (passwd-file, PLAIN/LOGIN only). The anvil
#                            auth penalty is off, so refused tokens are not delayed.
#   --oauth2-mechanisms "M"  the bearer mechanisms offered (default "xoauth2 oauthbearer")
#   --trusted-proxy          login_trusted_networks = 127.0.0.1/32: a proxy connecting from
#                            there may pass its client's address (IMAP ID x-originating-ip,
#                            submission XCLIENT), which Dovecot's auth penalty then counts
#   --case-sensitive         user names are case-sensitive (username_format=%u), so that
#                            "Bob" and "bob" can be two users with their own mail
#   --postfix                MTA variant (root only; apt-get install postfix): a real
#                            Postfix, run from STATE/postfix/conf with its own queue,
#                            is the submission service on --smtp-port (plain+STARTTLS)
#                            and --smtps-port (implicit TLS): SASL via Dovecot auth,
#                            DSN (RFC 3461) advertised, delivery to Dovecot LMTP;
#                            other domains bounce locally. Dovecot submission and the
#                            Python relay are not started in this mode.
#
# Prints env-style PROVIDER_* lines on stdout (also saved to STATE/env).
# Stop with: stop-provider.sh STATE_DIR [--clean]  (kills by the pids in STATE)
# Needs: dovecot-imapd dovecot-lmtpd dovecot-submissiond, python3, openssl.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
IMAP_PORT="" IMAPS_PORT="" SMTP_PORT="" SMTPS_PORT="" LMTP_PORT="" RELAY_PORT=""
DOMAINS=() USERS="alice bob carol" PASSWORD="secret"
NO_IDLE=0 METADATA=0 COMPRESS=0 SLASH=0 REMOVE_CAP="" RAWLOG=0 VERBOSE=0 MAXCONN=100 AUTH_DELAY="0" POSTFIX=0
OAUTH2_URL="" OAUTH2_MECHS="xoauth2 oauthbearer"
TRUSTED_CONF="" USER_FORMAT="%Lu" HOME_FORMAT="%Ld/%Ln"
IMAP_CLIENT_LIMIT=1
STATE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --imap-port) IMAP_PORT="$2"; shift 2;;
    --imaps-port) IMAPS_PORT="$2"; shift 2;;
    --smtp-port|--submission-port) SMTP_PORT="$2"; shift 2;;
    --smtps-port|--submissions-port) SMTPS_PORT="$2"; shift 2;;
    --lmtp-port) LMTP_PORT="$2"; shift 2;;
    --relay-port) RELAY_PORT="$2"; shift 2;;
    --domain) DOMAINS+=("$2"); shift 2;;
    --users) USERS="$2"; shift 2;;
    --password) PASSWORD="$2"; shift 2;;
    --no-idle) NO_IDLE=1; shift;;
    --metadata) METADATA=1; shift;;
    --compress) COMPRESS=1; shift;;
    --slash-separator) SLASH=1; shift;;
    --remove-cap) REMOVE_CAP="$REMOVE_CAP $2"; shift 2;;
    --rawlog) RAWLOG=1; shift;;
    --verbose) VERBOSE=1; shift;;
    --max-conns) MAXCONN="$2"; shift 2;;
    --imap-client-limit) IMAP_CLIENT_LIMIT="$2"; shift 2;;
    --require-auth-delay) AUTH_DELAY="2 secs"; shift;;
    --trusted-proxy) TRUSTED_CONF="login_trusted_networks = 127.0.0.1/32"; shift;;
    --case-sensitive) USER_FORMAT="%u"; HOME_FORMAT="%d/%n"; shift;;
    --postfix) POSTFIX=1; shift;;
    --oauth2-introspection-url) OAUTH2_URL="$2"; shift 2;;
    --oauth2-mechanisms) OAUTH2_MECHS="$2"; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0;;
    -*) echo "unknown option $1" >&2; exit 2;;
    *) STATE="$1"; shift;;
  esac
done
[ ${#DOMAINS[@]} -eq 0 ] && DOMAINS=(example.org)
[ "$NO_IDLE" = 1 ] && REMOVE_CAP="$REMOVE_CAP IDLE"
REMOVE_CAP="$(echo $REMOVE_CAP)"

DOVECOT="${DOVECOT:-$(command -v dovecot || echo /usr/sbin/dovecot)}"
DOVEADM="${DOVEADM:-$(command -v doveadm || echo /usr/bin/doveadm)}"
PKGS="apt-get install dovecot-imapd dovecot-lmtpd dovecot-submissiond"
[ -x "$DOVECOT" ] || { echo "dovecot not found: $PKGS" >&2; exit 1; }
[ -x /usr/lib/dovecot/imap ] || { echo "dovecot-imapd missing: $PKGS" >&2; exit 1; }
[ -x /usr/lib/dovecot/submission ] || { echo "dovecot-submissiond missing: $PKGS" >&2; exit 1; }
[ -x /usr/lib/dovecot/lmtp ] || { echo "dovecot-lmtpd missing: $PKGS" >&2; exit 1; }
# Prefer the system python3: a pyenv/asdf shim first in PATH costs ~110 ms per
# call (the system one ~20 ms), and this script calls it 2-4 times. Stdlib only.
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON="$(command -v python3 || true)"; fi
fi
[ -n "$PYTHON" ] || { echo "python3 not found: apt-get install python3" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl not found: apt-get install openssl" >&2; exit 1; }
if [ "$POSTFIX" = 1 ]; then
  POSTFIX_CMD="${POSTFIX_CMD:-$(command -v postfix || echo /usr/sbin/postfix)}"
  [ -x "$POSTFIX_CMD" ] || { echo "postfix not found: echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections; apt-get install postfix" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "--postfix needs root (the Postfix master runs as root)" >&2; exit 1; }
  getent passwd postfix >/dev/null || { echo "user postfix missing (install the postfix package)" >&2; exit 1; }
fi

T0=$EPOCHREALTIME
if [ -z "$STATE" ]; then STATE="$(mktemp -d "${TMPDIR:-/tmp}/provider.XXXXXX")"; fi
mkdir -p "$STATE"; STATE="$(cd "$STATE" && pwd)"
if [ -f "$STATE/run/master.pid" ] && kill -0 "$(cat "$STATE/run/master.pid")" 2>/dev/null; then
  echo "provider already running in $STATE (pid $(cat "$STATE/run/master.pid"))" >&2; exit 1
fi
# unix socket paths must stay < 108 bytes
if [ ${#STATE} -gt 70 ]; then echo "state dir path too long for unix sockets: $STATE" >&2; exit 1; fi
chmod 755 "$STATE" 2>/dev/null || true
mkdir -p "$STATE/run" "$STATE/lib" "$STATE/log" "$STATE/tls" "$STATE/mail" "$STATE/rawlog"

# ---- ports: pick free ones for anything not given -------------------------
read -r P1 P2 P3 P4 P5 P6 < <("$PYTHON" - <<'EOF'
import socket
socks=[]
for _ in range(6):
    s=socket.socket(); s.bind(("127.0.0.1",0)); socks.append(s)
print(*[s.getsockname()[1] for s in socks])
EOF
)
IMAP_PORT=${IMAP_PORT:-$P1}; IMAPS_PORT=${IMAPS_PORT:-$P2}
SMTP_PORT=${SMTP_PORT:-$P3}; SMTPS_PORT=${SMTPS_PORT:-$P4}; LMTP_PORT=${LMTP_PORT:-$P5}; RELAY_PORT=${RELAY_PORT:-$P6}

# ---- who runs what ---------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
  INTERNAL_USER=dovecot; INTERNAL_GROUP=dovecot; LOGIN_USER=dovenull
  MAIL_USER=dovecot; MAIL_GROUP=dovecot; CHROOT_LOGIN="login"; CHROOT_ANVIL="empty"
else
  INTERNAL_USER="$(id -un)"; INTERNAL_GROUP="$(id -gn)"; LOGIN_USER="$INTERNAL_USER"
  MAIL_USER="$INTERNAL_USER"; MAIL_GROUP="$INTERNAL_GROUP"; CHROOT_LOGIN=""; CHROOT_ANVIL=""
fi
MAIL_UID=$(id -u "$MAIL_USER"); MAIL_GID=$(getent group "$MAIL_GROUP" | cut -d: -f3)
# as root, Dovecot's auth/mail processes run as $MAIL_USER: every parent of the
# state dir must be traversable by it (mktemp -d gives 0700 dirs!)
if [ "$(id -u)" = 0 ] && ! setpriv --reuid="$MAIL_UID" --regid="$MAIL_GID" --clear-groups test -x "$STATE"; then
  echo "state dir $STATE is not reachable by user $MAIL_USER (a parent dir lacks o+x);" \
       "use a dir under /tmp or chmod o+x its parents" >&2
  exit 1
fi

# ---- TLS: self-signed cert (EC P-256, SAN localhost/127.0.0.1/mail.<domain>)
if [ ! -s "$STATE/tls/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:mail.${DOMAINS[0]},DNS:${DOMAINS[0]}" \
    -keyout "$STATE/tls/key.pem" -out "$STATE/tls/cert.pem" >/dev/null 2>&1
  chmod 600 "$STATE/tls/key.pem"
fi

# ---- users (passwd-file: user:{scheme}pass:uid:gid:gecos:home:shell:extra) --
: > "$STATE/users"
ALLUSERS=()
for d in "${DOMAINS[@]}"; do
  for u in $USERS; do
    echo "$u@$d:{PLAIN}$PASSWORD::::::" >> "$STATE/users"
    ALLUSERS+=("$u@$d")
    mkdir -p "$STATE/mail/$d/$u" "$STATE/rawlog/$u@$d"
  done
done
chmod 640 "$STATE/users"
if [ "$(id -u)" = 0 ]; then
  chown root:"$INTERNAL_GROUP" "$STATE/users"
  chown -R "$MAIL_USER:$MAIL_GROUP" "$STATE/mail" "$STATE/rawlog"
fi

INSTANCE="prov-$(basename "$STATE" | tr -c 'A-Za-z0-9\n' '-')"
RAWLOG_CONF="" LOGIN_EXEC_IMAP="" LOGIN_EXEC_SUBM=""
if [ "$RAWLOG" = 1 ]; then
  # post-login traffic: rawlog_dir per user; pre-login traffic (CAPABILITY,
  # STARTTLS, AUTHENTICATE, EHLO, ...): the login processes' -R option, which
  # needs the login processes un-chrooted so that the path resolves.
  RAWLOG_CONF="rawlog_dir = $STATE/rawlog/%u"
  mkdir -p "$STATE/rawlog/login"
  [ "$(id -u)" = 0 ] && chown "$LOGIN_USER" "$STATE/rawlog/login"
  LOGIN_EXEC_IMAP="executable = imap-login -R $STATE/rawlog/login"
  LOGIN_EXEC_SUBM="executable = submission-login -R $STATE/rawlog/login"
  CHROOT_LOGIN=""
fi
VERBOSE_CONF=""
if [ "$VERBOSE" = 1 ]; then
  VERBOSE_CONF=$'auth_verbose = yes\nauth_debug = yes\nmail_debug = yes\nverbose_ssl = yes'
fi
PROTOCOLS="imap lmtp submission" AUTH_POSTFIX_CONF=""
if [ "$POSTFIX" = 1 ]; then
  # Postfix is the submission service; its smtpd authenticates via this socket
  PROTOCOLS="imap lmtp"
  AUTH_POSTFIX_CONF=$'service auth {\n  unix_listener auth-postfix {\n    mode = 0660\n    user = postfix\n    group = postfix\n  }\n}'
fi
# --slash-separator: "/" as hierarchy separator (Maildir with the fs layout), as many
# providers have, instead of Maildir++'s "."
MAIL_LAYOUT="" NS_SEPARATOR=""
if [ "$SLASH" = 1 ]; then MAIL_LAYOUT=":LAYOUT=fs"; NS_SEPARATOR="separator = /"; fi
COMPRESS_CONF=""
if [ "$COMPRESS" = 1 ]; then COMPRESS_CONF='mail_plugins = $mail_plugins imap_zlib'; fi
# --oauth2-introspection-url: bearer tokens checked by an oauth2 passdb, passwords by the
# passwd-file one (each passdb only for its mechanisms), and no auth penalty (anvil would delay
# every login after a refused token by 2, 4, 8 ... s, past a test token's life)
AUTH_MECHS="plain login" PASSDB_MECHS="" OAUTH2_PASSDB="" ANVIL_PENALTY=""
if [ -n "$OAUTH2_URL" ]; then
  AUTH_MECHS="plain login $OAUTH2_MECHS"
  PASSDB_MECHS="mechanisms = plain login"
  cat > "$STATE/dovecot-oauth2.conf.ext" <<EOF2
introspection_url = $OAUTH2_URL
introspection_mode = post
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
EOF2
  chmod 644 "$STATE/dovecot-oauth2.conf.ext"
  OAUTH2_PASSDB="passdb {
  driver = oauth2
  mechanisms = $OAUTH2_MECHS
  args = $STATE/dovecot-oauth2.conf.ext
}"
  ANVIL_PENALTY="unix_listener anvil-auth-penalty {
    mode = 0
  }"
fi
METADATA_CONF="imap_metadata = no"
if [ "$METADATA" = 1 ]; then
  METADATA_CONF=$'imap_metadata = yes\nmail_attribute_dict = file:%h/dovecot-attributes'
fi

# Service limits grow with --max-conns: with Dovecot's defaults (100 processes per service, 1000
# clients per service) a storm of 1,000 logins queues at imap-login and at the stats service,
# and the load test would measure that instead of the proxy.
LIMITS_CONF=""
if [ "$MAXCONN" -gt 500 ]; then
  LIMITS_CONF="default_process_limit = $(( MAXCONN + 100 ))"$'\n'"default_client_limit = $(( 5 * MAXCONN + 1000 ))"
fi

# A process serving many sessions must outlive its first one (service_count = 1 ends it then).
IMAP_SERVICE_COUNT="" LOGIN_MODE=""
if [ "$IMAP_CLIENT_LIMIT" -gt 1 ]; then
  IMAP_SERVICE_COUNT="service_count = 0"
  LOGIN_MODE=$'service_count = 0\n  process_min_avail = '"$(nproc)"
fi

write_conf() {  # $1 = extra imap_capability line (may be empty)
cat > "$STATE/dovecot.conf" <<EOF
# generated by start-provider.sh - self-contained, no system includes
instance_name = $INSTANCE
base_dir = $STATE/run
state_dir = $STATE/lib
log_path = $STATE/log/dovecot.log
info_log_path = $STATE/log/dovecot.log
debug_log_path = $STATE/log/dovecot.log
protocols = $PROTOCOLS
listen = 127.0.0.1
hostname = mail.${DOMAINS[0]}
postmaster_address = postmaster@${DOMAINS[0]}
login_greeting = Dovecot ready.
default_internal_user = $INTERNAL_USER
default_internal_group = $INTERNAL_GROUP
default_login_user = $LOGIN_USER
first_valid_uid = $MAIL_UID
first_valid_gid = $MAIL_GID
mail_uid = $MAIL_UID
mail_gid = $MAIL_GID
$LIMITS_CONF
$VERBOSE_CONF

ssl = yes
ssl_cert = <$STATE/tls/cert.pem
ssl_key = <$STATE/tls/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = $AUTH_MECHS
auth_failure_delay = $AUTH_DELAY
auth_cache_size = 0
$TRUSTED_CONF
$OAUTH2_PASSDB
passdb {
  driver = passwd-file
  $PASSDB_MECHS
  args = scheme=PLAIN username_format=$USER_FORMAT $STATE/users
}
userdb {
  driver = passwd-file
  args = username_format=$USER_FORMAT $STATE/users
  default_fields = uid=$MAIL_UID gid=$MAIL_GID home=$STATE/mail/$HOME_FORMAT
}

mail_location = maildir:~/Maildir$MAIL_LAYOUT
mail_max_userip_connections = $MAXCONN
namespace inbox {
  $NS_SEPARATOR
  inbox = yes
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
}

$METADATA_CONF
imap_id_log = *
protocol imap {
  mail_max_userip_connections = $MAXCONN
  $COMPRESS_CONF
  $RAWLOG_CONF
  $1
}

service imap {
  client_limit = $IMAP_CLIENT_LIMIT
  $IMAP_SERVICE_COUNT
}
service imap-login {
  chroot = $CHROOT_LOGIN
  $LOGIN_EXEC_IMAP
  $LOGIN_MODE
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
}
service submission-login {
  chroot = $CHROOT_LOGIN
  $LOGIN_EXEC_SUBM
  inet_listener submission {
    address = 127.0.0.1
    port = $SMTP_PORT
  }
  inet_listener submissions {
    address = 127.0.0.1
    port = $SMTPS_PORT
    ssl = yes
  }
}
service pop3-login {
  chroot = $CHROOT_LOGIN
}
service anvil {
  chroot = $CHROOT_ANVIL
  $ANVIL_PENALTY
}
$AUTH_POSTFIX_CONF
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}

# submission relays every accepted message to smtp-lmtp-relay.py (Dovecot LMTP
# refuses EHLO, so submission cannot talk to it directly); the relay passes the
# transaction to Dovecot LMTP, which delivers to local users and rejects
# unknown recipients (nothing ever leaves loopback).
submission_relay_host = 127.0.0.1
submission_relay_port = $RELAY_PORT
submission_relay_trusted = no
submission_max_mail_size = 50M
protocol submission {
  $RAWLOG_CONF
}
protocol lmtp {
  postmaster_address = postmaster@${DOMAINS[0]}
}
EOF
}

# ---- --postfix: a private Postfix instance (config, queue, data in STATE/postfix)
PFX="$STATE/postfix"
start_postfix() {
  mkdir -p "$PFX/conf" "$PFX/queue" "$PFX/data"
  chown root:root "$PFX/conf" "$PFX/queue"; chmod 755 "$PFX" "$PFX/conf" "$PFX/queue"
  chown postfix:postfix "$PFX/data"; chmod 700 "$PFX/data"   # master.lock lives here
  cat > "$PFX/conf/main.cf" <<EOF
# generated by start-provider.sh --postfix - a private instance: postfix -c $PFX/conf
compatibility_level = 3.6
queue_directory = $PFX/queue
data_directory = $PFX/data
# no syslog daemon needed: postlogd writes here (path must match maillog_file_prefixes)
maillog_file = $STATE/log/postfix.log
maillog_file_prefixes = $STATE/log
syslog_name = postfix
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mail.${DOMAINS[0]}
mydomain = ${DOMAINS[0]}
myorigin = \$mydomain
mynetworks = 127.0.0.0/8
smtpd_banner = \$myhostname ESMTP Postfix
biff = no
append_dot_mydomain = no
readme_directory = no
message_size_limit = 52428800
# ---- delivery: every provider domain goes to Dovecot LMTP; nothing else leaves
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery disabled on this test provider
alias_maps =
alias_database =
virtual_mailbox_domains = ${DOMAINS[*]}
# empty: any local part is accepted at RCPT; Dovecot LMTP rejects unknown users
# (550 5.1.1) and Postfix bounces with a failure DSN
virtual_mailbox_maps =
virtual_alias_maps =
virtual_transport = lmtp:inet:127.0.0.1:$LMTP_PORT
relay_domains =
relay_transport = error:5.7.1 external delivery disabled on this test provider
default_transport = error:5.7.1 external delivery disabled on this test provider
smtp_dns_support_level = disabled
lmtp_host_lookup = native
# ---- submission: SASL via the provider's Dovecot auth, STARTTLS, auth-only relaying
smtpd_sasl_type = dovecot
smtpd_sasl_path = $STATE/run/auth-postfix
smtpd_sasl_auth_enable = yes
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_tls_cert_file = $STATE/tls/cert.pem
smtpd_tls_key_file = $STATE/tls/key.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = no
smtpd_tls_received_header = yes
smtpd_client_connection_count_limit = 0
# bounces/DSNs come from the bounce daemon as MAILER-DAEMON@\$myhostname
delay_warning_time = 0h
EOF
  cat > "$PFX/conf/master.cf" <<EOF
# generated by start-provider.sh --postfix (nothing chrooted)
127.0.0.1:$SMTP_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submission
127.0.0.1:$SMTPS_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
  # Postfix lets a main.cf younger than ~1 s "cool down" (it re-reads it every
  # 0.3 s until mtime < now-1, ~2 s per command): backdate the generated files
  touch -d "@$(( $(date +%s) - 60 ))" "$PFX/conf/main.cf" "$PFX/conf/master.cf"
  : > "$STATE/log/postfix.log"
  # "postfix -c DIR" as root needs no alternate_config_directories entry (only
  # set-gid postdrop/postqueue run by non-root users check that); "postfix check"
  # creates the queue subdirectories with the right owners.
  if ! "$POSTFIX_CMD" -c "$PFX/conf" start </dev/null >>"$STATE/log/startup.log" 2>&1; then
    cat "$STATE/log/startup.log" "$STATE/log/postfix.log" >&2; exit 1
  fi
}

write_conf ""
# no inherited stdout/stderr: the daemonised master must not hold the caller's pipes
if ! "$DOVECOT" -c "$STATE/dovecot.conf" </dev/null >>"$STATE/log/startup.log" 2>&1; then
  cat "$STATE/log/startup.log" >&2; exit 1
fi
if [ "$POSTFIX" = 0 ]; then
setsid "$PYTHON" "$HERE/smtp-lmtp-relay.py" "$RELAY_PORT" "$STATE/run/lmtp" "mail.${DOMAINS[0]}" \
  "$STATE/run/relay.pid" >>"$STATE/log/relay.log" 2>&1 < /dev/null &
else
  start_postfix
fi

# ---- wait for the listeners -------------------------------------------------
wait_ports() {
"$PYTHON" - "$@" <<'EOF'
import socket, sys, time
deadline = time.time() + 15
for p in map(int, sys.argv[1:]):
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", p), timeout=1)
            s.settimeout(5)
            if p in (int(sys.argv[1]), int(sys.argv[3])):  # plain ports: read greeting
                s.recv(512)
            s.close(); break
        except OSError:
            if time.time() > deadline:
                sys.exit("port %d not ready" % p)
            time.sleep(0.02)
EOF
}
if [ "$POSTFIX" = 0 ]; then
  wait_ports "$IMAP_PORT" "$IMAPS_PORT" "$SMTP_PORT" "$SMTPS_PORT" "$LMTP_PORT" "$RELAY_PORT"
  for _ in $(seq 1 100); do [ -s "$STATE/run/relay.pid" ] && break; sleep 0.02; done
  # the port may answer without the relay (e.g. another process won a port race)
  if [ ! -s "$STATE/run/relay.pid" ]; then
    echo "smtp-lmtp-relay did not start:" >&2; cat "$STATE/log/relay.log" >&2; exit 1
  fi
else
  wait_ports "$IMAP_PORT" "$IMAPS_PORT" "$SMTP_PORT" "$SMTPS_PORT" "$LMTP_PORT"
fi

# ---- capability variant: re-write imap_capability without removed tokens -----
# Dovecot computes the post-login CAPABILITY itself, so ask it (as the first
# user), drop the tokens and set the rest as imap_capability.
#   imap_caps get   print the current capability minus the removed tokens
#   imap_caps wait  poll until the reloaded config is live (no removed token
#                   left); "doveadm reload" returns before the master applies it
imap_caps() {
"$PYTHON" - "$1" "$IMAP_PORT" "${ALLUSERS[0]}" "$PASSWORD" "$REMOVE_CAP" <<'EOF'
import imaplib, sys, time
mode, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
remove = set(sys.argv[5].split())
deadline = time.time() + 10
while True:
    try:
        m = imaplib.IMAP4("127.0.0.1", port, timeout=5)
        m.login(user, pw)
        caps = m.capability()[1][0].decode().split()
        m.logout()
    except (OSError, imaplib.IMAP4.error):
        caps = None  # a login process of the old config going away
    if caps is not None and (mode == "get" or not remove & set(caps)):
        break
    if time.time() > deadline:
        sys.exit("post-login CAPABILITY still %s after the reload" % caps)
    time.sleep(0.02)
print(" ".join(c for c in caps if c not in remove))
EOF
}
if [ -n "$REMOVE_CAP" ]; then
  CAP="$(imap_caps get)"
  write_conf "imap_capability = $CAP"
  "$DOVEADM" -c "$STATE/dovecot.conf" reload </dev/null >>"$STATE/log/startup.log" 2>&1
  imap_caps wait >/dev/null
fi

T1=$EPOCHREALTIME
STARTUP_MS=$(( (${T1//[.,]/} - ${T0//[.,]/}) / 1000 ))

{
echo "PROVIDER_STATE_DIR=$STATE"
echo "PROVIDER_HOST=127.0.0.1"
echo "PROVIDER_IMAP_PORT=$IMAP_PORT"
echo "PROVIDER_IMAPS_PORT=$IMAPS_PORT"
echo "PROVIDER_SMTP_PORT=$SMTP_PORT"
echo "PROVIDER_SMTPS_PORT=$SMTPS_PORT"
echo "PROVIDER_LMTP_PORT=$LMTP_PORT"
echo "PROVIDER_RELAY_PORT=$([ "$POSTFIX" = 0 ] && echo "$RELAY_PORT" || echo "")"
echo "PROVIDER_DOMAINS=\"${DOMAINS[*]}\""
echo "PROVIDER_USERS=\"${ALLUSERS[*]}\""
echo "PROVIDER_PASSWORD=$PASSWORD"
echo "PROVIDER_CA_CERT=$STATE/tls/cert.pem"
echo "PROVIDER_PIDFILE=$STATE/run/master.pid"
echo "PROVIDER_PID=$(cat "$STATE/run/master.pid")"
if [ "$POSTFIX" = 0 ]; then
echo "PROVIDER_RELAY_PID=$(cat "$STATE/run/relay.pid")"
else
echo "PROVIDER_RELAY_PID="
echo "PROVIDER_MTA=postfix"
echo "PROVIDER_POSTFIX_DIR=$PFX/conf"
echo "PROVIDER_POSTFIX_PID=$(sed -n '1s/ //gp' "$PFX/queue/pid/master.pid")"
echo "PROVIDER_POSTFIX_LOG=$STATE/log/postfix.log"
fi
echo "PROVIDER_LOG=$STATE/log/dovecot.log"
echo "PROVIDER_RAWLOG_DIR=$([ "$RAWLOG" = 1 ] && echo "$STATE/rawlog" || echo "")"
echo "PROVIDER_REMOVED_CAPS=\"$REMOVE_CAP\""
echo "PROVIDER_METADATA=$METADATA"
echo "PROVIDER_OAUTH2_INTROSPECTION_URL=$OAUTH2_URL"
echo "PROVIDER_STARTUP_MS=$STARTUP_MS"
echo "PROVIDER_STOP=\"$HERE/stop-provider.sh $STATE\""
} | tee "$STATE/env"
