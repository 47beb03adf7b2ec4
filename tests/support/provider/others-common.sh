# others-common.sh - helpers sourced by start-{cyrus,courier,imap4d}.sh (not run directly)

PROV_ROOT="${PROV_ROOT:-/opt/imap-providers}"   # where conflicting .debs get unpacked

free_ports() {  # free_ports N -> N free 127.0.0.1 TCP ports on one line
python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(*[s.getsockname()[1] for s in socks])
EOF
}

wait_greeting() {  # wait_greeting PORT [SECONDS] [PREFIX] -> 0 once the port greets with PREFIX ("* OK")
python3 - "$1" "${2:-20}" "${3:-* OK}" <<'EOF'
import socket, sys, time
port, deadline, prefix = int(sys.argv[1]), time.time() + float(sys.argv[2]), sys.argv[3].encode()
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.settimeout(5)
        g = s.recv(1024)
        s.close()
        if g.startswith(prefix):
            sys.exit(0)
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("port %d not ready" % port)
    time.sleep(0.05)
EOF
}

make_cert() {  # make_cert DIR DOMAIN -> DIR/cert.pem DIR/key.pem (self-signed, EC P-256)
  local d="$1" dom="$2"
  mkdir -p "$d"
  if [ ! -s "$d/cert.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=localhost" \
      -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:mail.$dom,DNS:$dom" \
      -keyout "$d/key.pem" -out "$d/cert.pem" >/dev/null 2>&1
    chmod 600 "$d/key.pem"
  fi
}

# unpack_deb PKG -> $PROV_ROOT/PKG (for packages that Conflict: imap-server with dovecot-imapd).
# tests/setup-debian.sh does this ahead; here it is the fallback, under a lock because
# parallel tests start several instances at once.
unpack_deb() {
  local pkg="$1" dir="$PROV_ROOT/$1"
  [ -f "$dir/.unpacked" ] && return 0
  mkdir -p "$PROV_ROOT/debs"
  (
    flock 9
    [ -f "$dir/.unpacked" ] && exit 0
    mkdir -p "$dir"
    cd "$PROV_ROOT/debs"
    ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get download "$pkg" >/dev/null 2>&1 \
      || { echo "apt-get download $pkg failed (run tests/setup-debian.sh)" >&2; exit 1; }
    dpkg-deb -x "$(ls -t "$PROV_ROOT/debs/${pkg}"_*.deb | head -1)" "$dir"
    touch "$dir/.unpacked"
  ) 9>"$PROV_ROOT/debs/.lock"
}

ensure_policy_rc() {  # keep package installs from starting system daemons
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
  fi
}

ms_since() { python3 -c "import sys; print(int((float(sys.argv[2])-float(sys.argv[1]))*1000))" "$1" "$(date +%s.%N)"; }

# alive PID: exists and is not a zombie
alive() { local st; st="$(ps -o stat= -p "$1" 2>/dev/null)" && [ -n "$st" ] && [ "${st#Z}" = "$st" ]; }
