//! The COI WebPush extension against a real Dovecot and a push service on loopback: capability,
//! VAPID key, subscribe / validate / list / unsubscribe, pushes (decrypted and checked), MDNs,
//! limits, expiry, a 410 from the push service, active mode, and a restart with no client.

#[path = "support/push_endpoint.rs"]
mod push_endpoint;
mod support;

use std::time::{Duration, Instant};

use push_endpoint::{Device, PushEndpoint, Received, check_vapid};
use serde_json::Value;
use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::Proxy;

const VAPID: &str = "/private/vendor/vendor.dovecot/webpush/vapid";
const SUBS: &str = "/private/vendor/vendor.dovecot/webpush/subscriptions";
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";
const ALICE: &str = "alice@example.org";

/// A proxy in front of `p` that may push to the test's endpoint on loopback (a push server
/// on the proxy's own network needs `private_endpoints`).
fn push_proxy(p: &Provider) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", p.imap_port))
        .extra("[push]\nprivate_endpoints = true")
        .start()
}

fn login(proxy: &Proxy) -> ImapClient {
    let mut c = proxy.connect();
    c.login(ALICE, "secret");
    c
}

fn direct(p: &Provider) -> ImapClient {
    let mut c = ImapClient::connect(p.imap_port);
    c.login(ALICE, "secret");
    c
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// `(entry, value)` pairs of a `* METADATA "" (…)` response with literal values.
fn entries(resp: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(start) = resp.find(" (") else { return out };
    let mut rest = &resp[start + 2..];
    while let Some(brace) = rest.find(" {") {
        let name = rest[..brace].trim().to_string();
        let close = rest[brace..].find("}\r\n").unwrap() + brace;
        let len: usize = rest[brace + 2..close].parse().unwrap();
        let value = &rest.as_bytes()[close + 3..close + 3 + len];
        out.push((name, String::from_utf8_lossy(value).into_owned()));
        rest = &rest[close + 3 + len..];
    }
    out
}

fn vapid_pem(c: &mut ImapClient) -> String {
    let r = c.expect_ok(&format!("v GETMETADATA \"\" {VAPID}"));
    let e = entries(&r[0]);
    assert_eq!(e.len(), 1, "{r:?}");
    e[0].1.clone()
}

/// The subscriptions listed with DEPTH 1, by id.
fn listing(c: &mut ImapClient) -> Vec<(String, Value)> {
    let r = c.expect_ok(&format!("l GETMETADATA (DEPTH 1) \"\" ({SUBS})"));
    let Some(first) = r.iter().find(|l| l.starts_with("* METADATA")) else { return Vec::new() };
    entries(first)
        .into_iter()
        .map(|(name, json)| (name.rsplit('/').next().unwrap().to_string(), serde_json::from_str(&json).unwrap()))
        .collect()
}

fn subscribe(c: &mut ImapClient, id: &str, json: &str) -> Vec<String> {
    c.command(&format!("s SETMETADATA \"\" ({SUBS}/{id} {{{}}}\r\n{json})", json.len()))
}

/// Subscribes, takes the validation push, and confirms it; returns the validation push.
fn subscribe_validated(
    c: &mut ImapClient,
    ep: &PushEndpoint,
    dev: &Device,
    id: &str,
    path: &str,
    msgtype: &str,
) -> Received {
    let before = ep.received(path).len();
    let r = subscribe(c, id, &dev.subscription(&ep.url(path), msgtype));
    assert!(last(&r).starts_with("s OK"), "{r:?}");
    let push = ep.wait(path, before + 1, Duration::from_secs(5)).pop().unwrap();
    let token = dev.decrypt(&push)["validation"].as_str().expect("a validation push").to_string();
    c.expect_ok(&format!("t SETMETADATA \"\" ({SUBS}/{id}/validate \"{token}\")"));
    push
}

fn uidvalidity(c: &mut ImapClient, mailbox: &str) -> u64 {
    let r = c.expect_ok(&format!("u STATUS {mailbox} (UIDVALIDITY)"));
    r[0].split("UIDVALIDITY ").nth(1).unwrap().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap()
}

fn message(id: &str, extra: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Bob Example <bob@example.org>\r\nTo: {ALICE}\r\nDate: Sat, 17 Aug 2019 13:48:13 +0200\r\n\
Message-ID: <{id}>\r\n{extra}Subject: {subject}\r\n\r\n{body}"
    )
    .into_bytes()
}

/// A read receipt as Delta Chat (and RFC 8098) makes it.
fn mdn(id: &str) -> Vec<u8> {
    format!(
        "From: bob@example.org\r\nTo: {ALICE}\r\nMessage-ID: <{id}>\r\nSubject: Receipt Notification\r\n\
Chat-Version: 1.0\r\nAuto-Submitted: auto-replied\r\n\
Content-Type: multipart/report; report-type=disposition-notification; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\nThis is a receipt notification.\r\n\
--B\r\nContent-Type: message/disposition-notification\r\n\r\nOriginal-Message-ID: <x@y>\r\n\
Disposition: manual-action/MDN-sent-automatically; displayed\r\n--B--\r\n"
    )
    .into_bytes()
}

#[test]
fn capability_vapid_key_and_refusals() {
    let p = Provider::start();
    let proxy = push_proxy(&p);
    let mut c = proxy.connect();
    assert!(!c.greeting.contains("WEBPUSH"), "{}", c.greeting);
    let caps = c.login(ALICE, "secret");
    assert!(last(&caps).contains(" WEBPUSH"), "{caps:?}");
    assert!(c.expect_ok("c CAPABILITY")[0].contains(" WEBPUSH"));
    let pem = vapid_pem(&mut c);
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----") && pem.trim_end().ends_with("-----END PUBLIC KEY-----"),
        "{pem}"
    );
    assert_eq!(vapid_pem(&mut login(&proxy)), pem, "one key per installation");
    let r = c.command(&format!("x SETMETADATA \"\" ({VAPID} x)"));
    assert_eq!(r, vec![format!("x NO [CANNOT] unable to set read-only entry {VAPID}\r\n")]);
    let ep = PushEndpoint::start();
    let good = Device::new().subscription(&ep.url("/p"), "all");
    for (id, json, expect) in [
        ("short", good.as_str(), "s NO [CANNOT] invalid subscription: subscription id"),
        ("abcdefghij", "{\"client\":\"x\"}", "s NO [CANNOT] invalid subscription: subscription needs resource"),
        ("abcdefghij", &good.replace("\"all\"", "\"some\""), "s NO [CANNOT] invalid subscription: msgtype"),
        (
            "abcdefghij",
            &good.replace("http://127.0.0.1", "http://192.0.2.1"),
            "s NO [CANNOT] invalid subscription: resource.endpoint",
        ),
    ] {
        let r = subscribe(&mut c, id, json);
        assert!(last(&r).starts_with(expect), "{id} {json}: {r:?}");
    }
    assert!(ep.received("/p").is_empty(), "nothing pushed for refused subscriptions");
    // A push service that refuses the validation push: the subscription is refused too.
    ep.set_status("/refuses", 400);
    let r = subscribe(&mut c, "abcdefghij", &Device::new().subscription(&ep.url("/refuses"), "all"));
    assert!(last(&r).starts_with("s NO [UNAVAILABLE]"), "{r:?}");
    assert!(listing(&mut c).is_empty());
}

#[test]
fn subscribe_validate_push_and_unsubscribe() {
    let p = Provider::start();
    let proxy = push_proxy(&p);
    let ep = PushEndpoint::start();
    let dev = Device::new();
    let mut c = login(&proxy);
    let pem = vapid_pem(&mut c);

    let r = subscribe(&mut c, "Device-0001", &dev.subscription(&ep.url("/phone"), "all"));
    assert_eq!(last(&r), "s OK SETMETADATA complete\r\n");
    let validation = wait(&proxy, &ep, "/phone", 1).pop().unwrap();
    assert!(validation.headers.contains_key("webpush-validation"), "{:?}", validation.headers);
    assert!(validation.headers.contains_key("ttl"));
    let claims = check_vapid(&validation, &pem, &ep.origin());
    assert_eq!(claims["sub"], "mailto:postmaster@example.org");
    let token = dev.decrypt(&validation)["validation"].as_str().unwrap().to_string();
    assert!(token.len() >= 32);

    let listed = listing(&mut c);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let (id, sub) = &listed[0];
    assert_eq!(id, "device-0001", "entry names are case-insensitive");
    assert_eq!(sub["validated"], false);
    assert!(sub["created"].as_str().unwrap().ends_with("+00:00"), "{sub}");
    assert_eq!(sub["client"], "coi-proxy test");
    assert_eq!(sub["resource"]["endpoint"], ep.url("/phone"));
    assert!(sub.get("unknown").is_none(), "unknown keys dropped: {sub}");

    let r = c.command(&format!("t SETMETADATA \"\" ({SUBS}/device-0001/validate \"wrong\")"));
    assert_eq!(r, vec!["t NO [CANNOT] invalid validation\r\n"]);
    c.expect_ok(&format!("t SETMETADATA \"\" ({SUBS}/device-0001/validate \"{token}\")"));
    assert_eq!(listing(&mut c)[0].1["validated"], true);

    // A new message: pushed within a second of reaching the provider, with every field.
    let subject = "=?utf-8?b?".to_string() + &base64_utf8(&"ä".repeat(60)) + "?=";
    let sent = Instant::now();
    p.deliver("bob@example.org", ALICE, &message("m1@example.org", "", &subject, "hello push\r\n"));
    let push = wait(&proxy, &ep, "/phone", 2).pop().unwrap();
    let latency = push.at.duration_since(sent);
    eprintln!("delivery -> push received: {latency:?}");
    assert!(latency < Duration::from_secs(1), "push after {latency:?}");
    check_vapid(&push, &pem, &ep.origin());
    let payload = dev.decrypt(&push);
    let mut d = direct(&p);
    assert_eq!(payload["folder"], "INBOX");
    assert_eq!(payload["uidvalidity"], uidvalidity(&mut d, "INBOX"));
    assert_eq!(payload["uid"], 1);
    assert_eq!(payload["date"], "2019-08-17T11:48:13+00:00");
    assert_eq!(payload["from-email"], "bob@example.org");
    assert_eq!(payload["from-name"], "Bob Example");
    assert_eq!(payload["msg-id"], "<m1@example.org>");
    assert_eq!(payload["content"], "hello push\r\n");
    // 60 two-byte characters cut at 100 bytes, with an ellipsis.
    assert_eq!(payload["subject"], format!("{}…", "ä".repeat(50)), "{payload}");
    assert!(payload.get("content-type").is_none() && payload.get("group-id").is_none(), "{payload}");

    // A read receipt: no push; the mail after it: one.
    p.deliver("bob@example.org", ALICE, &mdn("r1@example.org"));
    p.deliver("bob@example.org", ALICE, &message("m2@example.org", "", "after the receipt", "x\r\n"));
    let pushes = wait(&proxy, &ep, "/phone", 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ep.received("/phone").len(), 3, "the MDN was pushed");
    assert_eq!(dev.decrypt(&pushes[2])["msg-id"], "<m2@example.org>");

    // NIL unsubscribes; nothing more is pushed.
    c.expect_ok(&format!("n SETMETADATA \"\" ({SUBS}/device-0001 NIL)"));
    assert!(listing(&mut c).is_empty());
    p.deliver("bob@example.org", ALICE, &message("m3@example.org", "", "unheard", "x\r\n"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ep.received("/phone").len(), 3, "pushed after unsubscribing");
}

/// Waits for the `n`th push to `path`; on timeout, fails with the proxy's log.
fn wait(proxy: &Proxy, ep: &PushEndpoint, path: &str, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = ep.received(path);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{path}: {} of {n} pushes; proxy log:\n{}", got.len(), proxy.log());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn base64_utf8(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn limit_and_expiry_of_unvalidated_subscriptions() {
    let p = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", p.imap_port))
        .extra("[push]\nprivate_endpoints = true\nsubscription_limit = 2\nvalidation_expiry_secs = 2")
        .start();
    let ep = PushEndpoint::start();
    let mut c = login(&proxy);
    let dev = Device::new();
    for id in ["first-0001", "second-002"] {
        assert_eq!(
            last(&subscribe(&mut c, id, &dev.subscription(&ep.url("/x"), "all"))),
            "s OK SETMETADATA complete\r\n"
        );
    }
    let r = subscribe(&mut c, "third-0003", &dev.subscription(&ep.url("/x"), "all"));
    assert_eq!(last(&r), "s NO [CANNOT] Too many subscriptions, delete old ones first\r\n");
    // Replacing one is fine.
    assert!(last(&subscribe(&mut c, "second-002", &dev.subscription(&ep.url("/x"), "chat"))).starts_with("s OK"));
    let pushes = wait(&proxy, &ep, "/x", 3);
    let token = dev.decrypt(&pushes[0])["validation"].as_str().unwrap().to_string();
    assert_eq!(listing(&mut c).len(), 2);
    std::thread::sleep(Duration::from_millis(2200));
    // Too late: refused, and gone from the listing; they no longer count against the limit.
    let r = c.command(&format!("t SETMETADATA \"\" ({SUBS}/first-0001/validate \"{token}\")"));
    assert_eq!(r, vec!["t NO [CANNOT] invalid validation\r\n"]);
    assert!(listing(&mut c).is_empty());
    assert!(last(&subscribe(&mut c, "third-0003", &dev.subscription(&ep.url("/x"), "all"))).starts_with("s OK"));
}

#[test]
fn msgtype_active_mode_and_a_gone_subscription() {
    let p = Provider::start();
    let proxy = push_proxy(&p);
    let ep = PushEndpoint::start();
    let (chat_dev, mail_dev) = (Device::new(), Device::new());
    let mut c = login(&proxy);
    c.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    subscribe_validated(&mut c, &ep, &chat_dev, "chat-00001", "/chat", "chat");
    subscribe_validated(&mut c, &ep, &mail_dev, "mail-00001", "/mail", "mail");

    let sent = Instant::now();
    p.deliver("bob@example.org", ALICE, &message("c1@example.org", "Chat-Version: 1.0\r\n", "chat", "hi\r\n"));
    let push = wait(&proxy, &ep, "/chat", 2).pop().unwrap();
    eprintln!("active mode: delivery -> push received: {:?}", push.at.duration_since(sent));
    let payload = chat_dev.decrypt(&push);
    let mut d = direct(&p);
    assert_eq!(payload["folder"], "COI.Chats", "{payload}");
    assert_eq!(payload["uid"], 1, "its UID in Chats (COPYUID)");
    assert_eq!(payload["uidvalidity"], uidvalidity(&mut d, "COI.Chats"));

    p.deliver("bob@example.org", ALICE, &message("e1@example.org", "", "mail", "hi\r\n"));
    let push = wait(&proxy, &ep, "/mail", 2).pop().unwrap();
    let payload = mail_dev.decrypt(&push);
    assert_eq!((payload["folder"].as_str(), payload["msg-id"].as_str()), (Some("INBOX"), Some("<e1@example.org>")));
    assert_eq!(ep.received("/chat").len(), 2, "mail is not pushed to a chat subscription");
    assert_eq!(ep.received("/mail").len(), 2, "chat is not pushed to a mail subscription");

    // The push service says the mail subscription is gone: the proxy forgets it.
    ep.set_status("/mail", 410);
    p.deliver("bob@example.org", ALICE, &message("e2@example.org", "", "mail", "hi\r\n"));
    wait(&proxy, &ep, "/mail", 3);
    let deadline = Instant::now() + Duration::from_secs(3);
    while listing(&mut c).len() != 1 {
        assert!(Instant::now() < deadline, "the gone subscription is still listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(listing(&mut c)[0].0, "chat-00001");
}

#[test]
fn restart_keeps_key_and_subscription_and_pushes_without_a_client() {
    let p = Provider::start();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", p.imap_port))
        .extra(&format!(
            "[push]\nprivate_endpoints = true\n[[account]]\nlogin = \"{ALICE}\"\npassword_command = \"printf secret\""
        ))
        .start();
    let ep = PushEndpoint::start();
    let dev = Device::new();
    let pem = {
        let mut c = login(&proxy);
        subscribe_validated(&mut c, &ep, &dev, "restart-01", "/r", "all");
        vapid_pem(&mut c)
    };
    let before = proxy.log().len();
    proxy.restart();
    // The worker starts by itself: no client logs in from here on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log()[before..].contains("watching INBOX") {
        assert!(Instant::now() < deadline, "no worker after the restart:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    p.deliver("bob@example.org", ALICE, &message("after@example.org", "", "after the restart", "x\r\n"));
    let push = wait(&proxy, &ep, "/r", 2).pop().unwrap();
    eprintln!("after a restart, no client: delivery -> push received: {:?}", push.at.duration_since(sent));
    check_vapid(&push, &pem, &ep.origin());
    assert_eq!(dev.decrypt(&push)["msg-id"], "<after@example.org>");
    let mut c = login(&proxy);
    assert_eq!(vapid_pem(&mut c), pem, "the VAPID key survived");
    assert_eq!(listing(&mut c)[0].1["validated"], true);
}
