//! Drives one workload through coi-proxy (or nginx, for comparison) for a profiler (issue 19: find where the time and the
//! memory go before fixing anything): the ~100 MB FETCH (plain, or TLS on both legs),
//! sequential NOOPs, idle sessions, or the mixed load. The proxy may run under a tool that execs it in place
//! (`COI_BENCH_WRAP`, e.g. valgrind), and a tool that attaches to its pid (`PROFILE_ATTACH`,
//! e.g. `strace -f -c -p {pid}`) runs around the workload only, after setup and logins.
//!
//! Run with `PROFILE=fetch|noop|idle|busy cargo bench --bench profile`; bench/README.md (Profiling)
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
mod nginx;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, FAST_BUFFER, PASSWORD, SMALL_BUFFER, Tls};
use common::{Processes, Proxy, env_usize, load_average, mb, raise_fd_limit};
use nginx::Nginx;
use provider::{Provider, ProviderOptions};

const USERS: usize = 20;

fn main() {
    let workload = std::env::var("PROFILE").unwrap_or_else(|_| "fetch".into());
    let which = std::env::var("PROFILE_PROXY").unwrap_or_else(|_| "coi".into());
    let sessions = env_usize("PROFILE_SESSIONS", 500);
    println!("profile run: {workload} through {which} (load average before: {})", load_average());
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
    let stored = (workload == "fetch").then(|| mailbox::fill(provider.imap_port, &logins[0]));
    let proxy = Under::start(&which, &provider, tls, sessions);
    let client_tls = tls.then(|| Tls::pinned(&proxy.tls_cert(&provider)));
    let port = proxy.port(tls);
    let login = |user| Client::login_over(port, client_tls.as_ref(), user, SMALL_BUFFER);
    let procs = proxy.procs();
    match workload.as_str() {
        "fetch" => {
            let stored = stored.expect("filled");
            let mut client = Client::login_over(port, client_tls.as_ref(), &logins[0], FAST_BUFFER);
            let rounds = env_usize("PROFILE_ROUNDS", 5);
            let attached = Attached::start(procs);
            let (cpu, started) = (procs.cpu_secs(), Instant::now());
            for _ in 0..rounds {
                let response = client.run("UID FETCH 1:* BODY.PEEK[]");
                assert_eq!(response.literal_bytes, stored, "the FETCH returned other message bytes than stored");
            }
            let (secs, cpu) = (started.elapsed().as_secs_f64(), procs.cpu_secs() - cpu);
            attached.stop();
            println!(
                "{rounds} x FETCH of {:.1} MB{}: {:.1} MB/s, proxy CPU {cpu:.2} s ({:.1} ms per 100 MB)",
                mb(stored),
                if tls { " over TLS" } else { "" },
                rounds as f64 * mb(stored) / secs,
                cpu * 1e3 * 100.0 / (rounds as f64 * mb(stored))
            );
        }
        "noop" => {
            let noops = env_usize("PROFILE_NOOPS", 100_000);
            let mut client = login(&logins[0]);
            for _ in 0..1_000 {
                client.run("NOOP");
            }
            let attached = Attached::start(procs);
            let (cpu, started) = (procs.cpu_secs(), Instant::now());
            for _ in 0..noops {
                client.run("NOOP");
            }
            let (secs, cpu) = (started.elapsed().as_secs_f64(), procs.cpu_secs() - cpu);
            attached.stop();
            println!(
                "{noops} sequential NOOPs: {:.1} µs per round trip, proxy CPU {:.2} µs per NOOP",
                secs * 1e6 / noops as f64,
                cpu * 1e6 / noops as f64
            );
        }
        "idle" => {
            drop(login(&logins[0]));
            std::thread::sleep(Duration::from_secs(1));
            let before = procs.rss_kib();
            let attached = Attached::start(procs);
            let open: Vec<Client> = (0..sessions).map(|i| login(&logins[i % logins.len()])).collect();
            std::thread::sleep(Duration::from_secs(env_usize("PROFILE_HOLD", 2) as u64));
            let with = procs.rss_kib();
            println!(
                "{sessions} idle sessions: VmRSS {before} -> {with} KiB, {:.1} KiB per session",
                with.saturating_sub(before) as f64 / sessions as f64
            );
            print_memory_map(procs);
            attached.stop();
            drop(open);
        }
        "busy" => {
            let seconds = env_usize("PROFILE_SECONDS", 30) as u64;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            runtime.block_on(mix::seed(provider.imap_port, &logins[1..]));
            let before = procs.rss_kib();
            let attached = Attached::start(procs);
            let result = runtime.block_on(mix::run_load(port, &logins[1..], sessions, seconds, Some(procs)));
            mix::LoadResult::print_header();
            result.print(&which);
            result.print_errors(&which);
            println!(
                "VmRSS {before} KiB before, peak {} KiB: {:.1} KiB per busy session",
                result.peak_rss_kib,
                result.peak_rss_kib.saturating_sub(before) as f64 / sessions as f64
            );
            print_memory_map(procs);
            attached.stop();
        }
        other => panic!("PROFILE={other}: one of fetch, noop, idle, busy"),
    }
}

/// The proxy under study: coi-proxy (TLS on both legs with `PROFILE_TLS=1`) or nginx (TLS to
/// the client only).
enum Under {
    Coi(Proxy),
    Nginx(Nginx),
}

impl Under {
    fn start(which: &str, provider: &Provider, tls: bool, sessions: usize) -> Under {
        match which {
            "coi" => {
                let upstream = if tls {
                    format!(
                        "imap = \"imaps://127.0.0.1:{}\"\nca_file = {:?}",
                        provider.imaps_port,
                        provider.ca_cert.display().to_string()
                    )
                } else {
                    format!("imap = \"imap://127.0.0.1:{}\"", provider.imap_port)
                };
                Under::Coi(Proxy::start(&format!(
                    "[upstream]\n{upstream}\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
                     [limits]\nmax_sessions = {max}\nmax_sessions_per_ip = {max}\n",
                    max = sessions + 100
                )))
            }
            "nginx" => {
                if let Some(install) = Nginx::missing() {
                    panic!("PROFILE_PROXY=nginx: {install}");
                }
                let key = provider.state_dir.join("tls/key.pem");
                Under::Nginx(Nginx::start(provider.imap_port, &provider.ca_cert, &key, sessions))
            }
            other => panic!("PROFILE_PROXY={other}: coi or nginx"),
        }
    }

    fn port(&self, tls: bool) -> u16 {
        match (self, tls) {
            (Under::Coi(p), false) => p.port,
            (Under::Coi(p), true) => p.tls_port.expect("imaps listener"),
            (Under::Nginx(n), false) => n.port,
            (Under::Nginx(n), true) => n.tls_port,
        }
    }

    /// The certificate its TLS listener presents (nginx has Dovecot's).
    fn tls_cert(&self, provider: &Provider) -> std::path::PathBuf {
        match self {
            Under::Coi(p) => p.tls_cert(),
            Under::Nginx(_) => provider.ca_cert.clone(),
        }
    }

    fn procs(&self) -> &dyn Processes {
        match self {
            Under::Coi(p) => p,
            Under::Nginx(n) => n,
        }
    }
}

/// The tool of `PROFILE_ATTACH` (`{pid}` is the proxy's pid, or nginx's worker pids separated
/// by commas), running until `stop`.
struct Attached(Option<Child>);

impl Attached {
    fn start(procs: &dyn Processes) -> Attached {
        let Ok(command) = std::env::var("PROFILE_ATTACH") else { return Attached(None) };
        let pids: Vec<String> = procs.pids().iter().map(u32::to_string).collect();
        let command = command.replace("{pid}", &pids.join(","));
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
fn print_memory_map(procs: &dyn Processes) {
    let pids = procs.pids();
    let smaps: String =
        pids.iter().map(|pid| fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps")).collect();
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
        pids.iter().map(|pid| fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)).sum::<usize>()
    );
}
