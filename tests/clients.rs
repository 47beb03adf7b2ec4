//! Real mail clients through the proxy's TLS listeners, trusting the proxy's exported CA, over a
//! real Dovecot: mbsync (isync), offlineimap3, neomutt and curl. Each syncs or fetches a folder
//! through the proxy and directly from the provider and must find the same bytes and flags; and
//! with COI `active`, a chat message delivered meanwhile must land in `COI/Chats` (`COI.Chats`
//! with Dovecot's separator) for each. A client that is not installed is SKIPPED with a note.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::Proxy;

const USER: &str = "alice@example.org";
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";

/// `None` with a SKIPPED note if `program` is not installed.
fn installed(program: &str, package: &str) -> Option<()> {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().is_ok_and(|o| o.status.success());
    if !found {
        // Straight to stderr, past the test harness's capture: a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {program} is not installed (apt-get install {package}; tests/setup-debian.sh does), so its \
             run through the proxy was not tested"
        );
    }
    found.then_some(())
}

/// A provider with a `Work` folder (three messages, flags mixed) and a proxy in front of it
/// with COI enabled in `active` mode for alice.
struct World {
    p: Provider,
    proxy: Proxy,
    dir: tempfile::TempDir,
}

fn message(n: usize, extra: &str) -> String {
    format!(
        "From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: work {n}{extra}\r\n\
         Message-ID: <work{n}.{extra}@example.org>\r\nDate: Mon, 2 Jun 2025 10:0{n}:00 +0000\r\n\r\n\
         Line one of {n}\r\nLine two, with trailing spaces   \r\n\r\n-- \r\nBob\r\n"
    )
}

impl World {
    fn start() -> World {
        let p = Provider::start();
        let mut d = direct(&p);
        d.expect_ok("w1 CREATE Work");
        for (n, flags) in [(1, "(\\Seen)"), (2, "(\\Seen \\Flagged)"), (3, "()")] {
            let m = message(n, "");
            d.expect_ok(&format!("w2 APPEND Work {flags} {{{}+}}\r\n{m}", m.len()));
        }
        // Takes \Recent, so that every client after this sees the same flags (mutt shows
        // \Recent as a missing `Status: O`, and only the first session gets it).
        d.expect_ok("w3 SELECT Work");
        let proxy = Proxy::builder()
            .upstream(format!("imap://127.0.0.1:{}", p.imap_port))
            .upstream_smtp(format!("smtp://127.0.0.1:{}", p.smtp_port))
            .log("info")
            .start();
        let mut c = proxy.connect();
        c.login(USER, "secret");
        c.expect_ok(&format!("e1 SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
        c.expect_ok("e2 LOGOUT");
        let dir = tempfile::Builder::new().prefix("coi-clients.").tempdir().unwrap();
        World { p, proxy, dir }
    }

    /// The CA as a user gets it: `coi-proxy cert export FILE`.
    fn ca(&self) -> PathBuf {
        let file = self.dir.path().join("coi-proxy-ca.pem");
        if !file.exists() {
            let out = Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
                .arg("--config")
                .arg(&self.proxy.config_path)
                .args(["cert", "export"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success(), "cert export: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(self.proxy.ca_path()).unwrap());
        }
        file
    }

    /// Delivers a chat message "meanwhile" (call before running a client); see `chat_landed`.
    fn deliver_chat(&self, id: &str) {
        let m = format!(
            "From: bob@example.org\r\nTo: alice@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <{id}>\r\n\
             Subject: chat\r\n\r\nhi\r\n"
        );
        self.p.deliver("bob@example.org", USER, m.as_bytes());
    }

    /// Waits until the chat message is in COI.Chats and not in INBOX, asking the provider.
    fn chat_landed(&self, id: &str) {
        let mut d = direct(&self.p);
        let start = Instant::now();
        loop {
            let found = |d: &mut ImapClient, mailbox: &str| {
                d.expect_ok(&format!("s1 EXAMINE {mailbox}"));
                let r = d.expect_ok(&format!("s2 UID SEARCH HEADER Message-ID \"{id}\""));
                r.iter().any(|l| l.starts_with("* SEARCH ") && l.trim_end().len() > "* SEARCH".len())
            };
            if found(&mut d, "COI.Chats") && !found(&mut d, "INBOX") {
                eprintln!("chat message {id} in COI.Chats after {:?}", start.elapsed());
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the chat message never reached COI.Chats");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn direct(p: &Provider) -> ImapClient {
    let mut c = ImapClient::connect(p.imap_port);
    c.login(USER, "secret");
    c
}

/// Runs a client with a time limit; panics with its output if it fails.
fn run(what: &str, cmd: &mut Command) -> Output {
    let mut full = Command::new("timeout");
    full.arg("120").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => full.env(k, v),
            None => full.env_remove(k),
        };
    }
    let out = full.stdin(Stdio::null()).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{said}", out.status);
    out
}

/// A Maildir folder as (flags, bytes) pairs, sorted: what a sync must reproduce exactly.
fn maildir(folder: &Path) -> BTreeSet<(String, Vec<u8>)> {
    let mut out = BTreeSet::new();
    for sub in ["cur", "new"] {
        let Ok(entries) = std::fs::read_dir(folder.join(sub)) else { continue };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let flags = name.rsplit_once(":2,").map_or(String::new(), |(_, f)| f.to_string());
            out.insert((flags, without_tuid(std::fs::read(e.path()).unwrap())));
        }
    }
    out
}

/// Drops the `X-TUID:` header mbsync adds to messages it stores (a random tag of its own).
fn without_tuid(bytes: Vec<u8>) -> Vec<u8> {
    let Some(start) = bytes.windows(8).position(|w| w == b"\nX-TUID:") else { return bytes };
    let end = bytes[start + 1..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |e| start + 1 + e);
    [&bytes[..start], &bytes[end..]].concat()
}

fn mbsync_rc(dir: &Path, name: &str, port: u16, ssl: &str, ca: &Path) -> PathBuf {
    let local = dir.join(name);
    std::fs::create_dir_all(&local).unwrap();
    let rc = dir.join(format!("{name}.mbsyncrc"));
    // mbsync does not match IP addresses in certificates: the name is localhost.
    let text = format!(
        "IMAPAccount {name}\nHost localhost\nPort {port}\nUser {USER}\nPass secret\nSSLType {ssl}\n\
         CertificateFile {ca}\n\nIMAPStore {name}-far\nAccount {name}\n\n\
         MaildirStore {name}-near\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n\
         Channel {name}\nFar :{name}-far:\nNear :{name}-near:\nPatterns Work\nCreate Both\nSync All\n\
         Expunge None\nSyncState *\n",
        ca = ca.display(),
        local = local.display()
    );
    std::fs::write(&rc, text).unwrap();
    rc
}

#[test]
fn mbsync_two_way_sync_with_flags() {
    let Some(()) = installed("mbsync", "isync") else { return };
    let w = World::start();
    let via = mbsync_rc(w.dir.path(), "proxy", w.proxy.imaps_port, "IMAPS", &w.ca());
    w.deliver_chat("mbsync@chat.example.org");
    run("mbsync through the proxy", Command::new("mbsync").arg("-c").arg(&via).arg("-a"));
    let direct_rc = mbsync_rc(w.dir.path(), "direct", w.p.imap_port, "STARTTLS", &w.p.ca_cert);
    run("mbsync direct", Command::new("mbsync").arg("-c").arg(&direct_rc).arg("-a"));
    let (near, far) = (w.dir.path().join("proxy/Work"), w.dir.path().join("direct/Work"));
    let pulled = maildir(&near);
    assert_eq!(pulled.len(), 3);
    assert_eq!(pulled, maildir(&far), "through the proxy and directly, the same bytes and flags");
    let flags: BTreeSet<&str> = pulled.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(flags, BTreeSet::from(["", "FS", "S"]));

    // Two-way: flag the unread message locally, add a new one, sync through the proxy again.
    let unread = std::fs::read_dir(near.join("cur"))
        .unwrap()
        .chain(std::fs::read_dir(near.join("new")).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(":2,") || !p.to_string_lossy().contains(":2,"))
        .expect("the unread message");
    let base = unread.file_name().unwrap().to_string_lossy().split(":2,").next().unwrap().to_string();
    std::fs::rename(&unread, near.join("cur").join(format!("{base}:2,FS"))).unwrap();
    let new = message(4, ".local").replace("\r\n", "\n"); // a Maildir holds LF lines
    std::fs::write(near.join("new").join("1700000000.local.host"), &new).unwrap();
    run("mbsync through the proxy, second run", Command::new("mbsync").arg("-c").arg(&via).arg("-a"));

    let mut d = direct(&w.p);
    d.expect_ok("x1 SELECT Work");
    let flags = d.expect_ok("x2 FETCH 1:* (FLAGS)");
    let seen_flagged = flags.iter().filter(|l| l.contains("\\Seen") && l.contains("\\Flagged")).count();
    assert_eq!(seen_flagged, 2, "the flags set through the proxy reached the provider: {flags:?}");
    let uploaded = d.expect_ok("x3 UID SEARCH SUBJECT \"work 4.local\"");
    assert!(uploaded[0].trim_end().len() > "* SEARCH".len(), "the new message was uploaded: {uploaded:?}");
    run("mbsync direct, second run", Command::new("mbsync").arg("-c").arg(&direct_rc).arg("-a"));
    let (a, b) = (maildir(&near), maildir(&far));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "after the two-way sync both copies agree byte for byte");
    w.chat_landed("mbsync@chat.example.org");
}

fn offlineimap_rc(dir: &Path, name: &str, port: u16, tls: &str, ca: &Path) -> PathBuf {
    let rc = dir.join(format!("{name}.offlineimaprc"));
    let root = dir.join(name);
    let text = format!(
        "[general]\naccounts = {name}\nmetadata = {root}/meta\n\n[Account {name}]\nlocalrepository = L\n\
         remoterepository = R\n\n[Repository L]\ntype = Maildir\nlocalfolders = {root}/mail\n\n\
         [Repository R]\ntype = IMAP\nremotehost = localhost\nremoteport = {port}\nremoteuser = {USER}\n\
         remotepass = secret\n{tls}\nsslcacertfile = {ca}\nfolderfilter = lambda f: f == 'Work'\n",
        root = root.display(),
        ca = ca.display()
    );
    std::fs::create_dir_all(root.join("mail")).unwrap();
    std::fs::write(&rc, text).unwrap();
    rc
}

/// Both runs use implicit TLS (`ssl = yes`), the proxied one on the proxy's IMAPS port, the
/// direct one on Dovecot's. Not STARTTLS for the direct run: offlineimap's imaplib2 drives one
/// OpenSSL connection from a reader and a writer thread at once, which OpenSSL does not allow
/// (openssl/openssl#20446). After STARTTLS its first command (CAPABILITY) is written while the
/// reader is taking in the server's TLS 1.3 session tickets, and under load that write was lost
/// (both ends idle until Dovecot's 3-minute pre-login timeout) or failed with `[SSL] internal
/// error`. With implicit TLS the tickets arrive with the greeting, which it reads before it writes.
#[test]
fn offlineimap3_sync() {
    let Some(()) = installed("offlineimap", "offlineimap3") else { return };
    let w = World::start();
    let via = offlineimap_rc(w.dir.path(), "proxy", w.proxy.imaps_port, "ssl = yes", &w.ca());
    let direct_rc = offlineimap_rc(w.dir.path(), "direct", w.p.imaps_port, "ssl = yes", &w.p.ca_cert);
    w.deliver_chat("offlineimap@chat.example.org");
    run("offlineimap through the proxy", Command::new("offlineimap").arg("-c").arg(&via).args(["-o", "-u", "basic"]));
    run("offlineimap direct", Command::new("offlineimap").arg("-c").arg(&direct_rc).args(["-o", "-u", "basic"]));
    let a = maildir(&w.dir.path().join("proxy/mail/Work"));
    assert_eq!(a.len(), 3);
    assert_eq!(a, maildir(&w.dir.path().join("direct/mail/Work")), "the same bytes and flags either way");
    w.chat_landed("offlineimap@chat.example.org");
}

fn neomutt_rc(dir: &Path, name: &str, imap: &str, smtp: &str, ca: &Path) -> PathBuf {
    let rc = dir.join(format!("{name}.neomuttrc"));
    let text = format!(
        "set from = \"{USER}\"\nset folder = \"{imap}\"\nset imap_user = \"{USER}\"\nset imap_pass = \"secret\"\n\
         set spoolfile = \"+Work\"\nset smtp_url = \"{smtp}\"\nset smtp_pass = \"secret\"\n\
         set certificate_file = \"{ca}\"\nset ssl_force_tls = yes\nset header_cache = \"\"\nset message_cachedir = \"\"\n\
         set record = \"\"\nset mbox_type = mbox\nset confirmcreate = no\nset confirmappend = no\nset imap_check_subscribed = no\n\
         set mail_check = 0\nset timeout = 1\n",
        ca = ca.display()
    );
    std::fs::write(&rc, text).unwrap();
    rc
}

#[test]
fn neomutt_reads_and_sends() {
    let Some(()) = installed("neomutt", "neomutt") else { return };
    let Some(()) = installed("script", "bsdutils") else { return };
    let w = World::start();
    let dir = w.dir.path();
    // The proxy's CA goes into neomutt's certificate file (what `coi-proxy cert export` writes).
    let via = neomutt_rc(
        dir,
        "proxy",
        &format!("imaps://localhost:{}/", w.proxy.imaps_port),
        &format!("smtps://alice%40example.org@localhost:{}/", w.proxy.smtps_port),
        &w.ca(),
    );
    let direct_rc = neomutt_rc(
        dir,
        "direct",
        &format!("imap://localhost:{}/", w.p.imap_port),
        &format!("smtp://alice%40example.org@localhost:{}/", w.p.smtp_port),
        &w.p.ca_cert,
    );
    w.deliver_chat("neomutt@chat.example.org");
    // Reading needs a terminal: under script(1), keys pushed: tag all, copy them to an mbox, quit.
    let read = |rc: &Path, mbox: &Path| {
        let keys = format!("push \"<tag-pattern>~A<enter><tag-prefix><copy-message>{}<enter><quit>\"", mbox.display());
        let inner = format!("neomutt -n -F {} -e '{}'", rc.display(), keys);
        run(
            "neomutt reading under script(1)",
            Command::new("script").args(["-qec", &inner, "/dev/null"]).env("TERM", "xterm").env("HOME", dir),
        );
        std::fs::read(mbox).unwrap_or_else(|e| panic!("neomutt wrote no {}: {e}", mbox.display()))
    };
    // neomutt's first visit to a folder changes what it writes on later ones (`Status: O` for
    // unread messages it has seen before), so one visit first, then the two compared.
    read(&direct_rc, &dir.join("first.mbox"));
    let through = read(&via, &dir.join("proxy.mbox"));
    let straight = read(&direct_rc, &dir.join("direct.mbox"));
    assert_eq!(through.windows(b"Subject: work".len()).filter(|w| w == b"Subject: work").count(), 3);
    if through != straight {
        let (a, b) = (String::from_utf8_lossy(&through), String::from_utf8_lossy(&straight));
        let diff: Vec<String> =
            a.lines().zip(b.lines()).filter(|(x, y)| x != y).map(|(x, y)| format!("proxy: {x}\ndirect: {y}")).collect();
        panic!("neomutt copied different bytes through the proxy than directly:\n{}", diff.join("\n"));
    }

    // Sending in batch mode through the proxy's submission listener (and its queue).
    let body = dir.join("body.txt");
    std::fs::write(&body, "sent by neomutt through coi-proxy\n").unwrap();
    let subject = "neomutt via proxy";
    run(
        "neomutt batch send",
        Command::new("sh")
            .arg("-c")
            .arg(format!("neomutt -n -F {} -s '{subject}' bob@example.org < {}", via.display(), body.display()))
            .env("HOME", dir),
    );
    let got = support::smtp_client::wait_for_inbox(
        w.p.imap_port,
        "bob@example.org",
        "secret",
        Duration::from_secs(20),
        |m| !m.is_empty(),
    );
    let got = String::from_utf8_lossy(&got[0]).into_owned();
    assert!(got.contains(&format!("Subject: {subject}")) && got.contains("sent by neomutt through coi-proxy"), "{got}");
    w.chat_landed("neomutt@chat.example.org");
}

#[test]
fn curl_imap_fetch_and_smtp_send() {
    let Some(()) = installed("curl", "curl") else { return };
    let w = World::start();
    let ca = w.ca();
    w.deliver_chat("curl@chat.example.org");
    for uid in 1..=3 {
        let through = run(
            "curl imaps:// through the proxy",
            Command::new("curl")
                .args(["-sS", "--cacert"])
                .arg(&ca)
                .args(["-u", "alice@example.org:secret"])
                .arg(format!("imaps://localhost:{}/Work;UID={uid}", w.proxy.imaps_port)),
        )
        .stdout;
        let straight = run(
            "curl imap:// direct",
            Command::new("curl")
                .args(["-sS", "--ssl-reqd", "--cacert"])
                .arg(&w.p.ca_cert)
                .args(["-u", "alice@example.org:secret"])
                .arg(format!("imap://localhost:{}/Work;UID={uid}", w.p.imap_port)),
        )
        .stdout;
        assert!(through.starts_with(b"From: Bob"), "{}", String::from_utf8_lossy(&through));
        assert!(through == straight, "UID {uid}: different bytes through the proxy");
    }

    let mail = w.dir.path().join("mail.txt");
    let sent = "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: curl via proxy\r\n\
                Message-ID: <curl-send@example.org>\r\n\r\nhello from curl\r\n";
    std::fs::write(&mail, sent).unwrap();
    run(
        "curl smtps:// through the proxy",
        Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .args(["-u", "alice@example.org:secret", "--mail-from", USER, "--mail-rcpt", "bob@example.org", "-T"])
            .arg(&mail)
            .arg(format!("smtps://localhost:{}", w.proxy.smtps_port)),
    );
    let got = support::smtp_client::wait_for_inbox(
        w.p.imap_port,
        "bob@example.org",
        "secret",
        Duration::from_secs(20),
        |m| !m.is_empty(),
    );
    let got = support::smtp_client::without_autocrypt(&got[0]);
    assert!(got.ends_with(sent.as_bytes()), "relayed byte for byte after the provider's trace headers");
    w.chat_landed("curl@chat.example.org");
}
