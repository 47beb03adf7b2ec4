"""A plain mail client (imaplib) keeping its own copies through coi-proxy: it APPENDs a Sent copy
and a draft of an encrypted conversation and a Sent copy of a clear one, reads them back, copies
and moves the encrypted one, and reads the copies; prints what it saw as JSON.

Usage: append.py PORT USER PASSWORD PEER OTHER. The messages are from USER; the encrypted
conversation is with PEER (whose key the proxy knows), the clear one with OTHER.
"""
import imaplib
import json
import re
import sys

port, user, password, peer, other = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]


def message(to, subject, text):
    return (
        "From: Bob <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Sat, 5 Dec 2026 19:35:50 +0000\r\n"
        "Message-ID: <%s@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n"
        % (user, to, subject, subject, text)
    ).encode()


def code(data, name):
    m = re.search(r"\[%s ([^\]]*)\]" % name, b" ".join(d for d in data if isinstance(d, bytes)).decode())
    return m.group(1).split() if m else None


imap = imaplib.IMAP4("127.0.0.1", port)
imap.login(user, password)
for box in ("Sent", "Drafts", "Archive", "Kept"):
    imap.create(box)
out = {"appended": {}}
sent = message(peer, "sent-copy", "meet me at the old mill at nine")
draft = message(peer, "draft", "a draft about the old mill")
clear = message(other, "clear-copy", "nothing secret here")
for box, flags, msg, name in (
    ("Sent", "(\\Seen)", sent, "sent"),
    ("Drafts", "(\\Draft)", draft, "draft"),
    ("Sent", "(\\Seen)", clear, "clear"),
):
    typ, data = imap.append(box, flags, None, msg)
    assert typ == "OK", (typ, data)
    out["appended"][name] = {"uid": code(data, "APPENDUID"), "bytes": msg.decode()}


def read(box):
    """UID -> (RFC822.SIZE, BODY[] text) of every message in box."""
    typ, _ = imap.select(box)
    assert typ == "OK"
    typ, data = imap.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK", data
    found = {}
    for entry in data:
        if isinstance(entry, tuple):
            head = entry[0].decode()
            uid = re.search(r"UID (\d+)", head).group(1)
            size = int(re.search(r"RFC822.SIZE (\d+)", head).group(1))
            found[uid] = {"size": size, "body": entry[1].decode(errors="replace")}
    return found


out["sent"] = read("Sent")
out["drafts"] = read("Drafts")
imap.select("Sent")
typ, data = imap.uid("SEARCH", None, "BODY", '"old mill"')
out["search"] = data[0].decode().split()
sent_uid = out["appended"]["sent"]["uid"][1]
# imaplib's uid() drops the tagged text, where COPY's COPYUID is; MOVE says it untagged.
typ, data = imap._simple_command("UID", "COPY", sent_uid, "Archive")
assert typ == "OK", data
out["copyuid"] = code(data, "COPYUID")
imap.untagged_responses.pop("OK", None)
typ, data = imap._simple_command("UID", "MOVE", sent_uid, "Kept")
assert typ == "OK", data
out["moveuid"] = code(imap.untagged_responses.get("OK", []) + data, "COPYUID")
out["sent_after_move"] = read("Sent")
out["archive"] = read("Archive")
out["kept"] = read("Kept")
imap.logout()
print(json.dumps(out))
