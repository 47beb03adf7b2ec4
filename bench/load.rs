//! Load test and account-worker soak against a real Dovecot (issue 7, item 5).
//!
//! 1. Load: `LOAD_SESSIONS` (1,000) concurrent authenticated sessions loop over IDLE, FETCH,
//!    APPEND and NOOP for `LOAD_SECONDS` (300), first directly against Dovecot, then through
//!    `coi-proxy`, so that the proxy's errors come with the direct baseline of the same run.
//! 2. Soak: COI with the `active` filter for one account, `SOAK_MESSAGES` (10,000) LMTP
//!    deliveries, half of them chat messages; every chat message must end in COI.Chats and every
//!    other one stay in INBOX.
//!
//! Run with `cargo bench --bench load` (parameters as environment variables, since cargo bench
//! passes arguments awkwardly); bench/README.md says what is measured and how.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod client;
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
mod mix;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use client::PASSWORD;
use common::{Processes, Proxy, Rng, env_usize, load_average, log_problems, print_problems, raise_fd_limit};
use mix::{Conn, LoadResult, message, run_load, seed};
use provider::{Provider, ProviderOptions};

/// Users the sessions are spread over, so that no user's INBOX sees all the traffic.
const USERS: usize = 25;
/// The account the soak enables COI for; the load never touches it.
const SOAK_USER: &str = "soak";
/// Parallel LMTP connections of the soak (`Provider::deliver` opens one per message).
const DELIVERERS: usize = 4;
/// The soak gives up if the worker moves nothing for this long.
const SOAK_STALL: Duration = Duration::from_secs(120);
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";

fn main() {
    let sessions = env_usize("LOAD_SESSIONS", 1_000);
    let seconds = env_usize("LOAD_SECONDS", 300) as u64;
    let soak_messages = env_usize("SOAK_MESSAGES", 10_000);
    println!(
        "coi-proxy load test: {sessions} sessions x {seconds} s each way, soak of {soak_messages} messages \
         (load average before: {})",
        load_average()
    );
    // Every session's socket, twice over for the proxy (which inherits the limit).
    raise_fd_limit(2 * sessions as u64 + 1024);

    let users: Vec<String> = (1..=USERS).map(|i| format!("user{i:02}")).chain([SOAK_USER.to_owned()]).collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.clone()),
        password: Some(PASSWORD.into()),
        // All sessions of a user come from 127.0.0.1; leave room for the soak's and the worker's.
        max_conns: Some(sessions as u32 + 10),
        ..Default::default()
    });
    let logins: Vec<String> = users[..USERS].iter().map(|u| format!("{u}@example.org")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");

    runtime.block_on(seed(provider.imap_port, &logins));
    let direct = runtime.block_on(run_load(provider.imap_port, &logins, sessions, seconds, None));
    // Let Dovecot reap the direct sessions' processes before the proxied ones need them.
    std::thread::sleep(Duration::from_secs(5));

    let proxy = Proxy::start(&format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
         [limits]\nmax_sessions = {max}\nmax_sessions_per_ip = {max}\n",
        provider.imap_port,
        max = sessions + 100
    ));
    let rss_before = proxy.rss_kib();
    let cpu_before = proxy.cpu_secs();
    let proxied = runtime.block_on(run_load(proxy.port, &logins, sessions, seconds, Some(&proxy)));
    let cpu_load = proxy.cpu_secs() - cpu_before;
    let rss_after_load = proxy.rss_kib();

    let cpu_before = proxy.cpu_secs();
    let soak = runtime.block_on(run_soak(&provider, &proxy, soak_messages));
    let cpu_soak = proxy.cpu_secs() - cpu_before;

    println!("\nLoad: {sessions} sessions, {seconds} s each way, {USERS} users");
    LoadResult::print_header();
    for (what, r) in [("direct", &direct), ("proxied", &proxied)] {
        r.print(what);
    }
    println!(
        "  proxy: VmRSS {rss_before} KiB before, peak {} KiB sampled during the load (VmHWM {} KiB), {rss_after_load} KiB after",
        proxied.peak_rss_kib,
        proxy.status_kib("VmHWM:")
    );
    println!(
        "  proxy CPU: {cpu_load:.1} s over {seconds} s of load ({:.0}% of one core)",
        100.0 * cpu_load / seconds as f64
    );
    for (what, r) in [("direct", &direct), ("proxied", &proxied)] {
        r.print_errors(what);
    }
    soak.print(cpu_soak);
    println!("  proxy VmRSS after the soak: {} KiB", proxy.rss_kib());

    let problems = log_problems(&proxy.log);
    drop(proxy);
    print_problems(&[("coi-proxy", problems), ("Dovecot", log_problems(&provider.log))]);
}

struct SoakResult {
    messages: usize,
    deliver_secs: f64,
    /// From the first delivery until both folders held what they should.
    caught_up_secs: Option<f64>,
    inbox: usize,
    chats: usize,
    /// Message-IDs in the wrong folder, missing, or duplicated.
    wrong: Vec<String>,
}

impl SoakResult {
    fn print(&self, cpu: f64) {
        let chats = self.messages / 2;
        println!(
            "\nSoak: {} LMTP deliveries ({chats} with Chat-Version, {} without) over {DELIVERERS} connections in {:.1} s ({:.0}/s)",
            self.messages,
            self.messages - chats,
            self.deliver_secs,
            self.messages as f64 / self.deliver_secs
        );
        match self.caught_up_secs {
            Some(s) => println!("  worker caught up {s:.1} s after the first delivery"),
            None => println!("  worker did NOT catch up (nothing moved for {} s)", SOAK_STALL.as_secs()),
        }
        println!(
            "  INBOX {} (want {}), COI.Chats {} (want {chats}); proxy CPU {cpu:.1} s",
            self.inbox,
            self.messages - chats,
            self.chats
        );
        if self.wrong.is_empty() {
            println!("  Message-ID sets: every chat message in COI.Chats, every other one in INBOX: PASS");
        } else {
            println!("  Message-ID sets: {} misplaced, missing or duplicated: FAIL", self.wrong.len());
            for w in self.wrong.iter().take(10) {
                println!("    {w}");
            }
        }
    }
}

async fn run_soak(provider: &Provider, proxy: &Proxy, messages: usize) -> SoakResult {
    let login = format!("{SOAK_USER}@example.org");
    // Through the proxy: LOGIN gives it the credentials its worker logs in with.
    let mut client = Conn::login(proxy.port, &login).await.expect("soak login through the proxy");
    let reply =
        client.command(&format!("SETMETADATA \"\" ({ENABLED} yes {FILTER} active)")).await.expect("SETMETADATA");
    assert!(reply.ok, "SETMETADATA: {}", reply.status);

    let chat_id = |i: usize| format!("<soak-chat-{i}@example.net>");
    let plain_id = |i: usize| format!("<soak-plain-{i}@example.net>");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for d in 0..DELIVERERS {
            let login = &login;
            scope.spawn(move || {
                let mut rng = Rng(0x1234_5678 + d as u64);
                for i in (d..messages).step_by(DELIVERERS) {
                    // Even numbers are chat messages, so chats and others interleave.
                    let (id, chat) = if i % 2 == 0 { (chat_id(i), true) } else { (plain_id(i), false) };
                    provider.deliver("sender@example.net", login, &message(login, &id, chat, &mut rng));
                }
            });
        }
    });
    let deliver_secs = started.elapsed().as_secs_f64();

    // Directly at Dovecot, so that the proxy's view of the folders plays no part.
    let want_chats = messages.div_ceil(2);
    let want_inbox = messages - want_chats;
    let mut direct = Conn::login(provider.imap_port, &login).await.expect("direct soak login");
    let (mut last, mut progressed) = ((0, 0), Instant::now());
    let caught_up_secs = loop {
        // Dovecot answers STATUS of the selected INBOX from the session's view: sync it first.
        assert!(direct.command("NOOP").await.expect("NOOP").ok, "NOOP");
        let counts = (direct.status_messages("INBOX").await, direct.status_messages("COI.Chats").await);
        if counts == (want_inbox, want_chats) {
            break Some(started.elapsed().as_secs_f64());
        }
        if counts != last {
            (last, progressed) = (counts, Instant::now());
        } else if progressed.elapsed() > SOAK_STALL {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let inbox = direct.message_ids("INBOX").await;
    let chats = direct.message_ids("COI.Chats").await;
    let mut wrong = Vec::new();
    for (folder, ids, want) in [
        ("INBOX", &inbox, (0..messages).filter(|i| i % 2 == 1).map(plain_id).collect::<BTreeSet<_>>()),
        ("COI.Chats", &chats, (0..messages).filter(|i| i % 2 == 0).map(chat_id).collect()),
    ] {
        let have: BTreeSet<String> = ids.iter().cloned().collect();
        if have.len() != ids.len() {
            wrong.push(format!("{folder}: {} duplicates", ids.len() - have.len()));
        }
        wrong.extend(want.difference(&have).map(|id| format!("{folder}: missing {id}")));
        wrong.extend(have.difference(&want).map(|id| format!("{folder}: unexpected {id}")));
    }
    let _ = client.command("LOGOUT").await;
    SoakResult { messages, deliver_secs, caught_up_secs, inbox: inbox.len(), chats: chats.len(), wrong }
}
