#!/usr/bin/env python3
"""A real Delta Chat 2.65 account as the peer of coi-proxy's OpenPGP gateway (tests/openpgp_deltachat.rs
plays the gateway's side with the Rust code directly, over the same provider):

    dc_openpgp.py accept  --provider-imap P --provider-smtp P --lmtp P --user bob@example.org \\
                          --key SECRET.asc --messages DIR
        Imports SECRET.asc as the account's key (before configuring, so Delta Chat makes none),
        then delivers every DIR/*.eml to the account over LMTP and reports, per message, what
        Delta Chat shows: text, padlock, sender.
    dc_openpgp.py joiner  --provider-imap P --provider-smtp P --user bob@example.org --link LINK
        Opens the invite link (SecureJoin as the joiner) and waits for progress 1000; then sends
        "Hello from Delta Chat" to the inviter.
    dc_openpgp.py inviter --provider-imap P --provider-smtp P --user alice@example.org
        Prints "LINK <invite link>" and waits until someone completes the handshake (inviter
        progress 1000); then sends "Hello from Delta Chat" to the new contact.
    dc_openpgp.py group-inviter --provider-imap P --provider-smtp P --user alice@example.org
        The same with a new group "Team" and its invite link; then "Hello group" to the group.
    dc_openpgp.py group-with-plain --provider-imap P --provider-smtp P --user alice@example.org \\
                          --other carol@example.org --plain bob@example.org
        Two Delta Chat accounts in group "Team" (Carol joins Alice's link), then the plain user
        joins (prints "LINK ..."); "Hello group" (prints "HELLO <its Message-ID>"); reports where the plain
        user's reply lands at Alice and at Carol.

Prints a JSON report on stdout (last line) and exits 0 when Delta Chat did what was asked;
non-zero with the reason on stderr otherwise.
"""
import argparse
import glob
import json
import os
import shutil
import smtplib
import sys
import tempfile
import time

from deltachat_rpc_client import DeltaChat, EventType, Rpc

from dc_chat import rpc_server, wait  # same directory: the shared event wait and server lookup

PASSWORD = "secret"


def transport(user, args):
    return {
        "addr": user, "password": PASSWORD,
        "imapServer": "127.0.0.1", "imapPort": args.provider_imap, "imapSecurity": "starttls", "imapUser": user,
        "smtpServer": "127.0.0.1", "smtpPort": args.provider_smtp, "smtpSecurity": "starttls",
        "smtpUser": user, "smtpPassword": PASSWORD,
        "certificateChecks": "acceptInvalidCertificates",
    }


def online(dc, rpc, args, name=None):
    """A new account for args.user, configured and online."""
    ac = dc.add_account()
    ac.add_or_update_transport(transport(args.user, args))
    if name:
        ac.set_config("displayname", name)
    ac.start_io()
    rpc.wait_for_all_work_done(ac.id)
    return ac


def plain(snapshot):
    """A JSON-able copy of a snapshot."""
    return {k: v for k, v in snapshot.items() if isinstance(v, (str, int, float, bool, type(None), list))}


def accept(args, dc, rpc, report):
    ac = dc.add_account()
    ac.import_self_keys(args.key)
    ac.add_or_update_transport(transport(args.user, args))
    ac.start_io()
    rpc.wait_for_all_work_done(ac.id)
    report["messages"] = []
    for path in sorted(glob.glob(os.path.join(args.messages, "*.eml"))):
        raw = open(path, "rb").read()
        with smtplib.LMTP("127.0.0.1", args.lmtp) as lmtp:
            lmtp.sendmail("alice@example.org", [args.user], raw)
        e = wait(ac, EventType.INCOMING_MSG)
        snap = ac.get_message_by_id(e.msg_id).get_snapshot()
        sender = snap.sender.get_snapshot() if hasattr(snap.sender, "get_snapshot") else snap.sender
        report["messages"].append({
            "file": os.path.basename(path), "text": snap.text, "show_padlock": snap.show_padlock,
            "subject": snap.get("subject"), "sender": plain(sender) if isinstance(sender, dict) else str(sender),
            "error": snap.get("error"),
        })
    ac.stop_io()


def joiner(args, dc, rpc, report):
    ac = online(dc, rpc, args, "Bob DC")
    t = time.monotonic()
    chat = ac.secure_join(args.link)
    e = wait(ac, EventType.SECUREJOIN_JOINER_PROGRESS, lambda e: e.progress == 1000, timeout=90)
    report["joined_after_s"] = round(time.monotonic() - t, 2)
    report["inviter_contact"] = plain(ac.get_contact_by_id(e.contact_id).get_snapshot())
    chat.send_text("Hello from Delta Chat").wait_until_delivered()
    report["chat"] = plain(chat.get_basic_snapshot())
    ac.stop_io()


def inviter(args, dc, rpc, report):
    ac = online(dc, rpc, args, "Alice DC")
    print("LINK " + ac.get_qr_code(), flush=True)
    t = time.monotonic()
    e = wait(ac, EventType.SECUREJOIN_INVITER_PROGRESS, lambda e: e.progress == 1000, timeout=90)
    report["joined_after_s"] = round(time.monotonic() - t, 2)
    contact = ac.get_contact_by_id(e.contact_id)
    report["joiner_contact"] = plain(contact.get_snapshot())
    contact.create_chat().send_text("Hello from Delta Chat").wait_until_delivered()
    ac.stop_io()


def group_inviter(args, dc, rpc, report):
    ac = online(dc, rpc, args, "Alice DC")
    group = ac.create_group("Team")
    print("LINK " + group.get_qr_code(), flush=True)
    e = wait(ac, EventType.SECUREJOIN_INVITER_PROGRESS, lambda e: e.progress == 1000, timeout=90)
    report["members"] = [c.get_snapshot().address for c in group.get_contacts()]
    group.send_text("Hello group").wait_until_delivered()
    ac.stop_io()


def group_with_plain(args, dc, rpc, report):
    """Alice (args.user) makes group "Team"; Carol (args.other) joins its link; prints "LINK ..."
    for the plain user (args.plain, through coi-proxy) to join; once they are in, sends "Hello
    group" and prints "HELLO <its Message-ID>"; then waits until a message from the plain user arrives at both
    Delta Chat accounts and reports in which chat it landed."""
    alice = online(dc, rpc, args, "Alice DC")
    carol_args = argparse.Namespace(**vars(args))
    carol_args.user = args.other
    carol = online(dc, rpc, carol_args, "Carol DC")
    group = alice.create_group("Team")
    link = group.get_qr_code()
    carol.secure_join(link)
    wait(carol, EventType.SECUREJOIN_JOINER_PROGRESS, lambda e: e.progress == 1000, timeout=90)
    print("LINK " + link, flush=True)
    plain_id = None
    while plain_id is None:
        e = wait(alice, EventType.SECUREJOIN_INVITER_PROGRESS, lambda e: e.progress == 1000, timeout=120)
        if alice.get_contact_by_id(e.contact_id).get_snapshot().address == args.plain:
            plain_id = e.contact_id
    report["members"] = sorted(c.get_snapshot().address for c in group.get_contacts())
    hello = group.send_text("Hello group")
    hello.wait_until_delivered()
    print("HELLO " + rpc.get_message_info_object(alice.id, hello.id)["rfc724Mid"], flush=True)
    report["received"] = {}
    for name, ac in (("alice", alice), ("carol", carol)):
        while True:
            e = wait(ac, EventType.INCOMING_MSG, timeout=120)
            msg = ac.get_message_by_id(e.msg_id).get_snapshot()
            sender = msg.sender.get_snapshot() if hasattr(msg.sender, "get_snapshot") else msg.sender
            if sender.address != args.plain:
                continue
            chat = ac.get_chat_by_id(e.chat_id).get_basic_snapshot()
            report["received"][name] = {
                "text": msg.text, "show_padlock": msg.show_padlock, "chat_name": chat.name,
                "chat_type": str(chat.chat_type), "chat_members": sorted(
                    c.get_snapshot().address for c in ac.get_chat_by_id(e.chat_id).get_contacts()),
            }
            if name == "alice":
                report["received"][name]["in_the_group"] = e.chat_id == group.id
            break
    alice.stop_io()
    carol.stop_io()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["accept", "joiner", "inviter", "group-inviter", "group-with-plain"])
    ap.add_argument("--provider-imap", type=int, required=True)
    ap.add_argument("--provider-smtp", type=int, required=True)
    ap.add_argument("--lmtp", type=int)
    ap.add_argument("--user", required=True)
    ap.add_argument("--key")
    ap.add_argument("--messages")
    ap.add_argument("--link")
    ap.add_argument("--other", help="group-with-plain: the second Delta Chat account")
    ap.add_argument("--plain", help="group-with-plain: the plain user coi-proxy speaks for")
    args = ap.parse_args()
    report = {"mode": args.mode}
    accounts_dir = tempfile.mkdtemp(prefix="dc.openpgp.")
    server = rpc_server()
    try:
        with Rpc(accounts_dir=accounts_dir, rpc_server_path=server) as rpc:
            dc = DeltaChat(rpc)
            report["core_version"] = dc.rpc.get_system_info()["deltachat_core_version"]
            {"accept": accept, "joiner": joiner, "inviter": inviter, "group-inviter": group_inviter,
             "group-with-plain": group_with_plain}[args.mode](args, dc, rpc, report)
    except Exception as e:  # noqa: BLE001 - the reason goes to the caller
        print("FAILED: %r" % e, file=sys.stderr)
        print(json.dumps(report, default=str))
        return 1
    finally:
        shutil.rmtree(accounts_dir, ignore_errors=True)
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
