//! `[cluster]` (issue 21) with real parts: an etcd (tests/support/etcd.rs), a Dovecot without
//! METADATA (so the COI settings and push subscriptions live in the proxy, hence in etcd), a
//! push service on loopback, and two coi-proxy instances that share one seal key. A setting
//! made through one instance is in force through the other; chat mail is moved exactly once and
//! pushed exactly once per message, across a kill -9 of the account's owner (the failover time
//! is measured and printed); the killed instance rejoins; with etcd unreachable sessions go on
//! and workers stop until the lease is back. Delta Chat device tokens, the OpenPGP identity and
//! OAuth2 grants are cluster-wide too (a token set through one instance is pushed by the other
//! after the first is killed; one key through both; a grant made through one signs in through
//! the other), none of their secrets in etcd in clear; etcd over TLS with a client certificate;
//! `check` probes etcd.

#[path = "support/notifier.rs"]
#[allow(dead_code)]
mod notifier;
#[path = "support/push_endpoint.rs"]
#[allow(dead_code)]
mod push_endpoint;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use push_endpoint::{Device, PushEndpoint, Received};
use support::etcd::Etcd;
use support::haproxy::Haproxy;
use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::Proxy;

const SUBS: &str = "/private/vendor/vendor.dovecot/webpush/subscriptions";
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
/// Short, so that a failover is quick to see; the bound checked is this plus a margin.
const LEASE_SECS: u64 = 4;
const MARGIN: Duration = Duration::from_secs(3);

/// An instance's configuration: both accounts work without a client (password_command);
/// behind HAProxy (`proxied`) every listener wants the PROXY header.
fn instance(p: &Provider, etcd: &Etcd, node: &str, state: &Path, proxied: bool) -> Proxy {
    let accounts = format!(
        "[[account]]\nlogin = \"{ALICE}\"\npassword_command = \"printf secret\"\n\
         [[account]]\nlogin = \"{BOB}\"\npassword_command = \"printf secret\"\n"
    );
    instance_with(p, etcd, node, state, proxied, &accounts)
}

/// An instance with `extra` configuration after its `[cluster]` (etcd's TLS keys included).
fn instance_with(p: &Provider, etcd: &Etcd, node: &str, state: &Path, proxied: bool, extra: &str) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", p.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", p.smtp_port))
        .state_dir(state)
        .listen(if proxied { "proxy_protocol = true" } else { "" })
        .extra(&format!(
            "[push]\nprivate_endpoints = true\n\
             [cluster]\netcd = [\"{}\"]\nnode = \"{node}\"\nlease_secs = {LEASE_SECS}\n{}{extra}",
            etcd.url(),
            etcd.tls_config(),
        ))
        .start()
}

/// A state directory holding `seal.key` (every instance of a cluster needs the same seal key).
fn state_with_key(key: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("coi-cluster-state.").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("seal.key");
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

/// Two instances, "a" then "b", with one seal key.
struct Two {
    a: Proxy,
    b: Proxy,
    _states: (tempfile::TempDir, tempfile::TempDir),
}

fn two(p: &Provider, etcd: &Etcd, proxied: bool) -> Two {
    let states = two_states();
    let a = instance(p, etcd, "a", states.0.path(), proxied);
    let b = instance(p, etcd, "b", states.1.path(), proxied);
    Two { a, b, _states: states }
}

/// Two state directories holding one seal key.
fn two_states() -> (tempfile::TempDir, tempfile::TempDir) {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key)).unwrap();
    // The seal key file's format (src/seal.rs): a header line and the key in base64.
    use base64::Engine;
    let file = format!("coi-proxy seal key v1\n{}\n", base64::engine::general_purpose::STANDARD.encode(key));
    (state_with_key(file.as_bytes()), state_with_key(file.as_bytes()))
}

/// `coi-proxy cluster status` with `proxy`'s configuration: (exit ok, stdout + stderr).
fn status(proxy: &Proxy) -> (bool, String) {
    cli(proxy, &["cluster", "status"])
}

/// Members, and each account's owner, from `cluster status`.
fn ownership(proxy: &Proxy) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let (ok, text) = status(proxy);
    assert!(ok, "cluster status failed: {text}");
    let (mut members, mut owners, mut node) = (BTreeSet::new(), BTreeMap::new(), String::new());
    for line in text.lines().skip(1) {
        if let Some(login) = line.strip_prefix("  ") {
            owners.insert(login.to_string(), node.clone());
        } else if let Some((name, _)) = line.split_once(':')
            && !line.starts_with("unowned")
        {
            node = name.split_whitespace().next().unwrap().to_string();
            members.insert(node.clone());
        }
    }
    (members, owners)
}

/// The instances' log lines about the cluster and the workers, for a failure's message.
fn cluster_logs(nodes: &Two) -> String {
    let lines = |p: &Proxy| -> String {
        let keep = |l: &&str| (l.contains("cluster") || l.contains("worker")) && !l.contains("tower::");
        p.log().lines().filter(keep).collect::<Vec<_>>().join("\n")
    };
    format!("--- a:\n{}\n--- b:\n{}", lines(&nodes.a), lines(&nodes.b))
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn login(port: u16, user: &str) -> ImapClient {
    let mut c = ImapClient::connect(port);
    c.login(user, "secret");
    c
}

/// Alice's session through HAProxy, and the server (instance) HAProxy sent it to.
fn through(haproxy: &Haproxy) -> (ImapClient, String) {
    let before = haproxy.stats();
    let c = login(haproxy.imap_port, ALICE);
    let after = haproxy.stats();
    let server = after
        .iter()
        .filter(|s| s.backend == "be_imap")
        .find(|s| before.iter().any(|b| b.backend == s.backend && b.server == s.server && b.sessions < s.sessions))
        .map(|s| s.server.clone())
        .expect("HAProxy counted the session");
    (c, server)
}

fn count(c: &mut ImapClient, mailbox: &str) -> usize {
    let status = c.expect_ok(&format!("s STATUS {mailbox} (MESSAGES)"));
    let line = status.iter().find(|l| l.starts_with("* STATUS")).expect("STATUS response");
    line.split("MESSAGES ").nth(1).unwrap().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap()
}

fn chat_message(n: usize) -> Vec<u8> {
    format!(
        "From: carol@example.org\r\nTo: {ALICE}\r\nChat-Version: 1.0\r\nMessage-ID: <c{n}@example.org>\r\n\
         Date: Sat, 5 Dec 2026 13:48:13 +0000\r\nSubject: chat {n}\r\n\r\nhello {n}\r\n"
    )
    .into_bytes()
}

/// The Message-IDs in `mailbox`, as seen directly at the provider.
fn message_ids(c: &mut ImapClient, mailbox: &str) -> Vec<String> {
    c.expect_ok(&format!("x EXAMINE {mailbox}"));
    if count(c, mailbox) == 0 {
        return Vec::new();
    }
    let r = c.expect_ok("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])");
    r.iter().filter_map(|l| l.split('<').nth(1).map(|s| s.split('>').next().unwrap().to_string())).collect()
}

/// `(entry, value)` of a GETMETADATA answer with quoted or literal values, flattened.
fn metadata_text(c: &mut ImapClient, entries: &str) -> String {
    c.expect_ok(&format!("g GETMETADATA \"\" ({entries})")).concat()
}

/// Subscribes through `c`, takes the validation push, confirms it through `confirm`.
fn subscribe_validated(c: &mut ImapClient, confirm: &mut ImapClient, ep: &PushEndpoint, dev: &Device, path: &str) {
    let json = dev.subscription(&ep.url(path), "all");
    let r = c.command(&format!("s SETMETADATA \"\" ({SUBS}/device-0001 {{{}}}\r\n{json})", json.len()));
    assert!(r.last().unwrap().starts_with("s OK"), "{r:?}");
    let push = ep.wait(path, 1, Duration::from_secs(10)).pop().unwrap();
    let token = dev.decrypt(&push)["validation"].as_str().expect("a validation push").to_string();
    // The other instance knows the subscription (replicated through etcd) and validates it.
    wait_until("the subscription replicated", Duration::from_secs(10), || {
        metadata_text(confirm, &format!("{SUBS}/device-0001")).contains("device-0001")
    });
    confirm.expect_ok(&format!("t SETMETADATA \"\" ({SUBS}/device-0001/validate \"{token}\")"));
}

/// The Message-IDs of the message pushes received (the validation push left out).
fn pushed_ids(dev: &Device, pushes: &[Received]) -> Vec<String> {
    pushes.iter().filter_map(|p| dev.decrypt(p)["msg-id"].as_str().map(str::to_string)).collect()
}

#[test]
fn settings_moves_pushes_failover_and_rejoin() {
    let p = Provider::start();
    let etcd = Etcd::start();
    let mut nodes = two(&p, &etcd, true);
    // Clients reach the instances only through HAProxy (send-proxy-v2, round robin).
    let haproxy =
        Haproxy::start(&[("a", nodes.a.imap_port, nodes.a.smtp_port), ("b", nodes.b.imap_port, nodes.b.smtp_port)]);
    for server in ["a", "b"] {
        haproxy.wait_up("be_imap", server, Duration::from_secs(20));
    }
    // Both members; the two accounts spread over them.
    let started = Instant::now();
    loop {
        let (members, owners) = ownership(&nodes.a);
        if members.len() == 2 && owners.len() == 2 && owners.values().collect::<BTreeSet<_>>().len() == 2 {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            panic!("not both members with one account each: {members:?} {owners:?}\n{}", cluster_logs(&nodes));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{}", status(&nodes.a).1);

    // Two sessions through HAProxy, one on each instance; a COI setting made through one is in
    // force through the other.
    let (mut via_a, first) = through(&haproxy);
    let (mut via_b, second) = through(&haproxy);
    assert_ne!(first, second, "round robin: one session on each instance");
    via_a.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    wait_until("the setting through b", Duration::from_secs(10), || {
        let text = metadata_text(&mut via_b, &format!("{ENABLED} {FILTER}"));
        text.contains("yes") && text.contains("active")
    });
    // The provider has no METADATA: the setting lives in the proxies (hence etcd) only.
    let mut direct = login(p.imap_port, ALICE);
    let r = direct.command(&format!("m GETMETADATA \"\" ({ENABLED})"));
    assert!(!r.last().unwrap().starts_with("m OK") || !r.concat().contains("yes"), "{r:?}");

    // A push subscription made through b, validated through a.
    let ep = PushEndpoint::start();
    let dev = Device::new();
    subscribe_validated(&mut via_b, &mut via_a, &ep, &dev, "/p");
    drop((via_a, via_b));

    // 15 chat mails, moved by alice's owner, each pushed once.
    for n in 1..=15 {
        p.deliver("carol@example.org", ALICE, &chat_message(n));
    }
    let delivered = Instant::now();
    loop {
        let moved = count(&mut direct, "COI.Chats");
        if moved == 15 {
            break;
        }
        let late = delivered.elapsed() > Duration::from_secs(60);
        assert!(!late, "{moved} of 15 chat mails in Chats after 60 s\n{}", cluster_logs(&nodes));
        std::thread::sleep(Duration::from_millis(50));
    }
    ep.wait("/p", 16, Duration::from_secs(30));

    // kill -9 of alice's owner; 15 more mails come while the other takes over.
    let (_, owners) = ownership(&nodes.a);
    let owner = owners[ALICE].clone();
    let (victim, survivor) = if owner == "a" { (&mut nodes.a, &nodes.b) } else { (&mut nodes.b, &nodes.a) };
    let killed = Instant::now();
    support::proxy::signal(victim.pid(), 9);
    for n in 16..=30 {
        p.deliver("carol@example.org", ALICE, &chat_message(n));
    }
    wait_until("the survivor owns alice", Duration::from_secs(LEASE_SECS) + Duration::from_secs(20), || {
        let (members, owners) = ownership(survivor);
        members.len() == 1 && owners.get(ALICE).is_some_and(|o| *o != owner)
    });
    let takeover = killed.elapsed();
    wait_until("30 chat mails in Chats", Duration::from_secs(60), || count(&mut direct, "COI.Chats") == 30);
    eprintln!(
        "failover (lease_secs = {LEASE_SECS}): kill -9 -> the other instance owns the account after {:.1} s; \
         all 30 moved {:.1} s after the kill",
        takeover.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
    );
    assert!(takeover <= Duration::from_secs(LEASE_SECS) + MARGIN, "takeover took {takeover:?}");

    // Each chat mail moved exactly once: 30 distinct messages in Chats, none left in INBOX.
    let ids = message_ids(&mut direct, "COI.Chats");
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (30, 30), "{ids:?}");
    assert_eq!(count(&mut direct, "INBOX"), 0);

    // Exactly one push per message, before and after the failover (a little longer for doubles).
    let pushes = ep.wait("/p", 31, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let pushes = if ep.received("/p").len() > pushes.len() { ep.received("/p") } else { pushes };
    let mut ids = pushed_ids(&dev, &pushes);
    ids.sort();
    let expected: Vec<String> = {
        let mut e: Vec<String> = (1..=30).map(|n| format!("<c{n}@example.org>")).collect();
        e.sort();
        e
    };
    assert_eq!(ids, expected, "one push per message");

    // The killed instance restarts and rejoins.
    victim.restart();
    wait_until("two members again", Duration::from_secs(20), || ownership(survivor).0.len() == 2);
    let (members, _) = ownership(victim);
    assert_eq!(members, BTreeSet::from(["a".to_string(), "b".to_string()]));
}

#[test]
fn etcd_unreachable_sessions_go_on_workers_stop_until_the_lease_is_back() {
    let p = Provider::start();
    let etcd = Etcd::start();
    let nodes = two(&p, &etcd, false);
    wait_until("both members", Duration::from_secs(20), || ownership(&nodes.a).1.len() == 2);
    let mut c = login(nodes.a.imap_port, ALICE);
    c.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    let mut direct = login(p.imap_port, ALICE);
    p.deliver("carol@example.org", ALICE, &chat_message(1));
    wait_until("the first chat mail moved", Duration::from_secs(30), || count(&mut direct, "COI.Chats") == 1);

    etcd.pause();
    // Both instances give their accounts up once no keep-alive is acknowledged for a TTL.
    for proxy in [&nodes.a, &nodes.b] {
        proxy.wait_for_log("no keep-alive acknowledged", Duration::from_secs(LEASE_SECS) + MARGIN + MARGIN);
    }
    // Sessions keep working on both: login, the settings (the store's copy), a mailbox.
    for proxy in [&nodes.a, &nodes.b] {
        let mut s = login(proxy.imap_port, ALICE);
        assert!(metadata_text(&mut s, ENABLED).contains("yes"));
        s.expect_ok("x SELECT INBOX");
        // A change cannot reach etcd: refused, not kept on one instance only. (Not a COI
        // setting: etcd may still apply it late, see below, and the filter must stay.)
        let r = s.command("n SETMETADATA \"\" (/private/comment \"during the outage\")");
        assert!(r.last().unwrap().starts_with("n NO [UNAVAILABLE]"), "{r:?}");
    }
    // No worker runs: a chat mail stays in INBOX.
    p.deliver("carol@example.org", ALICE, &chat_message(2));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&mut direct, "COI.Chats"), 1, "no worker moves while the lease is gone");

    etcd.resume();
    let started = Instant::now();
    while count(&mut direct, "COI.Chats") != 2 {
        if started.elapsed() > Duration::from_secs(30) {
            panic!("the second chat mail was not moved within 30 s\n{}", cluster_logs(&nodes));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = started.elapsed();
    eprintln!("etcd back: the waiting chat mail moved after {:.1} s", back.as_secs_f64());
    let rejoined = wait_until("both instances rejoined and own the accounts", Duration::from_secs(20), || {
        let (members, owners) = ownership(&nodes.a);
        (members.len(), owners.len()) == (2, 2)
    });
    eprintln!("etcd back: both instances members again after {:.1} s more", rejoined.as_secs_f64());
    // A refused change may still reach etcd late (a request etcd had received when it stopped
    // answering: a timeout is ambiguous); either way both instances agree once it is back.
    let (mut on_a, mut on_b) = (login(nodes.a.imap_port, ALICE), login(nodes.b.imap_port, ALICE));
    wait_until("both instances agree on the entry", Duration::from_secs(10), || {
        let (a, b) = (metadata_text(&mut on_a, "/private/comment"), metadata_text(&mut on_b, "/private/comment"));
        a.contains("during the outage") == b.contains("during the outage")
    });
}

#[test]
fn status_without_etcd_says_so() {
    let p = Provider::start();
    let etcd = Etcd::start();
    let nodes = two(&p, &etcd, false);
    drop(etcd);
    let (ok, text) = status(&nodes.a);
    assert!(!ok, "{text}");
    assert!(text.contains("cannot read the cluster from etcd") && text.contains("http://127.0.0.1:"), "{text}");
}

/// `coi-proxy` with `proxy`'s configuration and `args`: (exit ok, stdout + stderr).
fn cli(proxy: &Proxy, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(&proxy.config_path)
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The fingerprint of the account key `key export` prints through `proxy`'s daemon.
fn exported_fingerprint(proxy: &Proxy, login: &str) -> String {
    let (ok, text) = cli(proxy, &["key", "export", login]);
    assert!(ok, "key export through {}: {text}", proxy.config_path.display());
    coi_proxy::openpgp::key::PublicKey::from_armored(text.as_bytes())
        .expect("an armored public key")
        .fingerprint()
        .hex()
}

/// The device flow of `coi-proxy oauth authorize` through `proxy`'s daemon, the test as the user.
fn authorize(proxy: &Proxy, idp: &support::idp::Idp, login: &str, password: &str) -> String {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(&proxy.config_path)
        .args(["oauth", "authorize", login, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let code = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "oauth authorize ended early: {seen}");
        seen.push_str(&line);
        if let Some(rest) = line.split("enter the code ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    idp.approve(&code, login);
    let status = child.wait().unwrap();
    stdout.read_to_string(&mut seen).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "oauth authorize failed: {seen}{err}");
    seen
}

/// A device token set through one instance gets its push from the other after the first is
/// killed; the account's OpenPGP key, made at once through both, is one key; an OAuth2 grant
/// made through one signs in through the other. etcd holds none of these secrets in clear and
/// no log shows a token.
#[test]
fn device_tokens_keys_and_grants_are_the_clusters() {
    const LOCAL: &str = "local-pw-Geheim-42";
    const TOKEN: &str = "openpgp:wcDMA1Jx0zPqd2tbAQv+cluster+phone/aGVsbG8gd29ybGQ=";
    let idp = support::idp::Idp::start();
    let p = Provider::start_with(support::provider::ProviderOptions {
        oauth2_introspection_url: Some(idp.introspection_url()),
        ..Default::default()
    });
    let etcd = Etcd::start();
    let notifier = notifier::Notifier::start();
    let states = two_states();
    let extra = format!(
        "[deltachat]\nnotifier_url = \"{}\"\n[[account]]\nlogin = \"{ALICE}\"\n{}",
        notifier.url(),
        idp.account_config()
    );
    let mut a = instance_with(&p, &etcd, "a", states.0.path(), false, &extra);
    let b = instance_with(&p, &etcd, "b", states.1.path(), false, &extra);
    wait_until("both members", Duration::from_secs(20), || ownership(&a).0.len() == 2);

    // The grant made through a: alice signs in through b with her local password.
    authorize(&a, &idp, ALICE, LOCAL);
    let mut via_b = ImapClient::connect(b.imap_port);
    wait_until("the grant replicated to b", Duration::from_secs(10), || {
        let mut c = ImapClient::connect(b.imap_port);
        c.command(&format!("a LOGIN \"{ALICE}\" \"{LOCAL}\"")).pop().unwrap().starts_with("a OK")
    });
    via_b.login(ALICE, LOCAL);
    via_b.expect_ok("s SELECT INBOX");

    // One key, however many instances make it at once.
    let (fa, fb) = std::thread::scope(|s| {
        let fa = s.spawn(|| exported_fingerprint(&a, ALICE));
        let fb = s.spawn(|| exported_fingerprint(&b, ALICE));
        (fa.join().unwrap(), fb.join().unwrap())
    });
    assert_eq!(fa, fb, "the account's key is the same through a and b");
    assert_eq!(exported_fingerprint(&b, ALICE), fa);

    // A device token set through a; a is killed; b notifies the device of new mail.
    let mut via_a = ImapClient::connect(a.imap_port);
    via_a.login(ALICE, LOCAL);
    via_a.expect_ok(&format!("t SETMETADATA INBOX (/private/devicetoken \"{TOKEN}\")"));
    drop(via_a);
    let dump = etcd.ctl(&["get", "--prefix", "/coi-proxy/"]);
    assert!(dump.contains("/dctoken/") && dump.contains("/oauth") && dump.contains("/pgp/key"), "{dump}");
    assert!(!dump.contains(&TOKEN[20..40]), "a device token in etcd in clear");
    assert!(!dump.contains("PRIVATE KEY") && !dump.contains(LOCAL));
    for token in idp.issued() {
        assert!(!dump.contains(&token), "an OAuth2 token in etcd in clear");
    }
    support::proxy::signal(a.pid(), 9);
    wait_until("b owns alice", Duration::from_secs(LEASE_SECS) + MARGIN + MARGIN, || {
        let (members, owners) = ownership(&b);
        members.len() == 1 && owners.get(ALICE).is_some_and(|o| o == "b")
    });
    let before = notifier.posts_of(TOKEN).len();
    p.deliver("carol@example.org", ALICE, &chat_message(1));
    let started = Instant::now();
    while notifier.posts_of(TOKEN).len() == before {
        assert!(started.elapsed() < Duration::from_secs(30), "b never notified the device:\n{}", b.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for log in [a.log(), b.log()] {
        assert!(!log.contains(&TOKEN[20..40]), "a device token in a log");
    }
    // b signs alice in with the grant made through a (its worker needs no client).
    assert_eq!(exported_fingerprint(&b, ALICE), fa);
    a.restart();
    wait_until("a rejoined", Duration::from_secs(20), || ownership(&b).0.len() == 2);
    assert_eq!(exported_fingerprint(&a, ALICE), fa, "the restarted instance has the same key");

    // SecureJoin state is the cluster's too: an invite issued through a is in b's store (read
    // once b has stopped: the store is one process's).
    let (ok, text) = cli(&a, &["invite", ALICE]);
    assert!(ok, "{text}");
    // A later change through a seen through b: b's watch, which applies changes in etcd's
    // order, has applied the invite.
    let mut via_a = ImapClient::connect(a.imap_port);
    via_a.login(ALICE, LOCAL);
    via_a.expect_ok("c SETMETADATA \"\" (/private/comment \"after the invite\")");
    wait_until("the later change through b", Duration::from_secs(10), || {
        metadata_text(&mut via_b, "/private/comment").contains("after the invite")
    });
    drop(via_b);
    let mut b = b;
    let store_b = b.state.clone();
    b.stop();
    let store = coi_proxy::store::Store::open(&store_b).unwrap();
    assert_eq!(store.invites(ALICE).unwrap().len(), 1, "the invite issued through a");
}

/// etcd over TLS with a client certificate: the instances share state through it, `cluster
/// status` and `check` reach it; a wrong CA and a stopped etcd are told by `check` plainly.
#[test]
fn etcd_over_tls_and_check_probes_it() {
    let p = Provider::start();
    let etcd = Etcd::start_tls();
    let nodes = two(&p, &etcd, false);
    wait_until("both members", Duration::from_secs(20), || ownership(&nodes.a).1.len() == 2);
    let (mut on_a, mut on_b) = (login(nodes.a.imap_port, ALICE), login(nodes.b.imap_port, ALICE));
    on_a.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    wait_until("the setting through b", Duration::from_secs(10), || {
        metadata_text(&mut on_b, &format!("{ENABLED} {FILTER}")).contains("active")
    });
    let (_, text) = cli(&nodes.a, &["check"]);
    assert!(text.contains("cluster: etcd reachable (TLS), lease grant works; node a"), "{text}");

    // The same configuration with a CA that did not sign etcd's certificate.
    let config = std::fs::read_to_string(&nodes.a.config_path).unwrap();
    let pki = etcd.pki.as_ref().unwrap();
    let wrong = config.replace(&pki.ca.display().to_string(), &pki.other_ca.display().to_string());
    let path = nodes.a.config_path.with_file_name("wrong-ca.toml");
    std::fs::write(&path, wrong).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coi-proxy")).arg("--config").arg(&path).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("cluster: etcd FAILED at {}", etcd.url())), "{text}");
    assert!(!text.contains("BEGIN"), "no key material in the report: {text}");

    drop(etcd);
    let (ok, text) = cli(&nodes.a, &["check"]);
    assert!(!ok && text.contains("cluster: etcd FAILED at https://127.0.0.1:"), "{text}");
}
