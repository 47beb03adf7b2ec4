#!/usr/bin/env python3
"""capture-transcript.py PORT USER PASSWORD > FILE

Records what tests/fixtures/providers/*.txt hold: a provider's greeting, CAPABILITY before and
after LOGIN, NAMESPACE, LIST "" "", LIST "" INBOX and ID, as "C: " / "S: " lines (the password
is written as "secret" whatever it is). The provider-profile unit tests read these files.
"""
import socket
import sys

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
f = sock.makefile("rb")
out = []


def read_line():
    line = f.readline()
    out.append("S: " + line.decode("utf-8", "replace").rstrip("\r\n"))
    return line


def cmd(tag, text, shown=None):
    sock.sendall(("%s %s\r\n" % (tag, text)).encode())
    out.append("C: %s %s" % (tag, shown or text))
    while not read_line().startswith(tag.encode() + b" "):
        pass


read_line()
cmd("a1", "CAPABILITY")
cmd("a2", 'LOGIN "%s" "%s"' % (user, password), 'LOGIN "%s" "secret"' % user)
cmd("a3", "CAPABILITY")
cmd("a4", "NAMESPACE")
cmd("a5", 'LIST "" ""')
cmd("a6", 'LIST "" INBOX')
cmd("a7", 'ID ("name" "coi-proxy")')
cmd("a8", "LOGOUT")
print("\n".join(out))
