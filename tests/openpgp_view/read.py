"""A plain mail client (imaplib) reading a mailbox through coi-proxy; prints what it saw as JSON.

Usage: read.py PORT USER PASSWORD [CLIENT_NAME]. With CLIENT_NAME the client says ID first (a
chat client's name makes the proxy serve mail as stored).
"""
import email
import email.policy
import imaplib
import json
import re
import sys

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
name = sys.argv[4] if len(sys.argv) > 4 else None
imap = imaplib.IMAP4("127.0.0.1", port)
imap.login(user, password)
if name:
    imaplib.Commands["ID"] = ("AUTH", "SELECTED")
    imap._simple_command("ID", '("name" "%s")' % name)
caps = sorted(imap.capabilities)
imap.select("INBOX")
typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[] BODY.PEEK[TEXT]<0.20>)")
assert typ == "OK", data
messages = []
for entry in data:
    if not isinstance(entry, tuple):
        continue
    head = entry[0].decode()
    if not re.match(r"\d+ \(", head):
        continue  # the second literal of a response (BODY[TEXT] after BODY[])
    uid = int(re.search(r"UID (\d+)", head).group(1))
    size = int(re.search(r"RFC822.SIZE (\d+)", head).group(1))
    messages.append({"uid": uid, "size": size, "head": head, "len": len(entry[1])})
messages.sort(key=lambda m: m["uid"])
# The bodies, one by one (imaplib splits multi-literal responses awkwardly).
for m in messages:
    typ, data = imap.uid("FETCH", str(m["uid"]), "(BODY.PEEK[])")
    raw = data[0][1]
    m["body_len"] = len(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    m["subject"] = str(msg["subject"])
    part = msg.get_body(preferencelist=("plain",))
    m["text"] = part.get_content() if part is not None else ""
    m["encrypted"] = msg.get_content_type() == "multipart/encrypted"
typ, data = imap.uid("SEARCH", None, "BODY", '"Hello Bob"')
search = data[0].decode().split()
typ, data = imap.uid("FETCH", "1", "(BODY[TEXT])")
typ, data = imap.uid("FETCH", "1", "(FLAGS)")
flags = data[0].decode()
imap.logout()
print(json.dumps({"caps": caps, "messages": messages, "search": search, "flags": flags}))
