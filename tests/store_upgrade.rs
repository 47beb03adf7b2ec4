//! An upgrade keeps state: a store file written by the release before the store writer (schema
//! 1, `tests/fixtures/store-schema1.redb`, made by the code of that release with every table
//! filled) opens with this version, is migrated (schema 2: METADATA sizes kept beside the
//! values; schema 3: account keys exact, no longer lower-cased, which every release before
//! wrote), reads back exactly what was written, and takes new writes. Schema 4: the OpenPGP
//! identity and the OAuth2 grants, which schema 3 still kept lower-cased, are keyed exactly
//! too; a schema 3 state dir keeps its keys and grants.

use std::path::Path;

use coi_proxy::store::{
    Attempt, MailParams, QueuedMessage, Recipient, RecipientState, SCHEMA_VERSION, SentChat, Store, Tick,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-schema1.redb");
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";

/// A copy of the fixture in a fresh state dir (the test must not change the fixture).
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(FIXTURE, dir.path().join("coi-proxy.redb")).expect("copy the fixture");
    dir
}

fn rcpt(address: &str, state: RecipientState) -> Recipient {
    Recipient {
        address: address.into(),
        notify: Some("SUCCESS,FAILURE".into()),
        orcpt: Some(format!("rfc822;{address}")),
        state,
    }
}

fn expected_queue() -> Vec<(u64, QueuedMessage, Vec<u8>)> {
    let body1 = b"From: alice@example.org\r\nTo: bob@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <m1@example.org>\r\n\r\nhello\r\n".to_vec();
    let first = QueuedMessage {
        login: "alice@example.org".into(),
        from: "alice@example.org".into(),
        params: MailParams {
            eight_bit: true,
            smtputf8: false,
            ret: Some("HDRS".into()),
            envid: Some("coi.fixture.1".into()),
        },
        recipients: vec![
            rcpt("bob@example.org", RecipientState::Pending),
            rcpt("carol@example.org", RecipientState::Delivered { at: 1_700_000_100, reply: "250 2.0.0 ok".into() }),
        ],
        size: body1.len() as u64,
        received_at: 1_700_000_000,
        next_attempt_at: 1_700_000_160,
        give_up_at: 1_700_432_000,
        attempts: vec![Attempt { at: 1_700_000_100, result: "1 delivered, 1 deferred: 451 try later".into() }],
        report_pending: false,
        chat_followup: true,
    };
    let second = QueuedMessage {
        login: "dave@example.net".into(),
        from: "".into(),
        params: MailParams::default(),
        recipients: vec![rcpt(
            "eve@example.com",
            RecipientState::Failed { at: 1_700_000_200, reply: "550 5.1.1 no such user".into() },
        )],
        size: 3,
        received_at: 1_700_000_050,
        next_attempt_at: 1_700_000_050,
        give_up_at: 1_700_432_050,
        attempts: vec![],
        report_pending: true,
        chat_followup: false,
    };
    vec![(1, first, body1), (2, second, b"x\r\n".to_vec())]
}

/// Everything the fixture holds, read through this version's accessors.
fn check_contents(store: &Store) {
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let queue = store.queue_list().unwrap();
    let expected = expected_queue();
    assert_eq!(queue, expected.iter().map(|(id, m, _)| (*id, m.clone())).collect::<Vec<_>>());
    for (id, _, body) in &expected {
        assert_eq!(store.queue_body(*id).unwrap().as_deref(), Some(body.as_slice()));
    }
    assert_eq!(store.queue_body(3).unwrap(), None, "the removed message stays removed");

    for id in ["m1@example.org", "m2@example.org"] {
        assert!(store.is_chat_id("alice@example.org", id).unwrap(), "{id}");
    }
    assert!(store.is_chat_id("dave@example.net", "d1@example.net").unwrap());
    assert!(!store.is_chat_id("alice@example.org", "d1@example.net").unwrap());
    assert_eq!(store.inbox_position("alice@example.org").unwrap(), Some((1_234_567, 42)));
    assert_eq!(store.inbox_position("dave@example.net").unwrap(), None);

    let server = store.metadata_entries("alice@example.org", b"").unwrap();
    assert_eq!(server.len(), 2);
    assert_eq!((server[ENABLED].as_slice(), server[FILTER].as_slice()), (&b"yes"[..], &b"active"[..]));
    let inbox = store.metadata_entries("alice@example.org", b"INBOX").unwrap();
    assert_eq!(inbox["/private/comment"], [0, 1, 2, 255]);
    // Schema 2: the sizes, from the values, without reading them.
    let sizes = store.metadata_sizes("alice@example.org", b"").unwrap();
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), [(ENABLED.to_string(), 3), (FILTER.to_string(), 6)]);
    assert_eq!(store.metadata_sizes("alice@example.org", b"INBOX").unwrap()["/private/comment"], 4);
    assert_eq!(
        store.metadata_value("alice@example.org", b"INBOX", "/private/comment").unwrap().unwrap(),
        [0, 1, 2, 255]
    );

    let key = store.vapid_key(|| panic!("the stored key must be found")).wait().unwrap();
    assert_eq!(key, (1..=32).collect::<Vec<u8>>());
    // At a time when the unvalidated one has not expired yet.
    let subs = store.push_subscriptions("alice@example.org", 4_000_000_001, 300).unwrap();
    let ids: Vec<(&str, bool, u64)> = subs.iter().map(|s| (s.id.as_str(), s.validated, s.created)).collect();
    assert_eq!(ids, [("sub-pending", false, 4_000_000_000), ("sub-validated", true, 1_700_000_000)]);
    assert!(subs[1].json.contains("https://push.example.net/sub-validated"));
    assert_eq!(subs[1].token, "token-sub-validated");
    assert_eq!(store.push_accounts().unwrap(), ["alice@example.org"]);
    assert!(store.push_validated("alice@example.org").unwrap());

    let sent = SentChat {
        sent_at: 1_700_000_000,
        envid: Some("coi.fixture.1".into()),
        recipients: vec![Tick {
            address: "bob@example.org".into(),
            delivered: Some(1_700_000_300),
            failed: None,
            read: Some(1_700_000_400),
        }],
        marked: vec!["$Delivered".into()],
        // Not in records of the previous release: none recorded yet.
        reports: Vec::new(),
    };
    assert_eq!(store.sent_chats().unwrap(), [("alice@example.org".into(), "m1@example.org".into(), sent.clone())]);
    assert_eq!(store.sent_chats_to_mark("alice@example.org").unwrap(), [("m1@example.org".into(), sent)]);
    assert_eq!(store.mdn_baseline("alice@example.org").unwrap(), Some(1_699_999_999));
    // Recent deliveries came later: an old store lists none (and has no such table).
    assert!(store.deliveries().unwrap().is_empty());
}

#[test]
fn a_store_of_the_previous_release_reads_unchanged() {
    // Schema 3 (exact account keys) and 4 (identity and grants too) have their own tests below.
    assert_eq!(SCHEMA_VERSION, 4, "a new schema needs a migration test of its own");
    let dir = state_dir();
    let store = Store::open(dir.path()).unwrap();
    check_contents(&store);
    assert!(!store.mdn_claim("alice@example.org", "in1@example.net", 1).wait().unwrap(), "claimed before");
    drop(store);
    // Opening and reading changed nothing.
    let store = Store::open(dir.path()).unwrap();
    check_contents(&store);
}

#[test]
fn a_store_of_the_previous_release_takes_new_writes() {
    let dir = state_dir();
    let store = Store::open(dir.path()).unwrap();
    let (_, mut msg, _) = expected_queue().remove(1);
    msg.report_pending = false;
    let id = store.queue_insert(&msg, b"new".to_vec(), None).wait().unwrap();
    assert_eq!(id, 4, "ids go on after the ones used before the upgrade");
    assert!(store.queue_save(2, &msg).wait().unwrap(), "message 2 was queued before the upgrade");
    assert!(store.queue_get(2).unwrap().is_none(), "and is removed now that it is done");
    store.set_inbox_position("alice@example.org", 1_234_567, 50).wait().unwrap();
    store.remember_chat_ids("alice@example.org", &["m3@example.org".into()]).wait().unwrap();
    let noted = store.sent_chat_update("alice@example.org", Some("m1@example.org"), None, |s| {
        s.note_report("mdn1@example.org");
    });
    assert!(noted.wait().unwrap().is_some(), "a report is recorded on a record of before");
    // Message 1's pending recipient is delivered now: the old store keeps it as a recent
    // delivery, in the table the upgrade adds on first use.
    let (_, mut first, _) = expected_queue().remove(0);
    let now = coi_proxy::clock::now();
    first.recipients[0].state = RecipientState::Delivered { at: now, reply: "250 2.0.0 ok".into() };
    assert!(store.queue_save(1, &first).wait().unwrap());
    let delivered = store.deliveries().unwrap();
    assert_eq!(delivered.len(), 1, "only the recipient settled now: {delivered:?}");
    assert_eq!((delivered[0].id, delivered[0].recipient.as_str()), (1, "bob@example.org"));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    // Message 1 stays: its chat follow-up is still owed.
    assert_eq!(store.queue_list().unwrap().iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 4]);
    assert_eq!(store.deliveries().unwrap().len(), 1);
    assert_eq!(store.inbox_position("alice@example.org").unwrap(), Some((1_234_567, 50)));
    assert_eq!(store.sent_chats().unwrap()[0].2.reports, ["mdn1@example.org"]);
    for id in ["m1@example.org", "m3@example.org"] {
        assert!(store.is_chat_id("alice@example.org", id).unwrap());
    }
    assert!(Path::new(FIXTURE).exists());
}

/// The OpenPGP gateway's tables came after schema 1: a store of the previous release has none
/// (no key, no peers), takes them on first use, and keeps them and everything else across a
/// reopen, still as schema 1 (the tables are additive; the old release ignores them).
#[test]
fn a_store_of_the_previous_release_takes_openpgp_state() {
    let dir = state_dir();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.account_key("alice@example.org").unwrap(), None);
    assert!(store.peers("alice@example.org").unwrap().is_empty());
    assert!(
        store.invites("alice@example.org").unwrap().is_empty() && store.joins("alice@example.org").unwrap().is_empty()
    );
    assert!(store.accounts_with_keys().unwrap().is_empty());
    store.put_account_key("alice@example.org", b"sealed".to_vec(), false).wait().unwrap();
    store.put_peers("alice@example.org", vec![("bob@example.net".into(), b"peer".to_vec())]).wait().unwrap().unwrap();
    store.put_invite("alice@example.org", "inv", b"invite".to_vec()).wait().unwrap();
    store.put_join("alice@example.org", "j", Some(b"join".to_vec())).wait().unwrap();
    assert!(store.groups("alice@example.org").unwrap().is_empty());
    assert!(store.put_group("alice@example.org", "grp", b"group".to_vec()).wait().unwrap());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    check_contents(&store);
    assert_eq!(store.account_key("alice@example.org").unwrap().as_deref(), Some(&b"sealed"[..]));
    assert_eq!(store.peer("alice@example.org", "bob@example.net").unwrap().as_deref(), Some(&b"peer"[..]));
    assert_eq!(store.invites("alice@example.org").unwrap(), [("inv".to_string(), b"invite".to_vec())]);
    assert_eq!(store.joins("alice@example.org").unwrap(), [("j".to_string(), b"join".to_vec())]);
    assert_eq!(store.groups("alice@example.org").unwrap(), [("grp".to_string(), b"group".to_vec())]);
}

/// Schema 3: keys are the login exactly as the provider knows it. The previous releases wrote
/// them lower-cased; a login typed in lower case finds its state unchanged, and the first login
/// that differs only in case from such a key claims it (moved to its exact key); from then on
/// logins that differ in case never share state.
#[test]
fn a_login_in_capitals_claims_the_previous_releases_state_once() {
    let dir = state_dir();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // dave@example.net logged in as DAVE@example.net with the previous release.
    rt.block_on(store.claim_legacy_state("DAVE@example.net"));
    assert!(store.is_chat_id("DAVE@example.net", "d1@example.net").unwrap());
    assert!(!store.is_chat_id("dave@example.net", "d1@example.net").unwrap(), "moved, not copied");
    // alice logs in as she always did: her state stays; a later Alice (another user on a
    // case-sensitive provider) finds none of it.
    rt.block_on(store.claim_legacy_state("alice@example.org"));
    rt.block_on(store.claim_legacy_state("Alice@example.org"));
    assert_eq!(store.metadata_entries("alice@example.org", b"").unwrap().len(), 2);
    assert!(store.metadata_entries("Alice@example.org", b"").unwrap().is_empty());
    assert_eq!(store.push_subscriptions("alice@example.org", 4_000_000_001, 300).unwrap().len(), 2);
    assert!(store.push_subscriptions("Alice@example.org", 4_000_000_001, 300).unwrap().is_empty());
    assert!(store.is_chat_id("alice@example.org", "m1@example.org").unwrap());
    assert!(!store.is_chat_id("Alice@example.org", "m1@example.org").unwrap());
    drop(store);
    // A claim holds after a restart; nothing is claimed twice.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    rt.block_on(store.claim_legacy_state("dave@example.net"));
    assert!(store.is_chat_id("DAVE@example.net", "d1@example.net").unwrap());
    assert!(!store.is_chat_id("dave@example.net", "d1@example.net").unwrap());
}

fn grant(client_id: &str) -> coi_proxy::store::OAuthGrant {
    coi_proxy::store::OAuthGrant {
        token_url: "https://idp.example/token".into(),
        client_id: client_id.into(),
        sealed_tokens: vec![1, 2, 3],
        access_expires_at: 100,
        sealed_password: vec![4, 5, 6],
        authorized_at: 50,
        refreshed_at: None,
        refreshes: 0,
        refused: None,
    }
}

/// A schema 3 state dir (the previous release): its OpenPGP key, peers and OAuth2 grant kept
/// under the lower-cased login, as that release wrote them (the tables' formats are unchanged).
fn schema3_state_dir() -> (tempfile::TempDir, coi_proxy::openpgp::fingerprint::Fingerprint) {
    use coi_proxy::openpgp::identity::Identity;
    use coi_proxy::seal::SealKey;
    let dir = tempfile::tempdir().unwrap();
    let seal = SealKey::load_or_create(&dir.path().join("seal.key")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let identity = Identity::with_seal(store.clone(), seal);
    // The previous release lower-cased every login before it reached the store.
    let fingerprint = identity.account_key_blocking("dave@example.net").unwrap().fingerprint().clone();
    store.put_peers("dave@example.net", vec![("erin@example.com".into(), b"peer".to_vec())]).wait().unwrap().unwrap();
    store.oauth_grant_save("dave@example.net", &grant("old")).wait().unwrap();
    store.set_schema_version(3).wait().unwrap();
    drop((identity, store));
    (dir, fingerprint)
}

/// Schema 4: a schema 3 state dir's OpenPGP key and OAuth2 grant still work. A login typed as
/// the previous release stored it finds them unchanged; a login with capitals (the account key
/// on a case-sensitive provider) reads the grant until it proves itself, then claims both; from
/// then on two logins differing only in case never share a key or a grant.
#[test]
fn a_schema3_state_dirs_key_and_grant_still_work() {
    use coi_proxy::openpgp::identity::Identity;
    use coi_proxy::seal::SealKey;
    // The login as stored: nothing moves.
    let (dir, fingerprint) = schema3_state_dir();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let identity = Identity::with_seal(store.clone(), SealKey::load(&dir.path().join("seal.key")).unwrap());
    assert_eq!(identity.account_key_blocking("dave@example.net").unwrap().fingerprint(), &fingerprint);
    assert_eq!(store.oauth_grant("dave@example.net").unwrap(), Some(grant("old")));
    assert_eq!(store.peer("dave@example.net", "erin@example.com").unwrap().as_deref(), Some(&b"peer"[..]));
    drop((identity, store));

    // DAVE@example.net, the same user on a provider that ignores case but configured
    // case-sensitive: the grant is read before the login is proven, and moves at the claim.
    let (dir, fingerprint) = schema3_state_dir();
    let store = Store::open(dir.path()).unwrap();
    // The daemon's start unseals every stored key: that claims nothing.
    let preloaded = Identity::with_seal(store.clone(), SealKey::load(&dir.path().join("seal.key")).unwrap());
    assert_eq!(preloaded.preload().unwrap(), 1);
    drop(preloaded);
    assert_eq!(store.oauth_grant("DAVE@example.net").unwrap(), Some(grant("old")), "read until claimed");
    assert!(store.has_account_key("DAVE@example.net").unwrap(), "its worker takes part in the gateway");
    assert!(!store.has_account_key("erin@example.net").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(store.claim_legacy_state("DAVE@example.net"));
    assert_eq!(store.oauth_grant("DAVE@example.net").unwrap(), Some(grant("old")));
    assert_eq!(store.oauth_grant("dave@example.net").unwrap(), None, "moved, not copied");
    assert!(!store.has_account_key("dave@example.net").unwrap(), "claimed: nothing is dave's now");
    assert_eq!(store.peer("DAVE@example.net", "erin@example.com").unwrap().as_deref(), Some(&b"peer"[..]));
    let identity = Identity::with_seal(store.clone(), SealKey::load(&dir.path().join("seal.key")).unwrap());
    assert_eq!(identity.account_key_blocking("DAVE@example.net").unwrap().fingerprint(), &fingerprint);
    // dave@example.net, another user there: a key and a grant of its own, never DAVE's.
    let other = identity.account_key_blocking("dave@example.net").unwrap();
    assert_ne!(other.fingerprint(), &fingerprint);
    store.oauth_grant_save("dave@example.net", &grant("other")).wait().unwrap();
    assert_eq!(store.oauth_grant("DAVE@example.net").unwrap(), Some(grant("old")));
    drop((identity, store));
    // After a restart: still apart, nothing claimed twice.
    let store = Store::open(dir.path()).unwrap();
    rt.block_on(store.claim_legacy_state("dave@example.net"));
    let identity = Identity::with_seal(store.clone(), SealKey::load(&dir.path().join("seal.key")).unwrap());
    assert_eq!(identity.account_key_blocking("DAVE@example.net").unwrap().fingerprint(), &fingerprint);
    assert_eq!(identity.account_key_blocking("dave@example.net").unwrap().fingerprint(), other.fingerprint());
    assert_eq!(store.oauth_grant("dave@example.net").unwrap(), Some(grant("other")));

    // The OpenPGP wing claims on its first use of an account (a worker's account that never
    // logs in through a session): the capitals' key is the old one, moved.
    let (dir, fingerprint) = schema3_state_dir();
    let store = Store::open(dir.path()).unwrap();
    let identity = Identity::with_seal(store.clone(), SealKey::load(&dir.path().join("seal.key")).unwrap());
    assert_eq!(identity.account_key_blocking("Dave@example.net").unwrap().fingerprint(), &fingerprint);
    assert_eq!(store.account_key("dave@example.net").unwrap(), None, "moved");
    assert_eq!(store.oauth_grant("Dave@example.net").unwrap(), Some(grant("old")));
}
