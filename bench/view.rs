//! The decrypted view's cost (issue 15) against a real Dovecot, through the daemon with a key
//! for the account, every figure next to its baseline measured in the same run:
//!
//! 1. `UID FETCH 1:* (BODY.PEEK[])` of 1,000 messages of 20 KB encrypted to the account: the
//!    first time (each message decrypted, its view sealed and stored) and cached, as a ratio to
//!    the same 1,000 messages unencrypted through the proxy (and direct).
//! 2. The header list Outlook fetches on opening a folder (`UID FLAGS RFC822.SIZE ENVELOPE
//!    BODYSTRUCTURE` and `BODY.PEEK[HEADER.FIELDS (…)]`) over 10,000 messages of which 1,000
//!    are encrypted, as a ratio to the same mailbox direct and to 10,000 unencrypted through the
//!    proxy.
//! 3. The memory the cache holds for the 1,000 views of 20 KB (its own count, and the process's
//!    RSS growth while it fills).
//!
//! Run with `cargo bench --bench view` (`VIEW_ROUNDS`, default 5: the median of that many
//! cached rounds; the first fetch happens once). The daemon runs in this process (the keys are
//! handed to it as the tests do). bench/README.md has the figures.

#[allow(dead_code)]
mod client;
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, FAST_BUFFER, PASSWORD, SMALL_BUFFER};
use coi_proxy::openpgp::autocrypt::PreferEncrypt;
use coi_proxy::openpgp::cache::{DEFAULT_BUDGET, SecretKeys, Views};
use coi_proxy::openpgp::encrypt::{Options, encrypt};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::seal::SealKey;
use coi_proxy::store::{Store, ViewId};
use common::{Rng, env_usize, load_average, median, status_kib};
use provider::{Provider, ProviderOptions};

const LOGIN: &str = "bob@example.org";
/// Messages of the body fetch and their size.
const BODIES: usize = 1_000;
const BODY_SIZE: usize = 20 * 1024;
/// Messages of the header list, every tenth encrypted, and their size.
const HEADERS: usize = 10_000;
const HEADER_MSG_SIZE: usize = 3 * 1024;
const HEADER_ITEMS: &str = "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (From To Cc \
Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])";

struct Keys(Vec<Arc<AccountKey>>);

impl SecretKeys for Keys {
    fn secret_keys(&self, _: &str) -> Vec<Arc<AccountKey>> {
        self.0.clone()
    }
}

/// A message from alice to bob of about `size` bytes of text.
fn message(i: usize, size: usize, rng: &mut Rng) -> Vec<u8> {
    let words = ["chat", "over", "imap", "proxy", "delta", "mail", "key", "gossip", "hello", "group"];
    let mut body = String::with_capacity(size + 80);
    while body.len() < size {
        let mut line = String::new();
        while line.len() < 70 {
            line.push_str(words[rng.below(words.len())]);
            line.push(' ');
        }
        body.push_str(line.trim_end());
        body.push_str("\r\n");
    }
    format!(
        "From: Alice <alice@example.org>\r\nTo: Bob <{LOGIN}>\r\nSubject: Message {i}\r\n\
         Date: Sat, 5 Dec 2026 19:35:50 +0000\r\nMessage-ID: <view-{i}@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
    .into_bytes()
}

/// APPENDs `messages` to `mailbox`, 250 to a command (MULTIAPPEND, RFC 3502: one transaction
/// each at the provider, so filling takes seconds rather than minutes).
fn append(client: &mut Client, mailbox: &str, messages: &[Vec<u8>]) {
    for chunk in messages.chunks(250) {
        let mut command = format!("APPEND {mailbox}").into_bytes();
        for message in chunk {
            command.extend_from_slice(format!(" {{{}+}}\r\n", message.len()).as_bytes());
            command.extend_from_slice(message);
        }
        command.extend_from_slice(b"\r\n");
        client.run_bytes(&command);
    }
}

/// One `UID FETCH 1:* items` of `mailbox` on a fresh connection (login and SELECT not timed):
/// seconds and bytes read.
fn fetch(port: u16, mailbox: &str, items: &str) -> (f64, u64) {
    let mut client = Client::login(port, LOGIN, FAST_BUFFER);
    client.run(&format!("SELECT {mailbox}"));
    let started = Instant::now();
    let response = client.run(&format!("UID FETCH 1:* {items}"));
    (started.elapsed().as_secs_f64(), response.bytes)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    let rounds = env_usize("VIEW_ROUNDS", 5).max(1);
    println!("decrypted view benchmark (load average before: {})", load_average());
    let provider = Provider::start_with(ProviderOptions {
        users: Some(vec!["bob".into()]),
        password: Some(PASSWORD.into()),
        ..Default::default()
    });
    let alice = AccountKey::generate("alice@example.org").unwrap();
    let bob = Arc::new(AccountKey::generate(LOGIN).unwrap());
    let to = vec![(LOGIN.to_string(), bob.public_key().clone())];
    let options = Options::mail(PreferEncrypt::Mutual, 1_796_499_350);

    let started = Instant::now();
    let mut direct = Client::login(provider.imap_port, LOGIN, SMALL_BUFFER);
    for mailbox in ["Clear", "Enc", "Plain", "Mix"] {
        direct.run(&format!("CREATE {mailbox}"));
    }
    let mut rng = Rng(0x5eed_f00d);
    let (mut clear_box, mut enc_box) = (Vec::with_capacity(BODIES), Vec::with_capacity(BODIES));
    for i in 0..BODIES {
        let clear = message(i, BODY_SIZE, &mut rng);
        enc_box.push(encrypt(&clear, &alice, &to, &options).unwrap());
        clear_box.push(clear);
    }
    let clear_bytes: usize = clear_box.iter().map(Vec::len).sum();
    let enc_bytes: usize = enc_box.iter().map(Vec::len).sum();
    append(&mut direct, "Clear", &clear_box);
    append(&mut direct, "Enc", &enc_box);
    let encrypted_bodies = enc_box;
    let (mut plain_box, mut mix_box) = (Vec::with_capacity(HEADERS), Vec::with_capacity(HEADERS));
    for i in 0..HEADERS {
        let clear = message(BODIES + i, HEADER_MSG_SIZE, &mut rng);
        mix_box.push(if i % 10 == 0 { encrypt(&clear, &alice, &to, &options).unwrap() } else { clear.clone() });
        plain_box.push(clear);
    }
    append(&mut direct, "Plain", &plain_box);
    append(&mut direct, "Mix", &mix_box);
    drop(direct);
    println!(
        "{BODIES} messages of {} KB ({:.1} MB clear, {:.1} MB encrypted) and 2 x {HEADERS} of {} KB appended in {:.1} s\n",
        BODY_SIZE / 1024,
        clear_bytes as f64 / 1e6,
        enc_bytes as f64 / 1e6,
        HEADER_MSG_SIZE / 1024,
        started.elapsed().as_secs_f64()
    );

    // The daemon, in this process, with bob's key.
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = format!(
        "state_dir = {:?}\n[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:{port}\"\n",
        state.path().display().to_string(),
        provider.imap_port
    );
    let config = coi_proxy::config::Config::parse(&toml, &state.path().join("proxy.toml")).unwrap();
    let keys: Arc<dyn SecretKeys> = Arc::new(Keys(vec![bob.clone()]));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _ = runtime.block_on(coi_proxy::app::run_with(config, None, Some(keys)));
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 1. Bodies.
    let (first, first_bytes) = fetch(port, "Enc", "(BODY.PEEK[])");
    let (mut cached, mut clear_proxy, mut clear_direct) = (Vec::new(), Vec::new(), Vec::new());
    let mut cached_bytes = 0;
    for _ in 0..rounds {
        let (t, bytes) = fetch(port, "Enc", "(BODY.PEEK[])");
        assert_eq!(bytes, first_bytes, "the cached views are the first ones");
        cached_bytes = bytes;
        cached.push(t);
        clear_proxy.push(fetch(port, "Clear", "(BODY.PEEK[])").0);
        clear_direct.push(fetch(provider.imap_port, "Clear", "(BODY.PEEK[])").0);
    }
    let (cached, clear_proxy, clear_direct) = (median(&cached), median(&clear_proxy), median(&clear_direct));
    println!(
        "FETCH of {BODIES} x {} KB bodies (UID FETCH 1:* (BODY.PEEK[])), medians of {rounds} rounds:",
        BODY_SIZE / 1024
    );
    println!("  unencrypted, direct            {:>8.3} s", clear_direct);
    println!("  unencrypted, through the proxy {:>8.3} s", clear_proxy);
    println!(
        "  encrypted, first (decrypt)     {:>8.3} s   ratio to unencrypted through the proxy {:.3}",
        first,
        clear_proxy / first
    );
    println!(
        "  encrypted, cached views        {:>8.3} s   ratio to unencrypted through the proxy {:.3}, to direct {:.3}",
        cached,
        clear_proxy / cached,
        clear_direct / cached
    );
    println!("  ({:.1} MB of views served per fetch)\n", cached_bytes as f64 / 1e6);

    // 2. Header list.
    let (first, _) = fetch(port, "Mix", HEADER_ITEMS);
    let (mut mix_proxy, mut plain_proxy, mut mix_direct) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        mix_proxy.push(fetch(port, "Mix", HEADER_ITEMS).0);
        plain_proxy.push(fetch(port, "Plain", HEADER_ITEMS).0);
        mix_direct.push(fetch(provider.imap_port, "Mix", HEADER_ITEMS).0);
    }
    let (mix_proxy, plain_proxy, mix_direct) = (median(&mix_proxy), median(&plain_proxy), median(&mix_direct));
    println!(
        "Header list of {HEADERS} messages, {} encrypted (Outlook's items), medians of {rounds} rounds:",
        HEADERS / 10
    );
    println!("  mixed mailbox, direct              {:>8.3} s", mix_direct);
    println!("  all unencrypted, through the proxy {:>8.3} s", plain_proxy);
    println!("  mixed, through the proxy, first    {:>8.3} s   ratio to direct {:.3}", first, mix_direct / first);
    println!(
        "  mixed, through the proxy, cached   {:>8.3} s   ratio to direct {:.3}, to all-unencrypted through the proxy {:.3}\n",
        mix_proxy,
        mix_direct / mix_proxy,
        plain_proxy / mix_proxy
    );

    // 3. The cache's memory: the same 1,000 views decided in a cache of their own.
    let dir = tempfile::tempdir().unwrap();
    let views = Views::new(
        Store::open(dir.path()).unwrap(),
        Arc::new(SealKey::generate()),
        Arc::new(Keys(vec![bob.clone()])),
        DEFAULT_BUDGET,
    );
    let pid = std::process::id();
    let rss_before = status_kib(pid, "VmRSS:");
    let started = Instant::now();
    let messages: Vec<(ViewId, Option<Vec<u8>>)> = encrypted_bodies
        .into_iter()
        .enumerate()
        .map(|(i, m)| (ViewId::new(LOGIN, "Enc", 1, i as u32 + 1), Some(m)))
        .collect();
    let shown = views.views_blocking(messages);
    let decided = started.elapsed().as_secs_f64();
    let rss_after = status_kib(pid, "VmRSS:");
    let (bytes, entries) = views.memory();
    println!("The cache, {} views of {} KB (budget {} MiB):", shown.len(), BODY_SIZE / 1024, DEFAULT_BUDGET >> 20);
    println!(
        "  decided, sealed and stored in {:.3} s; held: {entries} entries, {:.1} MB by its count, RSS +{:.1} MB",
        decided,
        bytes as f64 / 1e6,
        rss_after.saturating_sub(rss_before) as f64 / 1024.0
    );
    println!("\nload average after: {}", load_average());
}
