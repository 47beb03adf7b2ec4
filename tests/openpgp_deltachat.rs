//! The OpenPGP gateway's core against a real Delta Chat 2.65 (`deltachat-rpc-server`) over a real
//! Dovecot: Delta Chat reads what we encrypt (with a key we generated and exported), and both
//! SecureJoin roles of our state machines complete a handshake with Delta Chat. The proxy is not
//! involved yet: this test plays the gateway with the library directly, reading and sending the
//! gateway user's mail at the provider.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use coi_proxy::openpgp::autocrypt::PreferEncrypt;
use coi_proxy::openpgp::decrypt::{Decrypted, NoKeys, SignatureStatus, decrypt};
use coi_proxy::openpgp::encrypt::{Options, encrypt};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::mime;
use coi_proxy::openpgp::securejoin::invite::Invite;
use coi_proxy::openpgp::securejoin::inviter::{Inviter, InviterEvent, Issued};
use coi_proxy::openpgp::securejoin::joiner::{self, JoinerEvent};
use support::openpgp::{dc_report as report, dc_script as script};
use support::provider::Provider;
use support::smtp_client::inbox;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// New messages in `user`'s INBOX since the last call.
struct Watch {
    port: u16,
    user: String,
    seen: HashSet<Vec<u8>>,
}

impl Watch {
    fn new(provider: &Provider, user: &str) -> Watch {
        Watch { port: provider.imap_port, user: user.into(), seen: HashSet::new() }
    }

    fn fresh(&mut self) -> Vec<Vec<u8>> {
        let all = inbox(self.port, &self.user, "secret");
        all.into_iter().filter(|m| self.seen.insert(m.clone())).collect()
    }
}

/// Runs `step` on every new message of `watch` until the child exits; returns its output.
fn drive(mut child: Child, watch: &mut Watch, mut step: impl FnMut(&[u8])) -> (bool, String, String) {
    let deadline = Instant::now() + Duration::from_secs(150);
    // stdout may already be taken by the caller (who reads it itself).
    let stdout = child.stdout.take();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut stdout) = stdout {
            stdout.read_to_string(&mut s).unwrap();
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        for m in watch.fresh() {
            step(&m);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// Waits for the message whose text starts with `text` in `key`'s INBOX, decrypted.
fn received(provider: &Provider, key: &AccountKey, text: &str) -> Decrypted {
    let wanted =
        |m: &Vec<u8>| decrypt(m, key, &NoKeys).ok().filter(|d| mime::split(&d.inner).1.starts_with(text.as_bytes()));
    let messages =
        support::smtp_client::wait_for_inbox(provider.imap_port, key.addr(), "secret", Duration::from_secs(30), |ms| {
            ms.iter().any(|m| wanted(m).is_some())
        });
    messages.iter().find_map(wanted).unwrap()
}

#[test]
fn delta_chat_shows_our_mail_with_a_padlock_and_uses_our_exported_key() {
    let provider = Provider::start();
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let bob = AccountKey::generate("bob@example.org").unwrap();
    let carol = AccountKey::generate("carol@example.org").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Bob's Delta Chat runs with the key we made: our export imports into Delta Chat.
    let key_file = dir.path().join("bob-secret.asc");
    std::fs::write(&key_file, bob.secret_armored().unwrap().expose()).unwrap();
    let messages = dir.path().join("messages");
    std::fs::create_dir(&messages).unwrap();
    let options = Options::mail(PreferEncrypt::Mutual, now());
    let one = format!(
        "From: Alice Plain <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: Hello from a mail program\r\n\
         Date: {}\r\nMessage-ID: <one@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello Bob, this is Alice's mail program.\r\n",
        mime::format_date(now())
    );
    let two = format!(
        "From: Alice Plain <alice@example.org>\r\nTo: Bob <bob@example.org>, carol@example.org\r\nSubject: To both of you\r\n\
         Date: {}\r\nMessage-ID: <two@example.org>\r\nIn-Reply-To: <one@example.org>\r\n\r\nHello Bob and Carol.\r\n",
        mime::format_date(now())
    );
    let to_bob = vec![("bob@example.org".to_string(), bob.public_key().clone())];
    let to_both = vec![to_bob[0].clone(), ("carol@example.org".to_string(), carol.public_key().clone())];
    std::fs::write(messages.join("1.eml"), encrypt(one.as_bytes(), &alice, &to_bob, &options).unwrap()).unwrap();
    std::fs::write(messages.join("2.eml"), encrypt(two.as_bytes(), &alice, &to_both, &options).unwrap()).unwrap();

    let out = script(&provider, "accept", "bob@example.org")
        .args(["--key", key_file.to_str().unwrap(), "--messages", messages.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let r = report(&stdout);
    eprintln!("{r:#}");
    let shown = r["messages"].as_array().unwrap();
    assert_eq!(shown.len(), 2);
    assert!(shown[0]["text"].as_str().unwrap().contains("Hello Bob, this is Alice's mail program."), "{r}");
    assert!(shown[1]["text"].as_str().unwrap().contains("Hello Bob and Carol."), "{r}");
    for m in shown {
        assert_eq!(m["show_padlock"], true, "{m}");
        assert!(m["error"].is_null(), "{m}");
        // A key-contact named from the protected From.
        assert_eq!(m["sender"]["is_key_contact"], true, "{m}");
        assert_eq!(m["sender"]["display_name"], "Alice Plain", "{m}");
    }
    assert_eq!(shown[0]["subject"], "Hello from a mail program", "the protected Subject, not [...]");
}

#[test]
fn our_inviter_completes_securejoin_with_a_delta_chat_joiner() {
    let provider = Provider::start();
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let invite = Invite::new_contact(alice.fingerprint().clone(), alice.addr(), "Alice Plain");
    let issued = [Issued::from_invite(&invite, now())];
    let inviter = Inviter { key: &alice, name: "Alice Plain", invites: &issued };
    let link = inviter.link(&issued[0]);

    let child = script(&provider, "joiner", "bob@example.org")
        .args(["--link", &link])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = Watch::new(&provider, "alice@example.org");
    let mut steps = Vec::new();
    let mut confirmed = None;
    let mut chat = Vec::new();
    let (ok, stdout, stderr) = drive(child, &mut watch, |m| match inviter.handle(m, now()) {
        Ok(InviterEvent::SendPubkey { send }) => {
            steps.push(send.step);
            let to: Vec<&str> = send.to.iter().map(String::as_str).collect();
            provider.submit("alice@example.org", &send.from, &to, &send.message);
        }
        Ok(InviterEvent::Confirmed { peer, key, verified, send }) => {
            steps.push(send.step);
            let to: Vec<&str> = send.to.iter().map(String::as_str).collect();
            provider.submit("alice@example.org", &send.from, &to, &send.message);
            confirmed = Some((peer, key, verified));
        }
        Err(rejected) => chat.push((m.to_vec(), rejected)),
    });
    assert!(ok, "Delta Chat did not finish joining: {stderr}\n{stdout}\nsteps: {steps:?}");
    assert_eq!(steps, ["vc-pubkey", "vc-contact-confirm"]);
    let (peer, bob_key, verified) = confirmed.unwrap();
    assert_eq!(peer, "bob@example.org");
    assert!(verified);
    let r = report(&stdout);
    eprintln!("{r:#}");
    assert_eq!(r["inviter_contact"]["is_key_contact"], true, "{r}");
    assert_eq!(r["chat"]["is_encrypted"], true, "{r}");

    // Delta Chat now writes to us encrypted and signed with the key it proved.
    assert_eq!(
        received(&provider, &alice, "Hello from Delta Chat").signature,
        SignatureStatus::Valid(bob_key.fingerprint().clone())
    );
}

/// Starts Delta Chat as an inviter (`mode`), joins its link with our joiner as bob; returns the
/// link's invite, the inviter's key our joiner verified, what Delta Chat reported, and the
/// joiner's events.
fn join_delta_chat(
    provider: &Provider,
    bob: &AccountKey,
    mode: &str,
) -> (Invite, coi_proxy::openpgp::key::PublicKey, serde_json::Value, Option<String>) {
    let mut child =
        script(provider, mode, "alice@example.org").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    let link =
        first.strip_prefix("LINK ").unwrap_or_else(|| panic!("no link from Delta Chat: {first:?}")).trim().to_string();
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        lines.read_to_string(&mut s).unwrap();
        s
    });
    let invite = Invite::parse(&link).unwrap();
    assert_eq!(invite.addr(), "alice@example.org");
    let (mut state, first) = joiner::start(bob, &invite, now()).unwrap();
    provider.submit("bob@example.org", &first.from, &["alice@example.org"], &first.message);

    let mut watch = Watch::new(provider, "bob@example.org");
    let mut joined = None;
    let mut steps = vec![first.step];
    let mut alice_key = None;
    let (ok, _, stderr) = drive(child, &mut watch, |m| match state.handle(bob, "Bob Plain", m, now()) {
        Ok(JoinerEvent::InviterVerified { state: next, inviter_key, send, .. }) => {
            steps.push(send.step);
            let to: Vec<&str> = send.to.iter().map(String::as_str).collect();
            provider.submit("bob@example.org", &send.from, &to, &send.message);
            alice_key = Some(inviter_key);
            state = next;
        }
        Ok(JoinerEvent::Joined { state: next, group, .. }) => {
            joined = Some(group);
            state = next;
        }
        Err(_) => {}
    });
    let stdout = rest.join().unwrap();
    assert!(ok, "Delta Chat's inviter did not finish: {stderr}\n{stdout}\nsteps: {steps:?}");
    let group = joined.unwrap_or_else(|| panic!("we never got the confirmation; steps {steps:?}"));
    let request = if group.is_some() { "vg-request-with-auth" } else { "vc-request-with-auth" };
    assert_eq!(steps, ["vc-request-pubkey", request]);
    let r = report(&stdout);
    eprintln!("{r:#}");
    (invite, alice_key.unwrap(), r, group)
}

#[test]
fn our_joiner_completes_securejoin_with_a_delta_chat_inviter() {
    let provider = Provider::start();
    let bob = AccountKey::generate("bob@example.org").unwrap();
    let (invite, alice_key, r, group) = join_delta_chat(&provider, &bob, "inviter");
    assert_eq!(group, None);
    assert_eq!(alice_key.fingerprint(), &invite.fingerprint);
    assert_eq!(r["joiner_contact"]["is_key_contact"], true, "{r}");
    assert_eq!(r["joiner_contact"]["display_name"], "Bob Plain", "{r}");
    assert_eq!(
        received(&provider, &bob, "Hello from Delta Chat").signature,
        SignatureStatus::Valid(alice_key.fingerprint().clone())
    );
}

#[test]
fn our_joiner_joins_a_delta_chat_group() {
    let provider = Provider::start();
    let bob = AccountKey::generate("bob@example.org").unwrap();
    let (invite, alice_key, r, group) = join_delta_chat(&provider, &bob, "group-inviter");
    let coi_proxy::openpgp::securejoin::invite::Target::Group { id, name } = &invite.target else {
        panic!("{invite:?}")
    };
    assert_eq!(name, "Team");
    assert_eq!(group.as_ref(), Some(id));
    assert!(r["members"].as_array().unwrap().iter().any(|m| m == "bob@example.org"), "{r}");
    // The group's message reaches us with the group id among the protected headers.
    let d = received(&provider, &bob, "Hello group");
    assert_eq!(d.protected.chat_group_id.as_ref(), Some(id));
    assert_eq!(d.signature, SignatureStatus::Valid(alice_key.fingerprint().clone()));
}
