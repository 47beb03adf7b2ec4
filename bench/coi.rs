//! COI moves per second by the account workers, against a real Dovecot (issue 13, item 4).
//!
//! For each level of `COI_ACCOUNTS` (1, 16) fresh accounts log in through the proxy and set
//! COI `enabled yes`, `message-filter active` (Dovecot without METADATA, so the proxy keeps the
//! entries in its store and each account gets its worker). Then `COI_MESSAGES` (4,000) chat
//! mails per level go in over LMTP, `COI_DELIVERERS` (4) persistent connections, each
//! transaction addressed to every account of the level, so that delivery outpaces the workers
//! and the workers' own pace is measured. Directly at Dovecot, `STATUS <root>.Chats` of every
//! account is polled until all mails were moved; moves/s = moved mails / time from the first
//! delivery to the last move seen. Every move costs the worker store writes (the chat
//! Message-IDs and its INBOX position), which is what the store writer's group commit shares.
//!
//! Run with `cargo bench --bench coi`; bench/README.md has the figures.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Processes, Proxy, env_list, env_usize, load_average, print_problems};
use data_block::data_block;
use provider::{Provider, ProviderOptions};

const PASSWORD: &str = "secret";
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";
/// Where the worker moves chat mails on this Dovecot ("." separator, the default root).
const CHATS: &str = "COI.Chats";
/// Gives up if no account's Chats grows for this long.
const STALL: Duration = Duration::from_secs(120);

fn main() {
    let levels = env_list("COI_ACCOUNTS", &[1, 16]);
    let messages = env_usize("COI_MESSAGES", 4_000);
    let deliverers = env_usize("COI_DELIVERERS", 4);
    println!(
        "coi-proxy COI move bench: {messages} chat mails per level, accounts per level {levels:?}, {deliverers} LMTP \
         connections (load average before: {})",
        load_average()
    );
    // Every level gets accounts of its own: a worker that ran before would skew the next level.
    let users: Vec<Vec<String>> =
        levels.iter().enumerate().map(|(level, &n)| (1..=n).map(|i| format!("coi{level}x{i:02}")).collect()).collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.concat()),
        password: Some(PASSWORD.into()),
        // Three IMAP connections per account (the proxied session, its worker, the direct poll).
        max_conns: Some(600),
        ..Default::default()
    });
    let proxy = Proxy::start(&format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n",
        provider.imap_port
    ));

    let mut results = Vec::new();
    for users in &users {
        let logins: Vec<String> = users.iter().map(|u| format!("{u}@example.org")).collect();
        // Through the proxy: the login gives the worker its credentials; the sessions stay open.
        let sessions: Vec<Imap> = logins.iter().map(|l| enable_coi(proxy.port, l)).collect();
        let mut direct: Vec<Imap> = logins.iter().map(|l| Imap::login(provider.imap_port, l)).collect();
        // Each worker makes Chats on its first move; wait for the workers to be watching INBOX.
        std::thread::sleep(Duration::from_secs(1));
        let per_account = messages.div_ceil(logins.len());
        let cpu = proxy.cpu_secs();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for d in 0..deliverers {
                let (logins, port) = (&logins, provider.lmtp_port);
                scope.spawn(move || {
                    let mut lmtp = Lmtp::connect(port);
                    for i in (d..per_account).step_by(deliverers) {
                        lmtp.deliver(logins, &chat_mail(&format!("<bench-{d}-{i}@example.net>")));
                    }
                    lmtp.quit();
                });
            }
        });
        let delivered = started.elapsed();
        let want = per_account * logins.len();
        // Accounts whose Chats holds all of theirs are not asked again.
        let mut counts = vec![0; direct.len()];
        let (mut last, mut progressed) = (0, Instant::now());
        let moved = loop {
            for (c, count) in direct.iter_mut().zip(&mut counts).filter(|(_, n)| **n < per_account) {
                *count = c.messages(CHATS);
            }
            let moved: usize = counts.iter().sum();
            if moved != last {
                (last, progressed) = (moved, Instant::now());
            }
            if moved >= want {
                break progressed.duration_since(started);
            }
            assert!(progressed.elapsed() < STALL, "the workers moved nothing for {STALL:?}: {moved} of {want}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let cpu = proxy.cpu_secs() - cpu;
        results.push((logins.len(), want, delivered, moved, cpu));
        drop(sessions);
    }

    println!("\nCOI moves (active filter), chat mails delivered over LMTP to every account of the level");
    for (accounts, want, delivered, moved, cpu) in results {
        println!(
            "  {accounts:>2} accounts: {want} mails delivered in {:.2} s ({:.0}/s); all moved {:.2} s after the first \
             delivery ({:.2} s after the last): {:.0} moves/s; proxy CPU {cpu:.2} s",
            delivered.as_secs_f64(),
            want as f64 / delivered.as_secs_f64(),
            moved.as_secs_f64(),
            moved.saturating_sub(delivered).as_secs_f64(),
            want as f64 / moved.as_secs_f64()
        );
    }
    print_problems(&[("coi-proxy", proxy.problems())]);
}

/// A small chat mail (Chat-Version) with a unique Message-ID.
fn chat_mail(id: &str) -> Vec<u8> {
    format!(
        "From: <sender@example.net>\r\nTo: <chat@example.org>\r\nSubject: [...]\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: {id}\r\nChat-Version: 1.0\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         hello from a chat\r\n"
    )
    .into_bytes()
}

/// Logs in through the proxy and switches COI on with the `active` filter.
fn enable_coi(port: u16, login: &str) -> Imap {
    let mut c = Imap::login(port, login);
    c.ok(&format!("SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    c
}

/// A minimal blocking IMAP client: tagged commands, untagged lines collected, no literals.
struct Imap {
    conn: BufReader<TcpStream>,
    tag: u32,
}

impl Imap {
    fn login(port: u16, login: &str) -> Imap {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut c = Imap { conn: BufReader::new(tcp), tag: 0 };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "greeting: {greeting}");
        c.ok(&format!("LOGIN \"{login}\" \"{PASSWORD}\""));
        c
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        assert!(self.conn.read_line(&mut line).expect("read from IMAP") > 0, "the IMAP server closed");
        line
    }

    /// The untagged lines and the tagged status of one command.
    fn command(&mut self, command: &str) -> (Vec<String>, String) {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        let s = self.conn.get_mut();
        s.write_all(format!("{tag} {command}\r\n").as_bytes()).expect("write to IMAP");
        let mut untagged = Vec::new();
        loop {
            let line = self.line();
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                return (untagged, status.trim_end().to_owned());
            }
            untagged.push(line);
        }
    }

    fn ok(&mut self, command: &str) -> Vec<String> {
        let (untagged, status) = self.command(command);
        assert!(status.starts_with("OK"), "{command}: {status}");
        untagged
    }

    /// MESSAGES of `mailbox` by STATUS; 0 while it does not exist.
    fn messages(&mut self, mailbox: &str) -> usize {
        let (untagged, status) = self.command(&format!("STATUS {mailbox} (MESSAGES)"));
        if !status.starts_with("OK") {
            return 0;
        }
        untagged
            .iter()
            .find_map(|l| l.split_once("(MESSAGES ")?.1.split(')').next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("STATUS {mailbox}: {untagged:?}"))
    }
}

/// One persistent LMTP connection; every transaction goes to a list of recipients.
struct Lmtp {
    conn: BufReader<TcpStream>,
}

impl Lmtp {
    fn connect(port: u16) -> Lmtp {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to LMTP");
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut c = Lmtp { conn: BufReader::new(tcp) };
        c.expect(220);
        c.send(b"LHLO bench\r\n");
        c.expect(250);
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.conn.get_mut().write_all(bytes).expect("write to LMTP");
    }

    fn expect(&mut self, code: u16) {
        loop {
            let mut line = String::new();
            assert!(self.conn.read_line(&mut line).expect("read from LMTP") > 0, "LMTP closed");
            assert!(line.starts_with(&code.to_string()), "LMTP: expected {code}, got {line}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }

    /// One transaction to all `rcpts` (LMTP answers the data once per recipient).
    fn deliver(&mut self, rcpts: &[String], message: &[u8]) {
        let mut envelope = "MAIL FROM:<sender@example.net>\r\n".to_owned();
        for r in rcpts {
            envelope += &format!("RCPT TO:<{r}>\r\n");
        }
        envelope += "DATA\r\n";
        self.send(envelope.as_bytes());
        self.expect(250);
        for _ in rcpts {
            self.expect(250);
        }
        self.expect(354);
        self.send(&data_block(message));
        for _ in rcpts {
            self.expect(250);
        }
    }

    fn quit(mut self) {
        self.send(b"QUIT\r\n");
        self.expect(221);
    }
}
