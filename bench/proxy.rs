//! End-to-end benchmark: the same IMAP workloads against a real Dovecot, once directly and once
//! through `coi-proxy`, in one run, so that every figure comes with its direct baseline
//! (`cargo bench --bench peers` adds nginx's mail proxy, TLS, a mixed load and 10,000 sessions).
//!
//! Run with `cargo bench --bench proxy`; bench/README.md says what is measured and how.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod client;
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
mod mailbox;
#[allow(dead_code)]
mod measure;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::time::Instant;

use client::{Client, FAST_BUFFER, PASSWORD, SMALL_BUFFER};
use common::{Proxy, dovecot, load_average, log_problems, mb, median, raise_fd_limit, verdict};
use measure::Route;
use provider::{Provider, ProviderOptions};

const FETCH_ROUNDS: usize = 20;
const NOOPS: usize = 10_000;
const NOOP_ROUNDS: usize = 5;
const IDLE_SESSIONS: usize = 1_000;
/// Dovecot allows 100 connections per user and IP by default: the idle sessions are spread over
/// this many users.
const USERS: usize = 20;

const TARGET_THROUGHPUT_RATIO: f64 = 0.97;
const TARGET_ADDED_P50_US: f64 = 50.0;
const TARGET_KIB_PER_SESSION: f64 = 50.0;

fn main() {
    println!("coi-proxy benchmark (load average before: {})", load_average());
    raise_fd_limit(2 * IDLE_SESSIONS as u64 + 512);
    let users: Vec<String> = ["alice", "bob", "carol"]
        .into_iter()
        .map(str::to_owned)
        .chain((4..=USERS).map(|i| format!("user{i:02}")))
        .collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.clone()),
        password: Some(PASSWORD.into()),
        ..Default::default()
    });
    let logins: Vec<String> = users.iter().map(|u| format!("{u}@example.org")).collect();
    let alice = &logins[0];

    let started = Instant::now();
    let stored = mailbox::fill(provider.imap_port, alice);
    println!(
        "{} messages, {:.1} MB in {alice}'s INBOX (APPENDed in {:.1} s)\n",
        mailbox::MESSAGES,
        mb(stored),
        started.elapsed().as_secs_f64()
    );

    // Each figure is printed as soon as it is measured, so a later failure does not lose it.
    let config = &format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
         [limits]\nmax_sessions_per_ip = {}\n",
        provider.imap_port,
        // Every session of the benchmark comes from 127.0.0.1.
        IDLE_SESSIONS + 100
    );
    let proxy = Proxy::start(config);
    let route = |name, port, procs, buffer| Route { name, client: Client::login(port, alice, buffer), procs };
    let mut routes = [
        route("direct", provider.imap_port, None, FAST_BUFFER),
        route("proxied", proxy.port, Some(&proxy), FAST_BUFFER),
    ];
    let fetch = measure::fetch(&mut routes, FETCH_ROUNDS, stored, &dovecot(&provider));
    fetch.print("FETCH throughput, UID FETCH 1:* BODY.PEEK[]", &routes);
    let ratio = median(&fetch.ratios(1));
    println!("  target ratio >= {TARGET_THROUGHPUT_RATIO}: {}\n", verdict(ratio >= TARGET_THROUGHPUT_RATIO));

    let mut routes =
        [route("direct", provider.imap_port, None, SMALL_BUFFER), route("proxied", proxy.port, None, SMALL_BUFFER)];
    let noop = measure::noop(&mut routes, NOOP_ROUNDS, NOOPS);
    noop.print(&routes, NOOPS);
    let added = median(&noop.added(1).0);
    println!("  target added p50 <= +{TARGET_ADDED_P50_US} µs: {}\n", verdict(added <= TARGET_ADDED_P50_US));
    let mut problems = proxy.problems();
    drop(proxy);

    // A fresh proxy, so that memory the allocator kept from the FETCH runs cannot hide the cost.
    let proxy = Proxy::start(config);
    let idle = measure::idle(proxy.port, &logins, IDLE_SESSIONS, &proxy);
    measure::Idle::print_header(IDLE_SESSIONS);
    idle.print("proxied");
    println!(
        "  target <= {TARGET_KIB_PER_SESSION} KiB per session: {}",
        verdict(idle.kib_per_session() <= TARGET_KIB_PER_SESSION)
    );
    problems.extend(proxy.problems());
    drop(proxy);

    common::print_problems(&[("coi-proxy", problems), ("Dovecot", log_problems(&provider.log))]);
}
