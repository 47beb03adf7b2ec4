#!/usr/bin/env python3
"""Captures the OpenPGP fixtures in tests/fixtures/deltachat/: real mail between Delta Chat
accounts (alice, bob, carol @example.org), as it sits at the provider, plus the accounts'
exported keys and the invite links Delta Chat made.

    python3 tests/deltachat/capture_openpgp_fixtures.py [--out tests/fixtures/deltachat]

Starts its own provider (tests/support/provider/start-provider.sh: Dovecot on loopback) and
three Delta Chat accounts with `deltachat-rpc-server`. Delta Chat deletes SecureJoin handshake
mail right after reading it, so each message is captured while its receiver's Delta Chat is
stopped: the sender sends, the script waits for the message in the receiver's INBOX, reads it
with BODY.PEEK[] (flags untouched), and only then starts the receiver, which takes the next
step. What is captured:

    securejoin-1-vc-request-pubkey.eml   bob -> alice (symmetrically encrypted)
    securejoin-2-vc-pubkey.eml           alice -> bob (symmetrically encrypted, signed)
    securejoin-3-vc-request-with-auth.eml bob -> alice
    securejoin-4-vc-contact-confirm.eml  alice -> bob
    one-to-one.eml                       alice -> bob, text "Hello Bob, this is Alice."
    reply.eml                            bob -> alice, text "Hi Alice!"
    group.eml                            alice -> bob and carol, group "Team", gossip
    read-receipt.eml                     bob -> alice, MDN for one-to-one.eml
    {alice,bob,carol}-secret.asc, {alice,bob,carol}-public.asc   ExportSelfKeys
    invite-alice.txt, invite-group.txt   the setup-contact and group invite links
    manifest.json                        core version, Message-IDs, texts, who sent what

Needs `pip install deltachat-rpc-server deltachat-rpc-client` and the provider's Debian
packages (tests/setup-debian.sh).
"""
import argparse
import glob
import imaplib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from deltachat_rpc_client import DeltaChat, EventType, Rpc

from dc_chat import rpc_server, wait  # same directory: the shared event wait and server lookup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROVIDER = os.path.join(ROOT, "tests", "support", "provider")


def start_provider():
    state = tempfile.mkdtemp(prefix="prov.fixtures.")
    out = subprocess.run([os.path.join(PROVIDER, "start-provider.sh"), state],
                         check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: v.strip('"') for k, v in env.items()}, state


def transport(env, user):
    return {
        "addr": user, "password": env["PROVIDER_PASSWORD"],
        "imapServer": "127.0.0.1", "imapPort": int(env["PROVIDER_IMAP_PORT"]), "imapSecurity": "starttls",
        "imapUser": user,
        "smtpServer": "127.0.0.1", "smtpPort": int(env["PROVIDER_SMTP_PORT"]), "smtpSecurity": "starttls",
        "smtpUser": user, "smtpPassword": env["PROVIDER_PASSWORD"],
        "certificateChecks": "acceptInvalidCertificates",
    }


class Mailbox:
    """A user's INBOX at the provider, read without changing flags."""

    def __init__(self, env, user):
        self.env, self.user, self.seen = env, user, set()

    def messages(self):
        m = imaplib.IMAP4("127.0.0.1", int(self.env["PROVIDER_IMAP_PORT"]))
        m.login(self.user, self.env["PROVIDER_PASSWORD"])
        m.select("INBOX", readonly=True)
        typ, data = m.uid("SEARCH", None, "ALL")
        out = []
        for uid in data[0].split():
            typ, resp = m.uid("FETCH", uid, "(BODY.PEEK[])")
            out.append(resp[0][1])
        m.logout()
        return out

    def next_new(self, from_addr, timeout=60):
        """The first message from `from_addr` this script has not taken yet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for raw in self.messages():
                if raw not in self.seen and from_addr in header(raw, b"from").lower():
                    self.seen.add(raw)
                    return raw
            time.sleep(0.2)
        raise TimeoutError("no new message from %s in %s's INBOX" % (from_addr, self.user))


def header(raw, name):
    """The unfolded value of the first header field `name` (bytes, lower-case name)."""
    head = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(name + b":"):
            return line.split(b":", 1)[1].strip().decode("utf-8", "replace")
    return ""


def message_id(raw):
    return header(raw, b"message-id") or None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "deltachat"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env, state = start_provider()
    accounts_dir = tempfile.mkdtemp(prefix="dc.fixtures.")
    manifest = {"messages": {}}

    def save(name, raw, **meta):
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(raw)
        manifest["messages"][name] = dict(meta, message_id=message_id(raw))

    try:
        server = rpc_server()
        with Rpc(accounts_dir=accounts_dir, rpc_server_path=server) as rpc:
            dc = DeltaChat(rpc)
            manifest["core_version"] = dc.rpc.get_system_info()["deltachat_core_version"]
            names = ("alice", "bob", "carol")
            acs = {n: dc.add_account() for n in names}
            box = {n: Mailbox(env, "%s@example.org" % n) for n in names}
            for n, ac in acs.items():
                ac.add_or_update_transport(transport(env, "%s@example.org" % n))
                ac.set_config("displayname", n.capitalize())
            alice, bob, carol = acs["alice"], acs["bob"], acs["carol"]

            # SecureJoin, setup-contact: alice invites, bob joins; each step caught in flight.
            link = alice.get_qr_code()
            with open(os.path.join(args.out, "invite-alice.txt"), "w") as f:
                f.write(link + "\n")
            bob.start_io()
            rpc.wait_for_all_work_done(bob.id)
            bob.secure_join(link)
            # Each step: the sender's message is caught at the receiver, then the sender stops
            # and the receiver starts, reads it and sends the next step.
            steps = [(1, "vc-request-pubkey"), (2, "vc-pubkey"), (3, "vc-request-with-auth"), (4, "vc-contact-confirm")]
            for n, step in steps:
                sender, receiver = ("bob", "alice") if n % 2 else ("alice", "bob")
                save("securejoin-%d-%s.eml" % (n, step), box[receiver].next_new("%s@example.org" % sender),
                     sender=sender, receiver=receiver, step=step)
                if n < 4:
                    acs[sender].stop_io()
                acs[receiver].start_io()
            wait(alice, EventType.SECUREJOIN_INVITER_PROGRESS, lambda e: e.progress == 1000)
            wait(bob, EventType.SECUREJOIN_JOINER_PROGRESS, lambda e: e.progress == 1000)
            rpc.wait_for_all_work_done(alice.id)
            rpc.wait_for_all_work_done(bob.id)

            # 1:1 chat, both ways; each message caught before its receiver reads it.
            bob.stop_io()
            a2b = alice.get_contact_by_addr("bob@example.org").create_chat()
            out_msg = a2b.send_text("Hello Bob, this is Alice.")
            save("one-to-one.eml", box["bob"].next_new("alice@example.org"),
                 sender="alice", receiver="bob", text="Hello Bob, this is Alice.")
            bob.start_io()
            e = wait(bob, EventType.INCOMING_MSG)
            in_msg = bob.get_message_by_id(e.msg_id)
            snap = in_msg.get_snapshot()
            assert snap.text == "Hello Bob, this is Alice.", snap.text
            manifest["bob_sees_padlock"] = snap.show_padlock

            # The read receipt (bob marks the message seen) and bob's reply, caught at alice's.
            alice.stop_io()
            bob.get_chat_by_id(snap.chat_id).accept()
            in_msg.mark_seen()
            save("read-receipt.eml", box["alice"].next_new("bob@example.org"),
                 sender="bob", receiver="alice", receipt_for="one-to-one.eml")
            bob.get_chat_by_id(snap.chat_id).send_text("Hi Alice!")
            save("reply.eml", box["alice"].next_new("bob@example.org"),
                 sender="bob", receiver="alice", text="Hi Alice!")
            alice.start_io()
            wait(alice, EventType.MSG_READ, lambda x: x.msg_id == out_msg.id)

            # A group of three: the first message gossips every member's key.
            bob.stop_io()
            carol_contact = alice.create_contact(carol, "Carol")
            group = alice.create_group("Team")
            group.add_contact(alice.get_contact_by_addr("bob@example.org"), carol_contact)
            with open(os.path.join(args.out, "invite-group.txt"), "w") as f:
                f.write(group.get_qr_code() + "\n")
            group.send_text("Hello Team!")
            save("group.eml", box["bob"].next_new("alice@example.org"),
                 sender="alice", receiver="bob", text="Hello Team!", group="Team")
            bob.start_io()
            e = wait(bob, EventType.INCOMING_MSG)
            assert bob.get_message_by_id(e.msg_id).get_snapshot().text == "Hello Team!"

            for n, ac in acs.items():
                ac.stop_io()
                keydir = tempfile.mkdtemp(prefix="dc.keys.")
                ac.export_self_keys(keydir)
                for kind in ("private", "public"):
                    found = glob.glob(os.path.join(keydir, "%s-key-*.asc" % kind))
                    assert len(found) == 1, found
                    target = "%s-%s.asc" % (n, "secret" if kind == "private" else "public")
                    shutil.copy(found[0], os.path.join(args.out, target))
                shutil.rmtree(keydir, ignore_errors=True)
    finally:
        subprocess.run([os.path.join(PROVIDER, "stop-provider.sh"), state], check=False)
        shutil.rmtree(accounts_dir, ignore_errors=True)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
