//! The running proxy speaks for a plain mail client toward a real Delta Chat 2.65
//! (`deltachat-rpc-server`, driven by tests/deltachat/dc_openpgp.py) over a real Dovecot:
//! Delta Chat joins the proxy's `invite` and the proxy's `join` completes toward Delta Chat's
//! invite, verified on both sides; mail the plain client sends through the proxy shows in
//! Delta Chat with a padlock; a plain client's session shows the handshake mails as short
//! notices, a Delta Chat session as stored. Delta Chat talks to the provider directly; the plain user's side
//! is only the proxy (its account worker and SMTP).

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use coi_proxy::openpgp::autocrypt::{AutocryptHeader, PreferEncrypt};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::mime;
use support::openpgp::{cli, dc_report as report, dc_script as script, stdout, stored_peer};
use support::provider::Provider;
use support::proxy::Proxy;
use support::smtp_client::wait_for_inbox;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";

/// The text of the one QR code in a PNG file.
fn read_qr(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in {}", path.display());
    grids[0].decode().unwrap().1
}

/// The proxy, with `user` logged in once (its worker needs the password).
fn proxy_for(provider: &Provider, user: &str) -> Proxy {
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .start();
    let mut c = proxy.connect();
    c.login(user, "secret");
    proxy
}

#[test]
fn delta_chat_joins_the_proxys_invite_and_both_are_verified() {
    let provider = Provider::start();
    let mut proxy = proxy_for(&provider, ALICE);
    // `--qr`: Delta Chat joins with the link read back from the QR code's PNG.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("invite.png");
    let printed = stdout(&cli(&proxy, &["invite", ALICE, "--qr", png.to_str().unwrap()]));
    let link = read_qr(&png);
    assert_eq!(printed.lines().last(), Some(link.as_str()), "the QR code holds the printed link");
    let out = script(&provider, "joiner", BOB).args(["--link", &link]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Delta Chat did not join: {}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    let r = report(&text);
    eprintln!("{r:#}");
    assert_eq!(r["inviter_contact"]["is_key_contact"], true, "{r}");
    // The script returns once Delta Chat reports the join complete (progress 1000): in 2.65
    // that is its verified state; the snapshot has no separate flag.
    assert!(r["joined_after_s"].is_number(), "{r}");
    assert_eq!(r["chat"]["is_encrypted"], true, "{r}");
    proxy.wait_for_log("the joiner proved the invite's token", Duration::from_secs(10));

    // The handshake mails as Alice's mail programs see them. Besides Delta Chat's (v3: both
    // encrypted), a legacy first step that comes unencrypted, with `Secure-Join` in the clear.
    let legacy = "From: <carol@example.org>\r\nTo: <alice@example.org>\r\nDate: Sat, 5 Dec 2026 10:00:00 +0000\r\n\
        Message-ID: <legacy-request@example.org>\r\nSubject: Message from carol@example.org\r\nChat-Version: 1.0\r\n\
        Secure-Join: vc-request\r\nSecure-Join-Invitenumber: 3nKlqsVn0fYnFHdKmYtxt0W7\r\n\r\nSecure-Join: vc-request\r\n";
    provider.deliver("carol@example.org", ALICE, legacy.as_bytes());
    // A plain client: Delta Chat's two steps, its "Hello" and the legacy step.
    let plain = read_once_there(&proxy, ALICE, 4);
    let messages = plain["messages"].as_array().unwrap();
    let subjects: Vec<&str> = messages.iter().map(|m| m["subject"].as_str().unwrap()).collect();
    eprintln!("a plain client sees: {subjects:?}");
    assert_eq!(messages.len(), 4, "{plain}");
    assert!(messages.iter().all(|m| m["encrypted"] == false), "nothing raw: {plain}");
    assert!(messages.iter().all(|m| !m["text"].as_str().unwrap().contains("Secure-Join")), "{plain}");
    assert_eq!(subjects[0], "bob@example.org wants to become a verified contact", "{plain}");
    assert_eq!(subjects[1], "bob@example.org is now a verified contact", "{plain}");
    assert!(messages[2]["text"].as_str().unwrap().contains("Hello from Delta Chat"), "{plain}");
    assert_eq!(subjects[3], "carol@example.org wants to become a verified contact", "{plain}");
    // Decided once per UID: a second session sees the same bytes.
    let again = read_mailbox(&proxy, ALICE, None);
    let sizes = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["messages"].as_array().unwrap().iter().map(|m| m["size"].clone()).collect()
    };
    assert_eq!(sizes(&again), sizes(&plain));
    // A chat client sees them as stored.
    let chat = read_mailbox(&proxy, ALICE, Some("Delta Chat"));
    let stored = chat["messages"].as_array().unwrap();
    let encrypted: Vec<bool> = stored.iter().map(|m| m["encrypted"] == true).collect();
    assert_eq!(encrypted, [true, true, true, false], "{chat}");
    assert_eq!(stored[3]["subject"], "Message from carol@example.org", "{chat}");

    proxy.stop();
    let bob = stored_peer(&proxy, ALICE, BOB).expect("the proxy knows Bob");
    assert!(bob.is_verified(), "{bob:?}");
}

/// The Delta Chat script's report once it ends (the rest of its stdout in `lines`); it must
/// have succeeded, else `failure` with its stderr.
fn finish(mut child: std::process::Child, mut lines: impl Read, failure: &str, proxy: &Proxy) -> serde_json::Value {
    let mut rest = String::new();
    lines.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{failure}: {err}\n{rest}\n{}", proxy.log());
    let r = report(&rest);
    eprintln!("{r:#}");
    r
}

/// What a plain client reads once `count` messages are in `user`'s INBOX (30 s at most).
fn read_once_there(proxy: &Proxy, user: &str, count: usize) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = read_mailbox(proxy, user, None);
        if seen["messages"].as_array().unwrap().len() >= count {
            return seen;
        }
        assert!(std::time::Instant::now() < deadline, "the mails did not arrive: {seen}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What imaplib reads through the proxy for `user` (tests/openpgp_view/read.py; with `name`, the
/// session says `ID ("name" name)` first).
fn read_mailbox(proxy: &Proxy, user: &str, name: Option<&str>) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openpgp_view/read.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg(proxy.imap_port.to_string()).arg(user).arg("secret");
    cmd.args(name);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "read.py failed: {}\n{}", String::from_utf8_lossy(&out.stderr), proxy.log());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_proxys_join_completes_toward_a_delta_chat_invite() {
    let provider = Provider::start();
    let mut proxy = proxy_for(&provider, BOB);
    let mut child = script(&provider, "inviter", ALICE).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    let link =
        first.strip_prefix("LINK ").unwrap_or_else(|| panic!("no link from Delta Chat: {first:?}")).trim().to_string();
    stdout(&cli(&proxy, &["join", BOB, &link]));
    let r = finish(child, lines, "Delta Chat's invite did not complete", &proxy);
    assert_eq!(r["joiner_contact"]["is_key_contact"], true, "{r}");
    assert!(r["joined_after_s"].is_number(), "Delta Chat reported the handshake complete: {r}");
    proxy.wait_for_log("SecureJoin complete", Duration::from_secs(30));
    // Read only now, after the handshake: the first answer (encrypted with the link's password)
    // still shows as its notice.
    let plain = read_once_there(&proxy, BOB, 3);
    let messages = plain["messages"].as_array().unwrap();
    let subjects: Vec<&str> = messages.iter().map(|m| m["subject"].as_str().unwrap()).collect();
    assert_eq!(
        subjects[..2],
        ["alice@example.org answered your join request", "alice@example.org is now a verified contact"],
        "{plain}"
    );
    assert!(messages[2]["text"].as_str().unwrap().contains("Hello from Delta Chat"), "{plain}");
    assert!(messages.iter().all(|m| m["encrypted"] == false), "{plain}");
    proxy.stop();
    let alice = stored_peer(&proxy, BOB, ALICE).expect("the proxy knows Alice");
    assert!(alice.is_verified(), "{alice:?}");
}

/// Bob (Delta Chat, with a key we made) wrote to Alice once in clear with his Autocrypt
/// header; Alice's plain client answers through the proxy: encrypted, and Delta Chat shows it
/// with a padlock.
#[test]
fn a_plain_clients_mail_shows_in_delta_chat_with_a_padlock() {
    let provider = Provider::start();
    let proxy = proxy_for(&provider, ALICE);
    stdout(&cli(&proxy, &["key", "export", ALICE])); // Alice's key and worker
    let bob = AccountKey::generate(BOB).unwrap();
    let header = AutocryptHeader {
        addr: BOB.into(),
        prefer_encrypt: PreferEncrypt::Mutual,
        key: bob.public_key().clone(),
        verified: false,
    };
    let hello = format!(
        "From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: hi\r\nDate: {}\r\nMessage-ID: <b1@example.org>\r\n\
         {}\r\n\r\nhello Alice\r\n",
        mime::format_date(coi_proxy::clock::now()),
        mime::fold("Autocrypt", &header.value())
    );
    provider.deliver(BOB, ALICE, hello.as_bytes());
    // The worker learns Bob's key, then Alice's plain client writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut smtp = proxy.connect_smtp();
    smtp.login(ALICE, "secret");
    let letter = b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Hello from a mail program\r\nMessage-ID: <a1@example.org>\r\n\r\nHello Bob, from Outlook.\r\n";
    loop {
        let sent = smtp.send_message(ALICE, &[BOB], letter);
        assert_eq!(sent.code, 250, "{}", smtp.transcript());
        let at_bob = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(10), |m| !m.is_empty());
        let last = at_bob.last().unwrap().clone();
        if String::from_utf8_lossy(&last).contains("multipart/encrypted") {
            let dir = tempfile::tempdir().unwrap();
            let key_file = dir.path().join("bob.asc");
            std::fs::write(&key_file, bob.secret_armored().unwrap().expose()).unwrap();
            let messages = dir.path().join("messages");
            std::fs::create_dir(&messages).unwrap();
            std::fs::write(messages.join("1.eml"), &last).unwrap();
            let out = script(&provider, "accept", BOB)
                .args(["--key", key_file.to_str().unwrap(), "--messages", messages.to_str().unwrap()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
            let r = report(&text);
            eprintln!("{r:#}");
            let shown = &r["messages"][0];
            assert!(shown["text"].as_str().unwrap().contains("Hello Bob, from Outlook."), "{r}");
            assert_eq!(shown["show_padlock"], true, "{r}");
            assert_eq!(shown["subject"], "Hello from a mail program", "{r}");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the proxy never encrypted to Bob:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Alice and Carol (two Delta Chat accounts) are in group "Team"; Bob, the plain user, joins its
/// invite through the proxy. Alice writes to the group; Bob's mail program answers with a plain
/// "Reply" (to Alice only): the proxy sends it to the whole group, encrypted, with the group's
/// id inside, and it lands in "Team" at Alice and at Carol.
#[test]
fn a_plain_reply_to_a_delta_chat_group_lands_in_the_group() {
    let provider = Provider::start();
    let mut proxy = proxy_for(&provider, BOB);
    let mut child = script(&provider, "group-with-plain", ALICE)
        .args(["--other", CAROL, "--plain", BOB])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut next = |prefix: &str| {
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        line.strip_prefix(prefix).map(|l| l.trim().to_string())
    };
    let Some(link) = next("LINK ") else {
        let _ = child.wait();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("no group link from Delta Chat: {err}");
    };
    stdout(&cli(&proxy, &["join", BOB, &link]));
    let hello = next("HELLO ").expect("Delta Chat wrote to the group");
    // The worker has read the group message (its id, name and members).
    proxy.wait_for_log(&format!("<{hello}>"), Duration::from_secs(60));

    let mut smtp = proxy.connect_smtp();
    smtp.login(BOB, "secret");
    let reply = format!(
        "From: Bob <bob@example.org>\r\nTo: Alice <alice@example.org>\r\nSubject: Re: Team\r\n\
         Message-ID: <bob-reply@example.org>\r\nIn-Reply-To: <{hello}>\r\nReferences: <{hello}>\r\n\r\n\
         Hello group, from a mail program.\r\n\r\n> Hello group\r\n"
    );
    let sent = smtp.send_message(BOB, &[ALICE], reply.as_bytes());
    assert_eq!(sent.code, 250, "{}", smtp.transcript());

    let r = finish(child, lines.into_inner(), "the reply did not reach both Delta Chat accounts", &proxy);
    let everyone = serde_json::json!([ALICE, BOB, CAROL]);
    assert_eq!(r["members"], everyone, "{r}");
    for who in ["alice", "carol"] {
        let got = &r["received"][who];
        assert!(got["text"].as_str().unwrap().contains("Hello group, from a mail program."), "{who}: {r}");
        assert_eq!(got["show_padlock"], true, "{who}: {r}");
        assert_eq!(got["chat_name"], "Team", "{who}: {r}");
        assert_eq!(got["chat_type"], "Group", "{who}: {r}");
        assert_eq!(got["chat_members"], everyone, "{who}: the group keeps its members: {r}");
    }
    // At Alice in the very group she wrote to; Carol got it although Bob's mail program
    // addressed Alice only.
    assert_eq!(r["received"]["alice"]["in_the_group"], true, "{r}");

    // Bob follows up on his own message (In-Reply-To his reply, to Alice only): the proxy
    // remembered its Message-ID as the group's, so this one goes to the group too (Carol gets it).
    let follow_up = "From: Bob <bob@example.org>\r\nTo: Alice <alice@example.org>\r\nSubject: Re: Team\r\n\
         Message-ID: <bob-follow-up@example.org>\r\nIn-Reply-To: <bob-reply@example.org>\r\n\
         References: <bob-reply@example.org>\r\n\r\nAnd one more thing.\r\n";
    let sent = smtp.send_message(BOB, &[ALICE], follow_up.as_bytes());
    assert_eq!(sent.code, 250, "{}", smtp.transcript());
    let is_follow_up = |m: &Vec<u8>| {
        mime::first_value(mime::split(m).0, "Message-ID").as_deref() == Some("<bob-follow-up@example.org>")
    };
    let at_carol =
        wait_for_inbox(provider.imap_port, CAROL, "secret", Duration::from_secs(60), |ms| ms.iter().any(is_follow_up));
    let copy = at_carol.iter().find(|m| is_follow_up(m)).unwrap();
    assert_eq!(
        mime::first_value(mime::split(copy).0, "Content-Type").map(|t| t.starts_with("multipart/encrypted")),
        Some(true)
    );
    proxy.stop();
}
