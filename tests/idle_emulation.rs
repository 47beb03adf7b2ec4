//! IDLE for every client: a provider without IDLE (Dovecot with IDLE removed from its
//! capabilities), served by the proxy by polling.

mod support;

use std::time::{Duration, Instant};

use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

fn setup(poll_secs: u64) -> (Provider, Proxy) {
    let provider = Provider::start_with(ProviderOptions { no_idle: true, ..Default::default() });
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .extra(&format!("[coi]\npoll_secs = {poll_secs}"))
        .start();
    (provider, proxy)
}

#[test]
fn idle_is_offered_and_woken_within_the_poll_interval() {
    let (provider, proxy) = setup(2);
    let mut direct = support::imap_client::ImapClient::connect(provider.imap_port);
    let caps = direct.login("alice@example.org", "secret");
    assert!(!caps.last().unwrap().contains(" IDLE"), "the provider must lack IDLE: {caps:?}");
    let mut c = proxy.connect();
    let caps = c.login("alice@example.org", "secret");
    assert!(caps.last().unwrap().contains(" IDLE"), "{caps:?}");
    c.expect_ok("s SELECT INBOX");
    c.send_raw(b"i IDLE\r\n");
    assert_eq!(c.read_line(), "+ idling\r\n");
    let sent = Instant::now();
    provider.deliver("bob@example.org", "alice@example.org", b"Subject: poll\r\n\r\nhi\r\n");
    let line = c.line_within(Duration::from_secs(3)).expect("woken within the poll interval + 1 s");
    assert_eq!(line, "* 1 EXISTS\r\n");
    eprintln!("woken after {:?} (poll interval 2 s)", sent.elapsed());
    // More untagged news (RECENT) may follow; DONE ends IDLE with the client's tag.
    c.send_raw(b"DONE\r\n");
    loop {
        let line = c.read_line();
        if line.starts_with("i ") {
            assert_eq!(line, "i OK Idle completed.\r\n");
            break;
        }
        assert!(line.starts_with("* "), "{line}");
    }
    let f = c.expect_ok("f FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(f[0].contains("poll"), "{f:?}");
    // Anything but DONE during IDLE ends it with BAD, and the session goes on.
    c.send_raw(b"j IDLE\r\n");
    assert_eq!(c.read_line(), "+ idling\r\n");
    c.send_raw(b"k NOOP\r\n");
    assert_eq!(c.read_line(), "j BAD Expected DONE\r\n");
    c.expect_ok("l NOOP");
}

#[test]
fn idle_passes_through_where_the_provider_has_it() {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    c.expect_ok("s SELECT INBOX");
    c.send_raw(b"i IDLE\r\n");
    // Dovecot's own continuation text, not the proxy's.
    assert_eq!(c.read_line(), "+ idling\r\n");
    c.send_raw(b"DONE\r\n");
    let done = c.read_line();
    assert!(done.starts_with("i OK Idle completed (0."), "{done}");
}
