#!/usr/bin/env bash
# stop-provider.sh STATE_DIR [--clean]
# Stops the Dovecot master started by start-provider.sh (by the pid in
# STATE/run/master.pid; the master takes all its children down with it), the
# SMTP->LMTP relay and, with --postfix, the private Postfix master (pid in
# STATE/postfix/queue/pid/master.pid). Harmless if already stopped.
# --clean also removes the state directory. Since nothing in it is kept, it
# also skips Dovecot's fixed 1 s shutdown sleep (see below): ~0.1 s, not ~1.1 s.
set -u
STATE="${1:?usage: stop-provider.sh STATE_DIR [--clean]}"
CLEAN=0; [ "${2:-}" = "--clean" ] && CLEAN=1
# alive = exists and is not a zombie (daemonised processes are re-parented to
# pid 1, which may reap them late; kill -0 would still succeed on the zombie)
alive() { local st; st="$(ps -o stat= -p "$1" 2>/dev/null)" && [ -n "$st" ] && [ "${st#Z}" = "$st" ]; }
# live (non-zombie) children of $1 as "pid comm" lines
children() { ps -o stat=,pid=,comm= --ppid "$1" 2>/dev/null | awk '$1 !~ /^Z/ { print $2, $3 }'; }
PIDF="$STATE/run/master.pid"
if [ -f "$PIDF" ]; then
  PID="$(cat "$PIDF")"
  if alive "$PID"; then
    kill -TERM "$PID"
    for _ in $(seq 1 200); do
      alive "$PID" || break
      # On TERM the master SIGQUITs its children, then sleeps a fixed 1 s
      # (services_monitor_wait_and_kill) so that a restart could re-bind the
      # ports, and only then lets its log process go. Once nothing but the log
      # process is left, no mail or log data we would keep is in flight.
      if [ "$CLEAN" = 1 ]; then
        KIDS="$(children "$PID")"
        if [ -z "$(grep -v ' log$' <<<"$KIDS")" ]; then
          kill -KILL "$PID" 2>/dev/null
          for c in $(cut -d' ' -f1 <<<"$KIDS"); do kill -KILL "$c" 2>/dev/null; done
        fi
      fi
      sleep 0.025
    done
    if alive "$PID"; then
      echo "master $PID still alive after 5 s, sending KILL" >&2
      KIDS="$(children "$PID")"
      kill -KILL "$PID" 2>/dev/null
      # children of a KILLed master: end them one by one, by pid
      for c in $(cut -d' ' -f1 <<<"$KIDS"); do kill -KILL "$c" 2>/dev/null; done
    fi
  fi
  rm -f "$PIDF"
fi
# the SMTP->LMTP relay helper
if [ -f "$STATE/run/relay.pid" ]; then
  RPID="$(cat "$STATE/run/relay.pid")"
  kill -TERM "$RPID" 2>/dev/null
  for _ in $(seq 1 80); do alive "$RPID" || break; sleep 0.025; done
  kill -KILL "$RPID" 2>/dev/null
  rm -f "$STATE/run/relay.pid"
fi
# the private Postfix instance of --postfix: TERM its master (by the pid in
# STATE/postfix/queue/pid/master.pid); the master ends its own children.
# Same effect as "postfix -c STATE/postfix/conf stop", without its 1 s polling.
PFPIDF="$STATE/postfix/queue/pid/master.pid"
if [ -f "$PFPIDF" ]; then
  PFPID="$(tr -dc 0-9 < "$PFPIDF")"
  if [ -n "$PFPID" ] && alive "$PFPID" && [ "$(ps -o comm= -p "$PFPID")" = master ]; then
    kill -TERM "$PFPID"
    for _ in $(seq 1 200); do alive "$PFPID" || break; sleep 0.025; done
    if alive "$PFPID"; then
      echo "postfix master $PFPID still alive after 5 s, sending KILL" >&2
      for c in $(ps -o pid= --ppid "$PFPID" 2>/dev/null); do kill -KILL "$c" 2>/dev/null; done
      kill -KILL "$PFPID" 2>/dev/null
    fi
  fi
  rm -f "$PFPIDF"
fi
[ "$CLEAN" = 1 ] && rm -rf "$STATE"
exit 0
