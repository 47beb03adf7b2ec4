#!/usr/bin/env python3
"""Delta Chat through coi-proxy: two real Delta Chat accounts (alice, bob) exchange messages
and a read receipt with their IMAP going through the proxy; a third account (carol) only
receives, so the test can look at where her chat messages land on the provider.

Run by tests/deltachat.rs, which starts the provider and the proxy:

    dc_chat.py --proxy-imap PORT --provider-imap PORT --provider-smtp PORT --filter none|active
    dc_chat.py --receive-only --bob-imap PORT --provider-imap PORT --provider-smtp PORT --wait SECS
    dc_chat.py --read-receipt --proxy-imap PORT --provider-imap PORT --provider-smtp PORT
    dc_chat.py --junk --proxy-imap PORT --provider-imap PORT --provider-smtp PORT

The second form only checks whether bob, whose IMAP goes to --bob-imap (the proxy, or the
provider directly), receives one message from alice within --wait seconds; it reports
{"received": bool, "after_s": float} and exits 0 either way.

The third form: alice (Delta Chat) writes to bob, who reads with a plain IMAP client through the
proxy (which sends bob's read receipts, `read_receipts = true`); passes when alice's Delta Chat
reports the message as read (its MsgRead event) from the proxy's receipt.

The fourth form: alice (Delta Chat, straight at the provider) writes to bob while bob's Delta
Chat, through the proxy, is not running; the provider's "spam filter" (this script, with imaplib
at the provider) files the message in Junk; then bob's Delta Chat starts and must receive it
(the proxy's worker moves chat mail out of Junk). Also reports what Delta Chat read from the
proxy's METADATA (its server comment).

Exit status 0 and a JSON report on stdout when every step passed; non-zero with the reason
on stderr otherwise. Needs `pip install deltachat-rpc-server deltachat-rpc-client`.
"""
import argparse
import imaplib
import json
import os
import queue
import shutil
import smtplib
import sys
import tempfile
import time

from deltachat_rpc_client import DeltaChat, EventType, Rpc
from deltachat_rpc_client._utils import AttrDict

PASSWORD = "secret"
imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
COI = "/private/vendor/vendor.dovecot/coi/config"


def wait(account, etype, pred=lambda e: True, timeout=60):
    """The next event of `etype` matching `pred`; TimeoutError also when no event comes at all."""
    events = account._rpc.get_queue(account.id)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            e = AttrDict(events.get(timeout=max(remaining, 0.01)))
        except queue.Empty:
            e = None
        if e is not None and e.kind == etype and pred(e):
            return e
        if time.monotonic() >= deadline:
            raise TimeoutError("no %s within %ss" % (etype, timeout))


def transport(user, args, imap_port=None):
    return {
        "addr": user, "password": PASSWORD,
        "imapServer": "127.0.0.1", "imapPort": imap_port or args.proxy_imap, "imapSecurity": "starttls",
        "imapUser": user,
        # Submission goes straight to the provider (the proxy's SMTP side is tested elsewhere).
        "smtpServer": "127.0.0.1", "smtpPort": args.provider_smtp, "smtpSecurity": "starttls",
        "smtpUser": user, "smtpPassword": PASSWORD,
        "certificateChecks": "acceptInvalidCertificates",
    }


def enable_coi(port, user, mode):
    """Through the proxy, as a COI client would: also lets the proxy's worker log in."""
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, PASSWORD)
    typ, data = m._simple_command("SETMETADATA", '""', "(%s/enabled yes %s/message-filter %s)" % (COI, COI, mode))
    assert typ == "OK", (typ, data)
    m.logout()


def count(port, user, mailbox):
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, PASSWORD)
    typ, data = m.status(mailbox, "(MESSAGES)")
    m.logout()
    return int(data[0].decode().rsplit("MESSAGES ", 1)[1].rstrip(")")) if typ == "OK" else -1


def wait_count(port, user, mailbox, n, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count(port, user, mailbox) == n:
            return
        time.sleep(0.1)
    raise TimeoutError("%s %s never held %d messages (has %d)" % (user, mailbox, n, count(port, user, mailbox)))


def receive_only(args):
    """Does bob receive at all? (Delta Chat sends no IMAP command to a provider without IDLE.)"""
    report = {"received": False}

    def body(dc, rpc):
        alice, bob = dc.add_account(), dc.add_account()
        alice.add_or_update_transport(transport("alice@example.org", args, args.provider_imap))
        bob.add_or_update_transport(transport("bob@example.org", args, args.bob_imap))
        for ac in (alice, bob):
            ac.start_io()
            rpc.wait_for_all_work_done(ac.id)
        time.sleep(1)  # let bob's IMAP loop settle into its (fake or real) idle
        sent_at = time.monotonic()
        alice.create_contact(bob, "Bob").create_chat().send_text("are you there?")
        try:
            wait(bob, EventType.INCOMING_MSG, timeout=args.wait)
            report.update(received=True, after_s=round(time.monotonic() - sent_at, 3))
        except TimeoutError:
            report.update(received=False, after_s=args.wait)
        for ac in (alice, bob):
            ac.stop_io()
    return run_scenario(body, report)


def read_receipt(args):
    """Delta Chat 2.65 asks for receipts only inside encrypted mail, which the proxy cannot read;
    alice therefore writes unencrypted (force_encryption off: bob has no key) and the receipt
    request is added to her message as it sits in bob's INBOX, as an older Delta Chat or another
    chat client sends it in the clear. What is checked is Delta Chat's side: that it takes the
    proxy's MDN as the read receipt for the message it sent."""
    report = {}

    def body(dc, rpc):
        alice = dc.add_account()
        alice.add_or_update_transport(transport("alice@example.org", args, args.provider_imap))
        alice.set_config("force_encryption", "0")
        alice.start_io()
        rpc.wait_for_all_work_done(alice.id)
        out_msg = alice.create_contact("bob@example.org", "Bob").create_chat().send_text("hello bob, read me")
        wait_count(args.provider_imap, "bob@example.org", "INBOX", 1)

        m = imaplib.IMAP4("127.0.0.1", args.provider_imap)
        m.login("bob@example.org", PASSWORD)
        m.select("INBOX")
        raw = m.fetch("1", "(BODY.PEEK[])")[1][0][1]
        assert b"Chat-Version: 1.0\r\n" in raw and b"-----BEGIN PGP MESSAGE-----" not in raw, raw[:2000]
        report["dc_requested_receipt_in_clear"] = b"Chat-Disposition-Notification-To" in raw
        if not report["dc_requested_receipt_in_clear"]:
            raw = raw.replace(b"Chat-Version: 1.0\r\n",
                              b"Chat-Version: 1.0\r\nChat-Disposition-Notification-To: alice@example.org\r\n", 1)
        m.store("1", "+FLAGS.SILENT", "\\Deleted")
        m.expunge()
        assert m.append("INBOX", None, None, raw)[0] == "OK"
        m.logout()

        bob = imaplib.IMAP4("127.0.0.1", args.proxy_imap)
        bob.login("bob@example.org", PASSWORD)
        bob.select("INBOX")
        seen_at = time.monotonic()
        assert bob.store("1", "+FLAGS", "\\Seen")[0] == "OK"
        wait(alice, EventType.MSG_READ, lambda x: x.msg_id == out_msg.id, timeout=30)
        report["read_receipt_s"] = round(time.monotonic() - seen_at, 3)
        report["alice_state"] = out_msg.get_snapshot().state
        flags = bob.fetch("1", "(FLAGS)")[1][0].decode()
        report["bob_flags"] = flags
        bob.logout()
        alice.stop_io()
    return run_scenario(body, report)


def junk(args):
    """Chat mail that the provider files as spam reaches Delta Chat through the proxy. Delta Chat
    itself looks into a spam folder only when it scans folders (at start and now and then), so
    bob's Delta Chat is started first and idles in INBOX; then alice's message is filed in Junk
    at the provider. It reaches bob only when the proxy's worker moves it to INBOX."""
    report = {}

    def body(dc, rpc):
        alice, bob = dc.add_account(), dc.add_account()
        alice.add_or_update_transport(transport("alice@example.org", args, args.provider_imap))
        bob.add_or_update_transport(transport("bob@example.org", args))
        alice.start_io()
        rpc.wait_for_all_work_done(alice.id)
        # bob as an account (his key comes with him): Delta Chat 2.65 sends encrypted only.
        alice.create_contact(bob, "Bob").create_chat().send_text("hello from the junk folder")
        wait_count(args.provider_imap, "bob@example.org", "INBOX", 1)
        m = imaplib.IMAP4("127.0.0.1", args.provider_imap)
        m.login("bob@example.org", PASSWORD)
        m.select("INBOX")
        raw = m.fetch("1", "(BODY.PEEK[])")[1][0][1]
        m.store("1", "+FLAGS.SILENT", "\\Deleted")
        m.expunge()
        bob.start_io()
        # bob's Delta Chat has scanned its folders (Junk among them, still empty) and idles in INBOX.
        wait(bob, EventType.IMAP_INBOX_IDLE)
        time.sleep(0.5)
        assert m.append("Junk", None, None, raw)[0] == "OK"
        m.logout()
        filed_at = time.monotonic()
        report["filed_in_junk"] = True
        e = wait(bob, EventType.INCOMING_MSG, timeout=60)
        report["received_s"] = round(time.monotonic() - filed_at, 3)
        report["text"] = bob.get_message_by_id(e.msg_id).get_snapshot().text
        assert report["text"] == "hello from the junk folder", report["text"]
        # Moved, not copied: Junk ends empty. Not sampled at once: a MOVE copies first and then
        # expunges the source, and Delta Chat may fetch the copy from INBOX in between.
        try:
            wait_count(args.provider_imap, "bob@example.org", "Junk", 0, timeout=10)
        except TimeoutError:
            pass
        report["junk_left"] = count(args.provider_imap, "bob@example.org", "Junk")
        report["server_comment"] = bob.get_info().get("imap_server_comment")
        for ac in (alice, bob):
            ac.stop_io()
    return run_scenario(body, report)


def run_scenario(body, report):
    """Runs body(dc, rpc) with a fresh accounts directory and prints the JSON report; returns 0,
    or 1 with the reason on stderr."""
    accounts_dir = tempfile.mkdtemp(prefix="dc.accounts.")
    try:
        with Rpc(accounts_dir=accounts_dir, rpc_server_path=rpc_server()) as rpc:
            body(DeltaChat(rpc), rpc)
    except Exception as e:  # noqa: BLE001 - the reason goes to the caller
        print("FAILED: %r" % e, file=sys.stderr)
        print(json.dumps(report))
        return 1
    finally:
        shutil.rmtree(accounts_dir, ignore_errors=True)
    print(json.dumps(report))
    return 0


def rpc_server():
    # pip may put the server next to the interpreter or in ~/.local/bin, off PATH.
    return shutil.which("deltachat-rpc-server") or next(
        (p for p in (os.path.join(os.path.dirname(sys.executable), "deltachat-rpc-server"),
                     os.path.expanduser("~/.local/bin/deltachat-rpc-server")) if os.path.exists(p)),
        "deltachat-rpc-server")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--receive-only", action="store_true")
    ap.add_argument("--read-receipt", action="store_true")
    ap.add_argument("--junk", action="store_true")
    ap.add_argument("--bob-imap", type=int)
    ap.add_argument("--wait", type=float, default=20)
    ap.add_argument("--proxy-imap", type=int)
    ap.add_argument("--provider-imap", type=int, required=True)
    ap.add_argument("--provider-smtp", type=int, required=True)
    ap.add_argument("--filter", choices=["none", "active"])
    args = ap.parse_args()
    if args.receive_only:
        return receive_only(args)
    if args.read_receipt:
        return read_receipt(args)
    if args.junk:
        return junk(args)
    report = {"filter": args.filter, "timings": {}}
    t = report["timings"]
    for user in ("alice@example.org", "bob@example.org", "carol@example.org"):
        enable_coi(args.proxy_imap, user, args.filter)

    def body(dc, rpc):
        report["core_version"] = dc.rpc.get_system_info()["deltachat_core_version"]
        alice, bob, carol = dc.add_account(), dc.add_account(), dc.add_account()
        for name, ac in (("alice", alice), ("bob", bob), ("carol", carol)):
            ac.add_or_update_transport(transport("%s@example.org" % name, args))
        # carol is configured (so alice gets her key) but never fetches: her mail stays put.
        for ac in (alice, bob):
            ac.start_io()
            rpc.wait_for_all_work_done(ac.id)

        chat = alice.create_contact(bob, "Bob").create_chat()
        sent_at = time.monotonic()
        out_msg = chat.send_text("hello bob, this is alice")
        e = wait(bob, EventType.INCOMING_MSG)
        t["alice_to_bob_s"] = round(time.monotonic() - sent_at, 3)
        in_msg = bob.get_message_by_id(e.msg_id)
        snap = in_msg.get_snapshot()
        assert snap.text == "hello bob, this is alice", snap.text
        bob.get_chat_by_id(snap.chat_id).accept()
        seen_at = time.monotonic()
        in_msg.mark_seen()
        wait(alice, EventType.MSG_READ, lambda x: x.msg_id == out_msg.id)
        t["read_receipt_s"] = round(time.monotonic() - seen_at, 3)
        reply_at = time.monotonic()
        bob.get_chat_by_id(snap.chat_id).send_text("hi alice, bob here")
        e = wait(alice, EventType.INCOMING_MSG)
        t["bob_to_alice_s"] = round(time.monotonic() - reply_at, 3)
        assert alice.get_message_by_id(e.msg_id).get_snapshot().text == "hi alice, bob here"

        # carol's Delta Chat does not run: her mailbox shows where chat and ordinary mail land.
        alice.create_contact(carol, "Carol").create_chat().send_text("hello carol")
        with smtplib.SMTP("127.0.0.1", args.provider_smtp) as s:
            s.login("bob@example.org", PASSWORD)
            s.sendmail("bob@example.org", ["carol@example.org"],
                       b"From: bob@example.org\r\nTo: carol@example.org\r\nSubject: plain mail\r\n\r\nhi\r\n")
        chats = "COI.Chats"
        if args.filter == "active":
            wait_count(args.provider_imap, "carol@example.org", chats, 1)
            wait_count(args.provider_imap, "carol@example.org", "INBOX", 1)
        else:
            wait_count(args.provider_imap, "carol@example.org", "INBOX", 2)
            assert count(args.provider_imap, "carol@example.org", chats) == 0
        report["carol"] = {"inbox": count(args.provider_imap, "carol@example.org", "INBOX"),
                           "chats": count(args.provider_imap, "carol@example.org", chats)}
        for ac in (alice, bob):
            ac.stop_io()
    return run_scenario(body, report)


if __name__ == "__main__":
    sys.exit(main())
