#!/usr/bin/env python3
"""The IMAP steps of Delta Chat's push registration, with Python's imaplib, through coi-proxy
(run by tests/deltachat_push.rs, which starts the provider, the proxy and the notifier):

    dc_push.py caps PORT USER           capabilities after login, and the answers to the
                                        GETMETADATA Delta Chat sends (chatmail/core imap.rs)
    dc_push.py register PORT USER TOKEN...
                                        one connection per token (a device each), each sending
                                        SETMETADATA "INBOX" (/private/devicetoken "TOKEN") as
                                        Delta Chat does

Prints a JSON report; exit status 0 when every command got an answer.
"""
import imaplib
import json
import sys

PASSWORD = "secret"
# What Delta Chat asks for, verbatim.
DC_GETMETADATA = ("(/shared/comment /shared/admin /shared/vendor/deltachat/irohrelay "
                  "/shared/vendor/deltachat/turn /shared/vendor/deltachat/maxsmtprecipients "
                  "/shared/vendor/deltachat/appversions)")
imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))


def login(port, user):
    m = imaplib.IMAP4("127.0.0.1", port)
    typ, data = m.login(user, PASSWORD)
    assert typ == "OK", (typ, data)
    return m


def metadata(data):
    """The entries of METADATA responses: imaplib hands literal values as (prefix, value) tuples."""
    out = {}
    items = []
    for d in data:
        if isinstance(d, tuple):
            items.append(d[0].decode(errors="replace"))
            items.append(("VALUE", d[1].decode(errors="replace")))
        elif d is not None:
            items.append(d.decode(errors="replace"))
    text_entry = None
    for item in items:
        if isinstance(item, tuple):
            out[text_entry] = item[1]
            continue
        words = item.replace("(", " ").replace(")", " ").split()
        i = 0
        while i < len(words):
            w = words[i]
            if w.startswith("/"):
                nxt = words[i + 1] if i + 1 < len(words) else None
                if nxt is None or nxt.startswith("{"):
                    text_entry = w
                else:
                    out[w] = None if nxt == "NIL" else nxt.strip('"')
                    i += 1
            i += 1
    return out


def caps(port, user):
    m = login(port, user)
    typ, data = m.capability()
    report = {"capabilities": sorted(data[0].decode().split())}
    typ, data = m._simple_command("GETMETADATA", '""', DC_GETMETADATA)
    typ, data = m._untagged_response(typ, data, "METADATA")
    report["getmetadata"] = {"status": typ, "entries": metadata(data)}
    typ, data = m._simple_command("GETMETADATA", '"INBOX"', "/private/devicetoken")
    typ, data = m._untagged_response(typ, data, "METADATA")
    report["devicetoken"] = {"status": typ, "entries": metadata(data)}
    typ, data = m._simple_command("SETMETADATA", '""', "(/shared/vendor/deltachat/maxsmtprecipients 5)")
    report["set_vendor"] = {"status": typ, "text": [d.decode() for d in data if d]}
    m.logout()
    return report


def register(port, user, tokens):
    report = {"registered": []}
    conns = []
    for token in tokens:
        m = login(port, user)
        typ, data = m._simple_command("SETMETADATA", '"INBOX"', '(/private/devicetoken "%s")' % token)
        report["registered"].append({"status": typ, "text": [d.decode() for d in data if d]})
        conns.append(m)
    for m in conns:
        m.logout()
    return report


def main():
    action, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if action == "caps":
        report = caps(port, user)
    elif action == "register":
        report = register(port, user, sys.argv[4:])
    else:
        raise SystemExit("unknown action %r" % action)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
