#!/usr/bin/env bash
# stop-other.sh STATE_DIR [--clean]
# Stops what start-cyrus.sh / start-courier.sh / start-imap4d.sh started in STATE_DIR:
# every pid recorded in STATE/run/*.pid (TERM, then KILL after 5 s; children of a
# KILLed daemon are ended one by one, by pid). --clean also removes STATE_DIR.
set -u
STATE="${1:?usage: stop-other.sh STATE_DIR [--clean]}"
alive() { local st; st="$(ps -o stat= -p "$1" 2>/dev/null)" && [ -n "$st" ] && [ "${st#Z}" = "$st" ]; }
shopt -s nullglob
for PIDF in "$STATE"/run/*.pid; do
  PID="$(tr -dc '0-9' < "$PIDF")"
  [ -n "$PID" ] || { rm -f "$PIDF"; continue; }
  if alive "$PID"; then
    KIDS="$(ps -o pid= --ppid "$PID" 2>/dev/null)"
    kill -TERM "$PID" 2>/dev/null
    for _ in $(seq 1 200); do alive "$PID" || break; sleep 0.025; done
    if alive "$PID"; then
      echo "$(basename "$PIDF" .pid) $PID still alive after 5 s, sending KILL" >&2
      kill -KILL "$PID" 2>/dev/null
    fi
    for c in $KIDS; do alive "$c" && kill -KILL "$c" 2>/dev/null; done
  fi
  rm -f "$PIDF"
done
[ "${2:-}" = "--clean" ] && rm -rf "$STATE"
exit 0
