//! The decrypted view (issue 15) over a real Dovecot: encrypted messages delivered to a plain
//! account are fetched through the view's interceptor on a real provider connection, and every
//! FETCH item agrees with what Dovecot itself answers for the same clear text (appended to a
//! reference mailbox): Dovecot is the reference parse. An undecryptable message is shown as
//! the explanation with the original attached; a restart (a new store handle and cache) keeps
//! every view byte for byte.

mod support;

use std::sync::Arc;
use std::time::Duration;

use coi_proxy::config::{Provider as Endpoint, ServerUrl};
use coi_proxy::imap::upstream::{AuthOutcome, Upstream};
use coi_proxy::imap::wire::command::CommandName;
use coi_proxy::imap::wire::fetch::parse_response;
use coi_proxy::imap::wire::provider::{ALL, Interceptor, ProviderCommands, ReplyOut};
use coi_proxy::openpgp::autocrypt::PreferEncrypt;
use coi_proxy::openpgp::cache::{DEFAULT_BUDGET, SecretKeys, Views};
use coi_proxy::openpgp::decrypt::{NoKeys, decrypt};
use coi_proxy::openpgp::encrypt::{Options, encrypt};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::peer::{Peer, verify};
use coi_proxy::openpgp::session::ViewSession;
use coi_proxy::openpgp::view::{View, render};
use coi_proxy::seal::SealKey;
use coi_proxy::secret::Secret;
use coi_proxy::store::Store;
use coi_proxy::tls::UpstreamTls;
use support::provider::{Provider, ProviderOptions};

struct Keys(Vec<Arc<AccountKey>>);

impl SecretKeys for Keys {
    fn secret_keys(&self, _: &str) -> Vec<Arc<AccountKey>> {
        self.0.clone()
    }
}

/// Keys and the peers the gateway knows (verified, with their keys).
struct KeysAndPeers(Vec<Arc<AccountKey>>, Vec<Peer>);

impl SecretKeys for KeysAndPeers {
    fn secret_keys(&self, _: &str) -> Vec<Arc<AccountKey>> {
        self.0.clone()
    }

    fn known_peer(&self, _: &str, addr: &str) -> Option<Peer> {
        self.1.iter().find(|p| p.addr.eq_ignore_ascii_case(addr)).cloned()
    }
}

/// The daemon (listener, session, relay, interceptors) in a thread of this process, with `keys`
/// for the views; `extra` is more of proxy.toml (after `[listen]`). Its IMAP port.
fn daemon(state: &std::path::Path, p: &Provider, extra: &str, keys: Arc<dyn SecretKeys>) -> u16 {
    let port = free_port();
    let toml = format!(
        "state_dir = {:?}\n[upstream]\nimap = \"imap://127.0.0.1:{}\"\nsmtp = \"smtp://127.0.0.1:{}\"\n\
         [listen]\nimap = \"127.0.0.1:{port}\"\n{extra}",
        state.display().to_string(),
        p.imap_port,
        p.smtp_port
    );
    let config = coi_proxy::config::Config::parse(&toml, &state.join("proxy.toml")).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _ = runtime.block_on(coi_proxy::app::run_with(config, None, Some(keys)));
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    port
}

async fn connect(p: &Provider, user: &str) -> Upstream {
    let endpoint =
        Endpoint { imap: ServerUrl::parse_imap(&format!("imap://127.0.0.1:{}", p.imap_port)).unwrap(), ca_file: None };
    let mut up =
        Upstream::connect(&endpoint, &UpstreamTls::default(), Duration::from_secs(10), 64 * 1024).await.unwrap();
    let outcome = up.authenticate(user, &Secret::new(p.password.as_bytes().to_vec())).await.unwrap();
    assert!(matches!(outcome, AuthOutcome::Ok(_)));
    up
}

fn message(from: &AccountKey, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <{}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Sat, 5 Dec 2026 19:35:50 +0000\r\n\
         Message-ID: <{subject}@example.org>\r\nMIME-Version: 1.0\r\n{body}",
        from.addr()
    )
    .into_bytes()
}

const ITEMS: &str = "(UID RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] \
BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2] BODY.PEEK[TEXT]<3.40> BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] \
BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)])";

/// `item name → value` of each FETCH response in `bytes`, by UID order.
fn responses(bytes: &[u8]) -> Vec<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        // One response: up to a CRLF that is not inside a literal.
        let mut end = 0;
        loop {
            let at = end + rest[end..].windows(2).position(|w| w == b"\r\n").unwrap();
            if rest[..at].ends_with(b"}") {
                let open = rest[..at].iter().rposition(|&b| b == b'{').unwrap();
                let len: usize = std::str::from_utf8(&rest[open + 1..at - 1]).unwrap().parse().unwrap();
                end = at + 2 + len;
            } else {
                end = at + 2;
                break;
            }
        }
        if let Some((_, items)) = parse_response(&rest[..end]) {
            out.push(items);
        }
        rest = &rest[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_client_reads_encrypted_mail_consistently() {
    let p = Provider::start();
    let bob_login = p.users[0].clone();
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let bob = Arc::new(AccountKey::generate(&bob_login).unwrap());
    let carol = AccountKey::generate("carol@example.org").unwrap();
    let to_bob = vec![(bob_login.clone(), bob.public_key().clone())];
    let to_carol = vec![("carol@example.org".to_string(), carol.public_key().clone())];
    let opts = Options::mail(PreferEncrypt::Mutual, 0);

    let clear = [
        message(&alice, &bob_login, "plain", "Content-Type: text/plain; charset=utf-8\r\n\r\nHello Bob, in clear.\r\n"),
        message(
            &alice,
            &bob_login,
            "multi",
            "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
             Hello Bob, with a file.\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; \
             filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--b1--\r\n",
        ),
    ];
    let mut encrypted: Vec<Vec<u8>> = clear.iter().map(|m| encrypt(m, &alice, &to_bob, &opts).unwrap()).collect();
    encrypted.push(encrypt(&clear[0], &alice, &to_carol, &opts).unwrap());
    let ordinary = b"From: x@example.org\r\nSubject: ordinary\r\n\r\nnot encrypted\r\n".to_vec();
    for m in encrypted.iter().chain([&ordinary]) {
        p.deliver("alice@example.org", &bob_login, m);
    }

    // The reference: Dovecot's own answers for the views' bytes (of the messages as delivered,
    // with the provider's trace fields), appended to another mailbox.
    let mut up = connect(&p, &bob_login).await;
    assert!(up.run(b"EXAMINE INBOX\r\n", &[]).await.unwrap().ok());
    let delivered = up.run(b"UID FETCH 1:3 (UID BODY.PEEK[])\r\n", ALL).await.unwrap();
    let views_expected: Vec<Vec<u8>> = responses(&delivered.untagged.concat())
        .iter()
        .map(|items| {
            let body = &items.iter().find(|(n, _)| n == "BODY[]").unwrap().1;
            let start = body.windows(3).position(|w| w == b"}\r\n").unwrap() + 3;
            match render(&body[start..], &bob) {
                View::Decrypted { bytes, .. } | View::Failed { bytes, .. } => bytes,
                View::NotEncrypted => panic!("encrypted"),
            }
        })
        .collect();
    assert_eq!(views_expected.len(), 3);
    assert!(up.run(b"CREATE Reference\r\n", &[]).await.unwrap().ok());
    for v in &views_expected {
        let mut cmd = format!("APPEND Reference {{{}}}\r\n", v.len()).into_bytes();
        cmd.extend_from_slice(v);
        cmd.extend_from_slice(b"\r\n");
        assert!(up.run(&cmd, &[]).await.unwrap().ok());
    }
    assert!(up.run(b"EXAMINE Reference\r\n", &[]).await.unwrap().ok());
    let reference = up.run(format!("UID FETCH 1:* {ITEMS}\r\n").as_bytes(), ALL).await.unwrap();
    let reference = responses(&reference.untagged.concat());
    assert_eq!(reference.len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let seal = Arc::new(SealKey::generate());
    let served = {
        let views = Arc::new(Views::new(
            Store::open(dir.path()).unwrap(),
            seal.clone(),
            Arc::new(Keys(vec![bob.clone()])),
            DEFAULT_BUDGET,
        ));
        let mut session = ViewSession::new(views.clone(), &bob_login, Arc::new(|| true));
        // SELECT is watched, not taken.
        assert!(!session.wants_command(CommandName::Select, false, b"s SELECT INBOX\r\n"));
        assert!(up.run(b"SELECT INBOX\r\n", &[]).await.unwrap().ok());
        let line = format!("f UID FETCH 1:* {ITEMS}\r\n");
        assert!(session.wants_command(CommandName::Fetch, true, line.as_bytes()));
        assert!(!session.wants_command(CommandName::Fetch, true, b"f UID FETCH 1:* (UID FLAGS)\r\n"));
        let answer = session.handle(line.into_bytes(), &mut up, &mut ReplyOut::collect()).await;
        assert!(String::from_utf8_lossy(&answer).contains("\r\nf OK"), "{}", String::from_utf8_lossy(&answer));
        let got = responses(&answer);
        assert_eq!(got.len(), 3, "the three encrypted messages come from the views; the ordinary one streams");
        for (i, (ours, theirs)) in got.iter().zip(&reference).enumerate() {
            for (name, value) in theirs {
                if name == "UID" {
                    continue;
                }
                let mine = ours.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing"));
                assert_eq!(
                    String::from_utf8_lossy(&mine.1),
                    String::from_utf8_lossy(value),
                    "message {i}, {name}: ours, then Dovecot's"
                );
            }
        }
        // The undecryptable one explains and carries the original.
        let body = &got[2].iter().find(|(n, _)| n == "BODY[]").unwrap().1;
        let text = String::from_utf8_lossy(body);
        assert!(text.contains("could not decrypt") && text.contains("encrypted-message.eml"));
        // A non-PEEK fetch sets \Seen at the provider.
        let answer =
            session.handle(b"g UID FETCH 1 (FLAGS BODY[TEXT])\r\n".to_vec(), &mut up, &mut ReplyOut::collect()).await;
        assert!(String::from_utf8_lossy(&answer).contains("\\Seen"), "{}", String::from_utf8_lossy(&answer));
        // SEARCH: clear text for the encrypted ones, the provider's answer for the rest, flags
        // from the provider, any combination.
        for (program, expected) in [
            ("UID SEARCH BODY \"Hello Bob\"", "* SEARCH 1 2\r\n"),
            ("UID SEARCH BODY \"in clear\"", "* SEARCH 1\r\n"),
            ("UID SEARCH OR SUBJECT multi SUBJECT ordinary", "* SEARCH 2 4\r\n"),
            ("UID SEARCH SEEN BODY hello", "* SEARCH 1\r\n"),
            ("SEARCH NOT SEEN SUBJECT multi", "* SEARCH 2\r\n"),
            ("UID SEARCH BODY \"BEGIN PGP MESSAGE\"", "* SEARCH 3\r\n"),
            ("UID SEARCH TEXT \"not encrypted\" UID 4:*", "* SEARCH 4\r\n"),
            (
                "UID SEARCH RETURN (MIN MAX COUNT ALL) BODY \"Hello Bob\"",
                "* ESEARCH (TAG \"q\") UID MIN 1 MAX 2 COUNT 2 ALL 1:2\r\n",
            ),
            ("SEARCH RETURN (COUNT) OR SUBJECT multi SUBJECT ordinary", "* ESEARCH (TAG \"q\") COUNT 2\r\n"),
            ("UID SEARCH RETURN () BODY nowhere", "* ESEARCH (TAG \"q\") UID\r\n"),
        ] {
            let answer =
                session.handle(format!("q {program}\r\n").into_bytes(), &mut up, &mut ReplyOut::collect()).await;
            let answer = String::from_utf8(answer).unwrap();
            assert!(answer.starts_with(expected) && answer.contains("\r\nq OK"), "{program}: {answer}");
        }
        let (bytes, entries) = views.memory();
        assert!(entries == 3 && bytes > 0);
        got
    };
    // A restart: a new store handle and an empty memory; no keys at all now, yet the same views.
    let views = Arc::new(Views::new(Store::open(dir.path()).unwrap(), seal, Arc::new(Keys(vec![])), DEFAULT_BUDGET));
    let mut session = ViewSession::new(views.clone(), &bob_login, Arc::new(|| true));
    assert!(!session.wants_command(CommandName::Select, false, b"s SELECT INBOX\r\n"));
    let again = responses(
        &session.handle(format!("f UID FETCH 1:* {ITEMS}\r\n").into_bytes(), &mut up, &mut ReplyOut::collect()).await,
    );
    assert_eq!(again, served, "views survive a restart byte for byte");
    // Without room in the account's share of the memory budget, the answer is refused, not
    // held, and nothing stays charged.
    let budget = coi_proxy::limits::budget::Budget::new(1024, 1024);
    views.charge_to(budget.clone());
    let mut tight = ViewSession::new(views, &bob_login, Arc::new(|| true));
    assert!(!tight.wants_command(CommandName::Select, false, b"s SELECT INBOX\r\n"));
    let answer =
        tight.handle(format!("f UID FETCH 1:* {ITEMS}\r\n").into_bytes(), &mut up, &mut ReplyOut::collect()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("f NO [LIMIT] the memory coi-proxy gives one account"), "{answer}");
    assert_eq!(budget.used(&bob_login), (0, 0));
}

/// A free loopback port (bound and released; the daemon binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn imaplib(port: u16, user: &str, password: &str, name: Option<&str>) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openpgp_view/read.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg(port.to_string()).arg(user).arg(password);
    if let Some(name) = name {
        cmd.arg(name);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "read.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The whole daemon (listener, session, relay, policy, interceptors) in this process, with a
/// key for the account: imaplib reads the clear text; a chat client gets the originals.
#[test]
fn daemon_serves_views_to_plain_clients_and_originals_to_chat_clients() {
    let p = Provider::start();
    let bob_login = p.users[0].clone();
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let bob = Arc::new(AccountKey::generate(&bob_login).unwrap());
    let to_bob = vec![(bob_login.clone(), bob.public_key().clone())];
    let opts = Options::mail(PreferEncrypt::Mutual, 0);
    let clear = message(
        &alice,
        &bob_login,
        "secret",
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello Bob, in clear.\r\n",
    );
    p.deliver("alice@example.org", &bob_login, &encrypt(&clear, &alice, &to_bob, &opts).unwrap());
    let big = format!("From: x@example.org\r\nSubject: ordinary\r\n\r\n{}\r\n", "ordinary line\r\n".repeat(20_000));
    p.deliver("x@example.org", &bob_login, big.as_bytes());

    let state = tempfile::tempdir().unwrap();
    let port = daemon(state.path(), &p, "", Arc::new(Keys(vec![bob.clone()])));

    let plain = imaplib(port, &bob_login, &p.password, None);
    let caps: Vec<&str> = plain["caps"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(
        !caps.iter().any(|c| c.starts_with("SORT") || c.starts_with("THREAD") || c.starts_with("BINARY")),
        "{caps:?}"
    );
    let messages = plain["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    let (secret, ordinary) = (&messages[0], &messages[1]);
    assert_eq!(secret["subject"], "secret");
    assert_eq!(secret["text"].as_str().unwrap().trim_end(), "Hello Bob, in clear.");
    assert_eq!(secret["encrypted"], false);
    assert_eq!(secret["size"], secret["body_len"], "RFC822.SIZE agrees with BODY[]");
    assert!(secret["head"].as_str().unwrap().contains("BODYSTRUCTURE (\"text\" \"plain\""), "{}", secret["head"]);
    assert_eq!(ordinary["subject"], "ordinary");
    assert_eq!(ordinary["size"], ordinary["body_len"]);
    assert!(ordinary["body_len"].as_u64().unwrap() > 300_000, "the ordinary message whole");
    assert_eq!(plain["search"], serde_json::json!(["1"]));
    assert!(plain["flags"].as_str().unwrap().contains("\\Seen"), "{}", plain["flags"]);

    let chat = imaplib(port, &bob_login, &p.password, Some("Delta Chat"));
    let secret = &chat["messages"].as_array().unwrap()[0];
    assert_eq!(secret["encrypted"], true, "a chat client sees the message as stored");
}

/// Dovecot's imaptest in its stress mode (random commands from several clients, checking that
/// every answer about a UID agrees with the earlier ones: sizes, structures, bodies, flags)
/// through the daemon with views, over a mailbox it fills from an mbox of encrypted messages.
/// Runs only where `IMAPTEST` names the binary (tests/support/imaptest/build.sh).
#[test]
fn imaptest_finds_no_inconsistency_in_views() {
    use std::io::Write;
    let Some(bin) = std::env::var_os("IMAPTEST").filter(|v| !v.is_empty()) else {
        let _ = writeln!(
            std::io::stderr(),
            "imaptest_finds_no_inconsistency_in_views: skipped: IMAPTEST not set (tests/support/imaptest/build.sh builds imaptest)"
        );
        return;
    };
    let p = Provider::start_with(ProviderOptions { users: Some(vec!["imaptest".into()]), ..Default::default() });
    let user = "imaptest@example.org";
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let key = Arc::new(AccountKey::generate(user).unwrap());
    let to = vec![(user.to_string(), key.public_key().clone())];
    let opts = Options::mail(PreferEncrypt::Mutual, 0);
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("encrypted.mbox");
    let mut text = String::new();
    for i in 0..20 {
        let body = format!(
            "Content-Type: text/plain; charset=utf-8\r\n\r\nMessage {i}: {}\r\n",
            "some clear text ".repeat(10 * (i + 1))
        );
        let clear = message(&alice, user, &format!("subject-{i}"), &body);
        let encrypted = encrypt(&clear, &alice, &to, &opts).unwrap();
        text.push_str("From alice@example.org Sat Dec  5 19:35:50 2026\n");
        text.push_str(&String::from_utf8(encrypted).unwrap().replace("\r\n", "\n"));
        text.push('\n');
    }
    std::fs::write(&mbox, text).unwrap();

    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let port = daemon(&state, &p, "", Arc::new(Keys(vec![key])));
    let out = std::process::Command::new(bin)
        .arg("host=127.0.0.1")
        .arg(format!("port={port}"))
        .arg(format!("user={user}"))
        .arg(format!("pass={}", p.password))
        .arg(format!("mbox={}", mbox.display()))
        .arg("clients=3")
        .arg("msgs=20")
        .arg("secs=15")
        .arg("box=INBOX")
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = writeln!(std::io::stderr(), "{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error:") || l.contains(" changed")).collect();
    assert!(errors.is_empty(), "imaptest found inconsistencies:\n{}", errors.join("\n"));
    assert!(report.contains("Fetc") || report.contains("Logi"), "imaptest did not run:\n{report}");
}

/// A plain client's own copies (issue 15, APPEND): through the daemon, imaplib appends a Sent
/// copy and a draft of a conversation with a verified contact and a Sent copy to someone without
/// a key. At the provider the first two are PGP/MIME encrypted to the account only (no clear
/// text anywhere), the third is as sent; through the proxy each reads back exactly as appended
/// (APPENDUID), SEARCH finds the clear text, and UID COPY / UID MOVE keep the view under the
/// new UIDs (COPYUID).
#[test]
fn own_copies_are_stored_encrypted_and_views_follow_copy_and_move() {
    let p = Provider::start();
    // users[0] is alice, the peer here.
    let bob_login = support::mailbox::BOB.to_string();
    let bob = Arc::new(AccountKey::generate(&bob_login).unwrap());
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let alice_peer = verify(None, "alice@example.org", alice.public_key(), 0).peer().cloned().unwrap();
    let state = tempfile::tempdir().unwrap();
    let port = daemon(state.path(), &p, "", Arc::new(KeysAndPeers(vec![bob.clone()], vec![alice_peer])));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openpgp_view/append.py");
    let out = std::process::Command::new("python3")
        .args([script, &port.to_string(), &bob_login, &p.password, "alice@example.org", "dave@example.org"])
        .output()
        .unwrap();
    assert!(out.status.success(), "append.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let appended = |name: &str| {
        let a = &seen["appended"][name];
        let uid = a["uid"].as_array().unwrap_or_else(|| panic!("no APPENDUID for {name}: {seen}"));
        (uid[1].as_str().unwrap().to_string(), a["bytes"].as_str().unwrap().to_string())
    };
    let (sent_uid, sent) = appended("sent");
    let (draft_uid, draft) = appended("draft");
    let (clear_uid, clear) = appended("clear");
    // Through the proxy: each exactly as appended, its size with it.
    for (box_, uid, bytes) in [("sent", &sent_uid, &sent), ("drafts", &draft_uid, &draft), ("sent", &clear_uid, &clear)]
    {
        let m = &seen[box_][uid.as_str()];
        assert_eq!(m["body"].as_str(), Some(bytes.as_str()), "{box_} {uid}: {seen}");
        assert_eq!(m["size"].as_u64(), Some(bytes.len() as u64));
    }
    assert_eq!(seen["search"], serde_json::json!([sent_uid.clone()]), "SEARCH over the clear text");
    // COPY and MOVE: the view follows to the new UIDs.
    let copyuid = seen["copyuid"].as_array().unwrap_or_else(|| panic!("no COPYUID: {seen}"));
    let moveuid = seen["moveuid"].as_array().unwrap_or_else(|| panic!("no COPYUID for MOVE: {seen}"));
    for (box_, code) in [("archive", copyuid), ("kept", moveuid)] {
        let m = &seen[box_][code[2].as_str().unwrap()];
        assert_eq!(m["body"].as_str(), Some(sent.as_str()), "{box_}: {seen}");
        assert_eq!(m["size"].as_u64(), Some(sent.len() as u64));
    }
    assert!(seen["sent_after_move"].get(&sent_uid).is_none(), "moved away");

    // At the provider: encrypted to the account only, no clear text; the clear conversation
    // as sent.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime.block_on(async {
        let mut up = connect(&p, &bob_login).await;
        let mut stored = Vec::new();
        for mailbox in ["Sent", "Drafts", "Archive", "Kept"] {
            assert!(up.run(format!("EXAMINE {mailbox}\r\n").as_bytes(), &[]).await.unwrap().ok());
            let reply = up.run(b"UID FETCH 1:* (UID BODY.PEEK[])\r\n", ALL).await.unwrap();
            for items in responses(&reply.untagged.concat()) {
                let uid = String::from_utf8(items.iter().find(|(n, _)| n == "UID").unwrap().1.clone()).unwrap();
                let body = &items.iter().find(|(n, _)| n == "BODY[]").unwrap().1;
                let start = body.windows(3).position(|w| w == b"}\r\n").unwrap() + 3;
                stored.push((mailbox, uid, body[start..].to_vec()));
            }
        }
        stored
    });
    assert_eq!(stored.len(), 4, "Sent: the clear copy; Drafts, Archive, Kept: one each");
    for (mailbox, uid, bytes) in &stored {
        let text = String::from_utf8_lossy(bytes);
        if *mailbox == "Sent" {
            assert_eq!(uid, &clear_uid);
            assert_eq!(text, clear, "no key for dave: stored as appended");
            continue;
        }
        assert!(text.contains("Content-Type: multipart/encrypted"), "{mailbox}: {text}");
        assert!(!text.contains("old mill") && !text.contains("sent-copy\r") && !text.contains("draft\r"), "{text}");
        let inner = decrypt(bytes, &bob, &NoKeys).unwrap().inner;
        assert!(String::from_utf8_lossy(&inner).contains("old mill"));
        assert!(decrypt(bytes, &alice, &NoKeys).is_err(), "encrypted to the account only");
    }
}

/// Read receipts (issue 22) for encrypted mail read through the view: a non-PEEK FETCH of an
/// encrypted message (whose `\Seen` the view sets with a command of its own) and a `STORE
/// +FLAGS \Seen` on one each send the sender exactly the receipt a clear message would get,
/// whether the request is in the outer header (older Delta Chat versions, other OpenPGP
/// mailers) or only inside the encryption (Delta Chat 2.65), where the view's clear header
/// is read.
#[test]
fn reading_encrypted_mail_through_the_view_sends_read_receipts() {
    use support::imap_client::ImapClient;
    use support::receipts::mdns_about;
    use support::smtp_client::{inbox, wait_for_inbox};
    let p = Provider::start();
    // users[0] is alice, the peer here.
    let bob_login = support::mailbox::BOB.to_string();
    let bob = Arc::new(AccountKey::generate(&bob_login).unwrap());
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let to_bob = vec![(bob_login.clone(), bob.public_key().clone())];
    let opts = Options::mail(PreferEncrypt::Mutual, 0);
    for id in ["fetched", "stored"] {
        let clear = message(&alice, &bob_login, id, "Content-Type: text/plain; charset=utf-8\r\n\r\nread me\r\n");
        let encrypted = encrypt(&clear, &alice, &to_bob, &opts).unwrap();
        let asking =
            [b"Chat-Version: 1.0\r\nChat-Disposition-Notification-To: alice@example.org\r\n".as_slice(), &encrypted]
                .concat();
        p.deliver("alice@example.org", &bob_login, &asking);
    }
    // As Delta Chat 2.65 asks: inside the encryption only.
    let inside = message(
        &alice,
        &bob_login,
        "inside",
        "Chat-Version: 1.0\r\nChat-Disposition-Notification-To: alice@example.org\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nread me too\r\n",
    );
    let encrypted = encrypt(&inside, &alice, &to_bob, &opts).unwrap();
    assert!(!String::from_utf8_lossy(&encrypted).contains("Disposition-Notification"), "asked inside only");
    p.deliver("alice@example.org", &bob_login, &encrypted);
    let state = tempfile::tempdir().unwrap();
    let extra = format!("smtp = \"127.0.0.1:0\"\n[[account]]\nlogin = \"{bob_login}\"\nread_receipts = true\n");
    let port = daemon(state.path(), &p, &extra, Arc::new(Keys(vec![bob.clone()])));

    let mut plain = ImapClient::connect(port);
    plain.login(&bob_login, &p.password);
    plain.expect_ok("s SELECT INBOX");
    let fetched = plain.expect_ok("f UID FETCH 1 (BODY[])").join("\n");
    assert!(fetched.contains("read me") && fetched.contains("\\Seen"), "the view, now seen: {fetched}");
    wait_for_inbox(p.imap_port, "alice@example.org", &p.password, Duration::from_secs(30), |m| {
        mdns_about(m, "fetched@example.org") > 0
    });
    plain.expect_ok("t UID STORE 2 +FLAGS (\\Seen)");
    wait_for_inbox(p.imap_port, "alice@example.org", &p.password, Duration::from_secs(30), |m| {
        mdns_about(m, "stored@example.org") > 0
    });
    // The request inside the encryption is read from the view.
    let fetched = plain.expect_ok("h UID FETCH 3 (BODY[])").join("\n");
    assert!(fetched.contains("read me too"), "{fetched}");
    wait_for_inbox(p.imap_port, "alice@example.org", &p.password, Duration::from_secs(30), |m| {
        mdns_about(m, "inside@example.org") > 0
    });
    // Read again: no second receipt.
    plain.expect_ok("g UID FETCH 1:3 (BODY[TEXT])");
    std::thread::sleep(Duration::from_secs(2));
    let alice_inbox = inbox(p.imap_port, "alice@example.org", &p.password);
    for id in ["fetched@example.org", "stored@example.org", "inside@example.org"] {
        assert_eq!(mdns_about(&alice_inbox, id), 1, "{id}");
    }
}

/// Delta Chat 2.65's own mail (captured, tests/fixtures/deltachat: a 1:1 message and the first
/// message of a group) delivered to bob, whose key is the one his Delta Chat exported: a plain
/// client reads both in clear through the daemon, with the protected Subject; a chat client
/// gets them as stored.
#[test]
fn delta_chat_mail_is_read_in_clear_by_a_plain_client() {
    let fixture = |name: &str| std::fs::read(format!("{}/tests/fixtures/deltachat/{name}", env!("CARGO_MANIFEST_DIR")));
    let p = Provider::start();
    let bob_login = support::mailbox::BOB;
    let bob = AccountKey::import_armored(&fixture("bob-secret.asc").unwrap(), bob_login, None).unwrap();
    p.deliver("alice@example.org", bob_login, &fixture("one-to-one.eml").unwrap());
    p.deliver("alice@example.org", bob_login, &fixture("group.eml").unwrap());
    let state = tempfile::tempdir().unwrap();
    let port = daemon(state.path(), &p, "", Arc::new(Keys(vec![Arc::new(bob)])));

    let plain = imaplib(port, bob_login, &p.password, None);
    let messages = plain["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{plain}");
    for (m, subject, text) in
        [(&messages[0], "Message from Alice", "Hello Bob, this is Alice."), (&messages[1], "Team", "Hello Team!")]
    {
        assert_eq!(m["subject"], subject, "{m}");
        assert!(m["text"].as_str().unwrap().contains(text), "{m}");
        assert_eq!(m["encrypted"], false);
        assert_eq!(m["size"], m["body_len"], "RFC822.SIZE agrees with BODY[]");
    }
    assert_eq!(plain["search"], serde_json::json!(["1"]), "SEARCH BODY \"Hello Bob\" over the clear text");
    let chat = imaplib(port, bob_login, &p.password, Some("Delta Chat"));
    assert!(chat["messages"].as_array().unwrap().iter().all(|m| m["encrypted"] == true), "{chat}");
}

/// More encrypted mail than the session reads whole for one of its own commands (4 MiB): the
/// first FETCH decides every view (the originals are read in batches), so it agrees with the
/// second byte for byte. Before, the originals past 4 MiB were dropped and those messages shown
/// encrypted once, decrypted afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_fetch_of_much_encrypted_mail_agrees_with_the_next() {
    let p = Provider::start();
    let bob_login = support::mailbox::BOB;
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let bob = Arc::new(AccountKey::generate(bob_login).unwrap());
    let to_bob = vec![(bob_login.to_string(), bob.public_key().clone())];
    let opts = Options::mail(PreferEncrypt::Mutual, 0);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..24 {
        // Incompressible text, so each encrypted message is about 300 KB.
        let mut text = String::new();
        while text.len() < 220_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(&format!("{seed:016x}"));
            if text.len() % 80 == 64 {
                text.push_str("\r\n");
            }
        }
        let clear =
            message(&alice, bob_login, &format!("big-{i}"), &format!("Content-Type: text/plain\r\n\r\n{text}\r\n"));
        p.deliver("alice@example.org", bob_login, &encrypt(&clear, &alice, &to_bob, &opts).unwrap());
    }
    let mut up = connect(&p, bob_login).await;
    let dir = tempfile::tempdir().unwrap();
    let views = Arc::new(Views::new(
        Store::open(dir.path()).unwrap(),
        Arc::new(SealKey::generate()),
        Arc::new(Keys(vec![bob])),
        DEFAULT_BUDGET,
    ));
    let mut session = ViewSession::new(views, bob_login, Arc::new(|| true));
    assert!(!session.wants_command(CommandName::Select, false, b"s SELECT INBOX\r\n"));
    assert!(up.run(b"SELECT INBOX\r\n", &[]).await.unwrap().ok());
    let line = b"f UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n";
    let first = session.handle(line.to_vec(), &mut up, &mut ReplyOut::collect()).await;
    let second = session.handle(line.to_vec(), &mut up, &mut ReplyOut::collect()).await;
    let first_text = String::from_utf8_lossy(&first);
    assert_eq!(first_text.matches("Subject: big-").count(), 24, "every one decrypted: {first_text}");
    assert_eq!(first, second, "the first answer is the one that stays");
}
