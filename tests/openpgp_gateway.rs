//! The OpenPGP gateway's commands against the real daemon and a real Dovecot: `key export`,
//! `key import`, `invite` and `join` work through the running daemon's control socket and
//! without a daemon; keys, invites and handshakes survive a restart; a `join` sends the first
//! SecureJoin message through the account's provider, encrypted.

mod support;

use std::time::Duration;

use coi_proxy::openpgp::key::{AccountKey, PublicKey};
use coi_proxy::openpgp::securejoin::invite::Invite;
use support::openpgp::{cli, stdout, stored_peer};
use support::provider::Provider;
use support::proxy::Proxy;
use support::smtp_client::wait_for_inbox;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";

fn start(provider: &Provider) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .start()
}

fn fingerprint(armored_public: &str) -> String {
    PublicKey::from_armored(armored_public.as_bytes()).expect("an armored public key").fingerprint().hex()
}

#[test]
fn keys_invites_and_joins_through_the_running_daemon_and_after_a_restart() {
    let provider = Provider::start();
    let mut proxy = start(&provider);

    // Export: made at first use, the same key every time; the secret key is Alice's.
    let public = stdout(&cli(&proxy, &["key", "export", ALICE]));
    assert!(public.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"), "{public}");
    assert_eq!(fingerprint(&stdout(&cli(&proxy, &["key", "export", ALICE]))), fingerprint(&public));
    let secret = stdout(&cli(&proxy, &["key", "export", ALICE, "--secret"]));
    let key = AccountKey::import_armored(secret.as_bytes(), ALICE, None).expect("the secret export imports");
    assert_eq!(key.fingerprint().hex(), fingerprint(&public));
    let log = proxy.log();
    assert!(!log.contains("PRIVATE KEY") && log.contains("control: key export alice@example.org --secret"), "{log}");

    // Import: Bob brings the key his Delta Chat made; a bad file changes nothing.
    let bobs = AccountKey::generate(BOB).unwrap();
    let file = proxy.state_dir.path().join("bob.asc");
    std::fs::write(&file, bobs.secret_armored().unwrap().expose()).unwrap();
    let text = stdout(&cli(&proxy, &["key", "import", BOB, file.to_str().unwrap()]));
    assert!(text.contains(&bobs.fingerprint().hex()), "{text}");
    std::fs::write(&file, &public).unwrap();
    let refused = cli(&proxy, &["key", "import", BOB, file.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("public key"), "{refused:?}");
    assert_eq!(fingerprint(&stdout(&cli(&proxy, &["key", "export", BOB]))), bobs.fingerprint().hex());

    // Invite: the link is the last line and carries Alice's key.
    let text = stdout(&cli(&proxy, &["invite", ALICE]));
    let link = text.lines().last().unwrap().to_string();
    assert!(link.starts_with("https://i.delta.chat/#"), "{text}");
    let invite = Invite::parse(&link).unwrap();
    assert_eq!((invite.fingerprint.hex(), invite.addr()), (fingerprint(&public), ALICE));
    assert!(!proxy.log().contains(&invite.auth), "the link's tokens are not logged");

    // Join: Bob's relay needs his password, which a login gives the proxy.
    let mut imap = proxy.connect();
    imap.login(BOB, "secret");
    let text = stdout(&cli(&proxy, &["join", BOB, &link]));
    assert!(text.contains("asked alice@example.org"), "{text}");
    let arrived = wait_for_inbox(provider.imap_port, ALICE, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let request = String::from_utf8_lossy(&arrived[0]).into_owned();
    assert!(request.contains("multipart/encrypted") && request.contains("From: "), "{request}");
    assert!(!request.contains("vc-request-pubkey"), "the step is inside the encryption: {request}");
    let bad = cli(&proxy, &["join", BOB, "https://example.org/not-an-invite"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("invite link"), "{bad:?}");
    drop(imap);

    // A restart keeps the keys (and the invite still answers to the same key).
    proxy.restart();
    assert_eq!(fingerprint(&stdout(&cli(&proxy, &["key", "export", ALICE]))), fingerprint(&public));
    assert_eq!(fingerprint(&stdout(&cli(&proxy, &["key", "export", BOB]))), bobs.fingerprint().hex());

    // Without a daemon the command line does the same on the store.
    proxy.stop();
    assert_eq!(fingerprint(&stdout(&cli(&proxy, &["key", "export", ALICE]))), fingerprint(&public));
    let link2 = stdout(&cli(&proxy, &["invite", ALICE])).lines().last().unwrap().to_string();
    assert_ne!(link2, link, "a new invite each time");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(proxy.state.join("seal.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn autocrypt_off_keeps_no_keys_and_says_so() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .extra("[autocrypt]\nenabled = false\n")
        .start();
    let out = cli(&proxy, &["key", "export", ALICE]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Autocrypt is off"), "{out:?}");
    assert!(!proxy.state.join("seal.key").exists());
}

/// Both roles of SecureJoin run in the account workers, with no mail client connected: Alice's
/// invite, Bob's join, four messages through Dovecot, and each is the other's verified contact.
#[test]
fn invite_and_join_complete_in_the_workers_and_both_sides_are_verified() {
    let provider = Provider::start();
    let mut proxy = start(&provider);
    // The workers need the passwords: a login gives them to the proxy.
    for user in [ALICE, BOB] {
        let mut c = proxy.connect();
        c.login(user, "secret");
    }
    let link = stdout(&cli(&proxy, &["invite", ALICE])).lines().last().unwrap().to_string();
    let text = stdout(&cli(&proxy, &["join", BOB, &link]));
    assert!(text.contains("asked alice@example.org"), "{text}");
    proxy.wait_for_log("SecureJoin complete", Duration::from_secs(60));
    let log = proxy.log();
    assert!(log.contains("the joiner proved the invite's token"), "{log}");

    // Bob's plain client now writes to Alice: encrypted at the provider, the real Subject
    // inside only. To Alice and Carol (no key) together: refused, never clear to a verified
    // contact. To Carol alone: clear, with Bob's Autocrypt header.
    let mut smtp = proxy.connect_smtp();
    smtp.login(BOB, "secret");
    let plain = b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: lunch?\r\nMessage-ID: <p1@example.org>\r\n\r\nat noon\r\n";
    assert_eq!(smtp.send_message(BOB, &[ALICE], plain).code, 250, "{}", smtp.transcript());
    let reply = smtp.send_message(BOB, &[ALICE, CAROL], plain);
    assert_eq!(reply.code, 554, "{}", smtp.transcript());
    assert!(smtp.transcript().contains("carol@example.org have no key"), "{}", smtp.transcript());
    assert_eq!(smtp.send_message(BOB, &[CAROL], plain).code, 250, "{}", smtp.transcript());
    let at_carol = wait_for_inbox(provider.imap_port, CAROL, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let clear = String::from_utf8_lossy(&at_carol[0]).into_owned();
    assert!(clear.contains("Autocrypt: addr=bob@example.org;") && clear.contains("at noon"), "{clear}");
    let at_alice = wait_for_inbox(provider.imap_port, ALICE, "secret", Duration::from_secs(20), |m| m.len() >= 3);
    let sealed = String::from_utf8_lossy(&at_alice[2]).into_owned();
    assert!(sealed.contains("multipart/encrypted") && !sealed.contains("at noon"), "{sealed}");
    assert!(!sealed.contains("lunch?"), "the Subject is protected: {sealed}");
    proxy.stop();
    let bob_at_alice = stored_peer(&proxy, ALICE, BOB).expect("Alice knows Bob");
    let alice_at_bob = stored_peer(&proxy, BOB, ALICE).expect("Bob knows Alice");
    assert!(bob_at_alice.is_verified() && alice_at_bob.is_verified());
    let alice_key = stdout(&cli(&proxy, &["key", "export", ALICE]));
    assert_eq!(alice_at_bob.verified_fingerprint().unwrap().hex(), fingerprint(&alice_key));
    // Four handshake messages went through the provider, two each way (and Bob's letter).
    let at_alice = support::smtp_client::inbox(provider.imap_port, ALICE, "secret");
    let at_bob = support::smtp_client::inbox(provider.imap_port, BOB, "secret");
    assert_eq!((at_alice.len(), at_bob.len()), (3, 2));
}
