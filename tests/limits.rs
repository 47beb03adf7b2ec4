//! Limits against abuse: sessions in total and per client address, the delay and back-off after
//! failed logins, and a full disk, which must never be acknowledged as stored.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::connect_from;
use support::fake_provider::{FakeProvider, Step, greet_and_login};
use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::Proxy;
use support::smtp_client::{SmtpClient, wait_for_inbox};

/// The first line the proxy sends, and whether it then closes the connection.
fn greeting_and_close(tcp: TcpStream) -> (String, bool) {
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    r.get_ref().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let closed = matches!(r.read(&mut [0u8; 16]), Ok(0));
    (line, closed)
}

#[test]
fn sessions_are_limited_in_total_and_per_address() {
    let dovecot = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port))
        .extra("[limits]\nmax_sessions = 3\nmax_sessions_per_ip = 2")
        .start();
    let mut first = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
    first.login("alice@example.org", "secret");
    let second = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
    assert!(second.greeting.starts_with("* OK"), "{}", second.greeting);

    let (bye, closed) = greeting_and_close(connect_from("127.0.0.1", proxy.imap_port));
    assert_eq!(bye, "* BYE [UNAVAILABLE] Too many connections from your address\r\n");
    assert!(closed);
    // Over implicit TLS the refusal comes after the handshake, readable by the client.
    let mut tls = proxy.connect_tls();
    assert_eq!(tls.greeting, "* BYE [UNAVAILABLE] Too many connections from your address\r\n");
    tls.expect_eof();

    // Another address still gets in, up to the total.
    let mut third = ImapClient::from_stream(connect_from("127.0.0.2", proxy.imap_port));
    third.login("bob@example.org", "secret");
    let (bye, closed) = greeting_and_close(connect_from("127.0.0.2", proxy.imap_port));
    assert_eq!(bye, "* BYE [UNAVAILABLE] Too many connections\r\n");
    assert!(closed);

    // The sessions that were in go on, and a closed one frees its place.
    first.expect_ok("n1 NOOP");
    third.expect_ok("n2 NOOP");
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        let c = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
        if c.greeting.starts_with("* OK") {
            break c;
        }
        assert!(Instant::now() < deadline, "the closed session's place was not freed");
        std::thread::sleep(Duration::from_millis(50));
    };
    again.login("carol@example.org", "secret");
    let log = proxy.log();
    assert!(log.contains("refused: Too many connections from your address"), "{log}");
}

/// How long the proxy takes to answer a LOGIN (the fake rejects or accepts it at once).
fn timed_login(c: &mut ImapClient, tag: &str, login: &str, password: &str) -> (Duration, String) {
    let started = Instant::now();
    let lines = c.command(&format!("{tag} LOGIN {login} {password}"));
    (started.elapsed(), lines.last().cloned().unwrap_or_default())
}

#[test]
fn failed_logins_are_answered_later_and_put_address_and_account_under_back_off() {
    let mut refuse = greet_and_login()[..2].to_vec();
    refuse.push(Step::Reply("NO [AUTHENTICATIONFAILED] Authentication failed."));
    let refusing = FakeProvider::start(refuse);
    let accepting = FakeProvider::start(greet_and_login());
    // Every login is refused, but right@example.org's.
    let accounts = format!("[[account]]\nlogin = \"right@example.org\"\nimap = {:?}\n", accepting.url());
    let ms = Duration::from_millis;
    let from = |source: &str, proxy: &Proxy| ImapClient::from_stream(connect_from(source, proxy.imap_port));
    // Loopback listeners get no answer delay by default.
    let proxy = Proxy::builder().upstream(refusing.url()).extra(&accounts).start();
    let (took, no) = timed_login(&mut from("127.0.0.1", &proxy), "a1", "wrong@example.org", "secret1");
    assert!(no.starts_with("a1 NO [AUTHENTICATIONFAILED]") && took < ms(1000), "{no} after {took:?}");
    // The account is under back-off now: refused by the proxy, with the same answer, from any
    // address.
    let (_, no) = timed_login(&mut from("127.0.0.2", &proxy), "o1", "wrong@example.org", "secret2");
    assert_eq!(no, "o1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
    proxy.wait_for_log("login refused by the proxy", Duration::from_secs(5));
    // The third failure from an address puts the address under back-off, for any account.
    for (tag, login) in [("a2", "x1@example.org"), ("a3", "x2@example.org")] {
        let (_, no) = timed_login(&mut from("127.0.0.1", &proxy), tag, login, "secret");
        assert!(no.starts_with(&format!("{tag} NO")), "{no}");
    }
    let (_, no) = timed_login(&mut from("127.0.0.1", &proxy), "a4", "right@example.org", "secret");
    assert!(no.starts_with("a4 NO [AUTHENTICATIONFAILED]"), "{no}");
    // From elsewhere the account logs in; its password is verified from now on, so it gets in
    // even from the address under back-off ...
    from("127.0.0.2", &proxy).login("right@example.org", "secret");
    from("127.0.0.1", &proxy).login("right@example.org", "secret");
    // ... which stays under back-off for everyone else.
    let (_, no) = timed_login(&mut from("127.0.0.1", &proxy), "a5", "x3@example.org", "secret");
    assert!(no.starts_with("a5 NO"), "{no}");
    let log = proxy.log();
    assert_eq!(log.matches("login rejected by the provider").count(), 3, "{log}");
    assert_eq!(log.matches("login refused by the proxy").count(), 3, "{log}");

    // The answer comes later and later per address; a success does not reset that.
    let proxy = Proxy::builder()
        .upstream(refusing.url())
        .extra(&accounts)
        .extra("[limits]\nauth_failure_delay_ms = 300")
        .start();
    let mut c = from("127.0.0.1", &proxy);
    let (took, no) = timed_login(&mut c, "d1", "wrong@example.org", "secret1");
    assert!(no.starts_with("d1 NO [AUTHENTICATIONFAILED]") && took >= ms(300), "{no} after {took:?}");
    // The count belongs to the address, not the connection (nor the account).
    let (took, _) = timed_login(&mut from("127.0.0.1", &proxy), "d2", "x1@example.org", "secret");
    assert!(took >= ms(600), "second failure after {took:?}");
    from("127.0.0.1", &proxy).login("right@example.org", "secret");
    let (took, _) = timed_login(&mut from("127.0.0.1", &proxy), "d3", "x2@example.org", "secret");
    assert!(took >= ms(1200), "third failure after {took:?}");
    // Another address starts from the base delay.
    let (took, _) = timed_login(&mut from("127.0.0.2", &proxy), "o1", "x3@example.org", "secret");
    assert!(took >= ms(300) && took < ms(1200), "other address after {took:?}");
    assert!(proxy.log().contains("login rejected by the provider failures=1 delay_ms=300"), "{}", proxy.log());
}

#[test]
fn smtp_shares_the_session_limits_and_delays_failed_logins() {
    let dovecot = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", dovecot.smtp_port))
        .extra("[limits]\nmax_sessions_per_ip = 2\nauth_failure_delay_ms = 300")
        .start();
    // One IMAP and one SMTP session use up the address's two places.
    let mut imap = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
    imap.login("alice@example.org", "secret");
    let mut smtp = SmtpClient::from_stream(connect_from("127.0.0.1", proxy.smtp_port));
    assert_eq!(smtp.greeting.code, 220, "{:?}", smtp.greeting);
    let mut refused = SmtpClient::from_stream(connect_from("127.0.0.1", proxy.smtp_port));
    assert_eq!(refused.greeting.code, 421, "{:?}", refused.greeting);
    assert_eq!(refused.greeting.text(), "4.7.0 Too many connections from your address; try again later");
    refused.expect_eof();
    let mut tls = proxy.connect_smtps();
    assert_eq!(tls.greeting.text(), "4.7.0 Too many connections from your address; try again later");
    tls.expect_eof();

    // Failed AUTH waits as a failed IMAP LOGIN does, and puts the account under back-off.
    let ms = Duration::from_millis;
    smtp.ehlo();
    let started = Instant::now();
    assert_eq!(smtp.auth_plain("alice@example.org", "wrong1").code, 535);
    assert!(started.elapsed() >= ms(300), "first failure after {:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(smtp.auth_plain("alice@example.org", "wrong2").code, 535);
    assert!(started.elapsed() >= ms(300), "refused by the proxy after {:?}", started.elapsed());
    // alice's password is verified (her IMAP login): it is never held back.
    assert_eq!(smtp.auth_plain("alice@example.org", "secret").code, 235, "{}", smtp.transcript());
    imap.expect_ok("n1 NOOP");
    drop(smtp);
    std::thread::sleep(ms(1100));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        let c = SmtpClient::from_stream(connect_from("127.0.0.1", proxy.smtp_port));
        if c.greeting.code == 220 {
            break c;
        }
        assert!(Instant::now() < deadline, "the closed session's place was not freed");
        std::thread::sleep(Duration::from_millis(50));
    };
    again.ehlo();
    let started = Instant::now();
    assert_eq!(again.auth_plain("bob@example.org", "wrong3").code, 535);
    assert!(started.elapsed() >= ms(600), "after {:?}", started.elapsed());
    // The provider's own check takes a varying time; the proxy's delays are in its log.
    let log = proxy.log();
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rejected by the provider"))
        .filter_map(|l| l.split("delay_ms=").nth(1))
        .collect();
    assert_eq!(delays, ["300", "600"], "alice's success did not clear the address\n{log}");
    assert!(log.contains("login refused by the proxy"), "{log}");
    assert!(log.contains("refused: Too many connections from your address"), "{log}");
    assert!(!log.contains("wrong"), "no password in the log");
}

/// A tmpfs mounted for one test; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` where mounting is not allowed (not root, or no mount namespace rights).
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    /// Writes a file until the disk is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0]);
    }

    /// Frees what `fill` took.
    fn free(&self) {
        std::fs::remove_file(self.dir.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_is_refused_never_acknowledged() {
    let Some(disk) = SmallDisk::mount("8m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dovecot = Provider::start();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", dovecot.smtp_port))
        .start();
    // The state directory moves onto the small disk; the config keeps pointing at a symlink.
    proxy.stop();
    let state = proxy.state_dir.path().join("state");
    let small = disk.dir.path().join("state");
    assert!(Command::new("cp").arg("-a").arg(&state).arg(&small).status().unwrap().success());
    std::fs::remove_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(&small, &state).unwrap();
    proxy.restart();
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    // Dovecot here lacks METADATA, so the proxy keeps it in its store.
    c.expect_ok("m1 SETMETADATA INBOX (/private/comment \"fits\")");
    let mut other = proxy.connect();
    other.login("bob@example.org", "secret");
    disk.fill();

    let value = "v".repeat(32 * 1024);
    let no = c.command(&format!("m2 SETMETADATA INBOX (/private/comment \"{value}\")"));
    assert_eq!(
        no,
        ["m2 NO [UNAVAILABLE] The proxy cannot store the entries now (its store is full or unwritable)\r\n"]
    );
    proxy.wait_for_log("cannot write METADATA to the store", Duration::from_secs(5));
    let mut smtp = proxy.connect_smtp();
    smtp.login("alice@example.org", "secret");
    let message = format!("From: alice@example.org\r\nTo: bob@example.org\r\nSubject: full\r\n\r\n{value}\r\n");
    let reply = smtp.send_message("alice@example.org", &["bob@example.org"], message.as_bytes());
    assert_eq!(reply.code, 452, "a message that could not be stored was answered {reply:?}");
    assert!(reply.text().starts_with("4.3.1 Insufficient system storage"), "{reply:?}");

    // The daemon and the other session go on.
    other.expect_ok("n1 NOOP");
    c.expect_ok("n2 NOOP");
    assert!(proxy.is_running());

    // Once there is room again, the store works again without a restart.
    disk.free();
    c.expect_ok("m3 SETMETADATA INBOX (/private/comment \"after\")");
    let got = c.expect_ok("m4 GETMETADATA INBOX /private/comment");
    assert!(got.concat().contains("{5}\r\nafter)"), "{got:?}");
    let reply = smtp.send_message("alice@example.org", &["bob@example.org"], message.as_bytes());
    assert_eq!(reply.code, 250, "{reply:?}");
    wait_for_inbox(dovecot.imap_port, "bob@example.org", "secret", Duration::from_secs(20), |m| !m.is_empty());
    proxy.stop();
}
