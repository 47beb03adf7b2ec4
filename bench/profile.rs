//! Drives one workload through coi-proxy for a profiler (issue 19: find where the time and the
//! memory go before fixing anything): the ~100 MB FETCH (plain, or TLS on both legs), idle
//! sessions, or the mixed load. The proxy may run under a tool that execs it in place
//! (`COI_BENCH_WRAP`, e.g. valgrind), and a tool that attaches to its pid (`PROFILE_ATTACH`,
//! e.g. `strace -f -c -p {pid}`) runs around the workload only, after setup and logins.
//!
//! Run with `PROFILE=fetch|idle|busy cargo bench --bench profile`; bench/README.md (Profiling)
//! has the parameters, the commands used and what they found.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod client;
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
mod mailbox;
#[allow(dead_code)]
mod mix;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, FAST_BUFFER, PASSWORD, SMALL_BUFFER, Tls};
use common::{Processes, Proxy, env_usize, load_average, mb, raise_fd_limit};
use provider::{Provider, ProviderOptions};

const USERS: usize = 20;

fn main() {
    let workload = std::env::var("PROFILE").unwrap_or_else(|_| "fetch".into());
    let sessions = env_usize("PROFILE_SESSIONS", 500);
    println!("coi-proxy profile run: {workload} (load average before: {})", load_average());
    raise_fd_limit(2 * sessions as u64 + 1024);
    let users: Vec<String> =
        ["alice".to_owned()].into_iter().chain((2..=USERS).map(|i| format!("user{i:02}"))).collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.clone()),
        password: Some(PASSWORD.into()),
        max_conns: Some(sessions as u32 + 100),
        imap_client_limit: Some(50),
        ..Default::default()
    });
    let logins: Vec<String> = users.iter().map(|u| format!("{u}@example.org")).collect();
    let tls = std::env::var_os("PROFILE_TLS").is_some_and(|v| v == "1");
    let upstream = if tls {
        format!(
            "imap = \"imaps://127.0.0.1:{}\"\nca_file = {:?}",
            provider.imaps_port,
            provider.ca_cert.display().to_string()
        )
    } else {
        format!("imap = \"imap://127.0.0.1:{}\"", provider.imap_port)
    };
    let config = format!(
        "[upstream]\n{upstream}\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
         [limits]\nmax_sessions = {max}\nmax_sessions_per_ip = {max}\n",
        max = sessions + 100
    );
    match workload.as_str() {
        "fetch" => {
            let stored = mailbox::fill(provider.imap_port, &logins[0]);
            let proxy = Proxy::start(&config);
            let client_tls = tls.then(|| Tls::pinned(&proxy.tls_cert()));
            let port = if tls { proxy.tls_port.expect("imaps listener") } else { proxy.port };
            let mut client = Client::login_over(port, client_tls.as_ref(), &logins[0], FAST_BUFFER);
            let rounds = env_usize("PROFILE_ROUNDS", 5);
            let attached = Attached::start(&proxy);
            let (cpu, started) = (proxy.cpu_secs(), Instant::now());
            for _ in 0..rounds {
                let response = client.run("UID FETCH 1:* BODY.PEEK[]");
                assert_eq!(response.literal_bytes, stored, "the FETCH returned other message bytes than stored");
            }
            let (secs, cpu) = (started.elapsed().as_secs_f64(), proxy.cpu_secs() - cpu);
            attached.stop();
            println!(
                "{rounds} x FETCH of {:.1} MB{}: {:.1} MB/s, proxy CPU {cpu:.2} s ({:.1} ms per 100 MB)",
                mb(stored),
                if tls { " over TLS both legs" } else { "" },
                rounds as f64 * mb(stored) / secs,
                cpu * 1e3 * 100.0 / (rounds as f64 * mb(stored))
            );
        }
        "idle" => {
            let proxy = Proxy::start(&config);
            let client_tls = tls.then(|| Tls::pinned(&proxy.tls_cert()));
            let port = if tls { proxy.tls_port.expect("imaps listener") } else { proxy.port };
            let login = |user| Client::login_over(port, client_tls.as_ref(), user, SMALL_BUFFER);
            drop(login(&logins[0]));
            let before = proxy.rss_kib();
            let attached = Attached::start(&proxy);
            let open: Vec<Client> = (0..sessions).map(|i| login(&logins[i % logins.len()])).collect();
            std::thread::sleep(Duration::from_secs(env_usize("PROFILE_HOLD", 2) as u64));
            let with = proxy.rss_kib();
            println!(
                "{sessions} idle sessions: VmRSS {before} -> {with} KiB, {:.1} KiB per session",
                (with - before) as f64 / sessions as f64
            );
            print_memory_map(proxy.pid());
            attached.stop();
            drop(open);
        }
        "busy" => {
            let seconds = env_usize("PROFILE_SECONDS", 30) as u64;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            runtime.block_on(mix::seed(provider.imap_port, &logins[1..]));
            let proxy = Proxy::start(&config);
            let before = proxy.rss_kib();
            let attached = Attached::start(&proxy);
            let result = runtime.block_on(mix::run_load(proxy.port, &logins[1..], sessions, seconds, Some(&proxy)));
            mix::LoadResult::print_header();
            result.print("coi-proxy");
            result.print_errors("coi-proxy");
            println!(
                "VmRSS {before} KiB before, peak {} KiB: {:.1} KiB per busy session",
                result.peak_rss_kib,
                (result.peak_rss_kib - before) as f64 / sessions as f64
            );
            print_memory_map(proxy.pid());
            attached.stop();
        }
        other => panic!("PROFILE={other}: one of fetch, idle, busy"),
    }
}

/// The tool of `PROFILE_ATTACH` (`{pid}` is the proxy's pid), running until `stop`.
struct Attached(Option<Child>);

impl Attached {
    fn start(proxy: &Proxy) -> Attached {
        let Ok(command) = std::env::var("PROFILE_ATTACH") else { return Attached(None) };
        let command = command.replace("{pid}", &proxy.pid().to_string());
        let mut words = command.split_whitespace();
        let tool = words.next().expect("PROFILE_ATTACH names a tool");
        let child = Command::new(tool).args(words).stdin(Stdio::null()).spawn().expect("start PROFILE_ATTACH");
        // Attaching takes a moment; what happens before it is not the workload.
        std::thread::sleep(Duration::from_secs(1));
        Attached(Some(child))
    }

    /// Ends the tool with SIGINT (strace and perf then write their summaries) and waits.
    fn stop(self) {
        if let Some(mut child) = self.0 {
            common::interrupt(child.id());
            let _ = child.wait();
        }
    }
}

/// Where the proxy's resident memory is, by kind of mapping (/proc/PID/smaps): the heap and
/// other anonymous memory (allocator arenas, thread stacks), and file-backed pages.
fn print_memory_map(pid: u32) {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (mut heap, mut anon, mut anon_maps, mut file, mut stack_like) = (0u64, 0u64, 0, 0u64, 0);
    let mut current = String::new();
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            let kib: u64 = rss.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let name = current.split_whitespace().nth(5).unwrap_or("");
            match name {
                "[heap]" => heap += kib,
                "" => {
                    anon += kib;
                    anon_maps += 1;
                    // Thread stacks: 2 MiB + guard mappings with little resident.
                    if kib <= 16 {
                        stack_like += 1;
                    }
                }
                n if n.starts_with('/') => file += kib,
                _ => anon += kib,
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-') && w.contains(|c: char| c.is_ascii_hexdigit()))
        {
            current = line.to_owned();
        }
    }
    println!(
        "  resident: [heap] {heap} KiB, other anonymous {anon} KiB in {anon_maps} mappings ({stack_like} with <= 16 KiB), file-backed {file} KiB; threads {}",
        fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
    );
}
