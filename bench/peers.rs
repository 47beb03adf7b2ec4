//! coi-proxy side by side with nginx's mail proxy (issue 19), in front of the same Dovecot in
//! one run, each figure as a ratio to (or a difference from) a direct connection measured in the
//! same minutes: FETCH of ~100 MB (plain, and TLS on both legs), NOOP latency, memory per idle
//! session, a mixed load of many sessions, and 10,000 concurrent sessions.
//!
//! Run with `cargo bench --bench peers`; bench/README.md says what is measured and how, and
//! which parameters the environment can change. Without nginx's mail module installed it says
//! so and compares coi-proxy with direct only.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod client;
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
mod mailbox;
mod measure;
#[allow(dead_code)]
mod mix;
mod nginx;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, FAST_BUFFER, PASSWORD, SMALL_BUFFER, Tls};
use common::{
    Processes, Proxy, env_usize, fds, load_average, log_problems, mb, median, print_problems, raise_fd_limit, verdict,
};
use measure::Route;
use mix::{Conn, LoadResult};
use nginx::Nginx;
use provider::{Provider, ProviderOptions};

/// Users the sessions are spread over (Dovecot counts connections per user and address).
const USERS: usize = 20;
/// Sessions one Dovecot imap process serves, so that 10,000 sessions need 200 processes.
const IMAP_CLIENT_LIMIT: u32 = 50;
/// Logins in flight at once while the 10,000 sessions open.
const SCALE_CONCURRENCY: usize = 64;

/// Issue 19's targets that are not relative to nginx.
const TARGET_FETCH_RATIO: f64 = 0.98;
/// A third of the ~123 KB per busy session measured before issue 19.
const TARGET_BUSY_KIB: f64 = 41.0;
const TARGET_SCALE_MB: f64 = 150.0;

fn main() {
    let p = Params::from_env();
    println!("coi-proxy vs nginx's mail proxy vs direct (load average before: {})", load_average());
    let most = p.scale.max(p.mix_sessions).max(p.idle_sessions);
    // The bench holds every client socket; the proxies (which inherit the limit) two per session.
    raise_fd_limit(2 * most as u64 + 4096);
    let nginx_missing = Nginx::missing();
    if let Some(install) = &nginx_missing {
        println!("nginx's mail proxy is not installed ({install}): coi-proxy vs direct only");
    }
    let with_nginx = nginx_missing.is_none();

    let users: Vec<String> =
        ["alice".to_owned()].into_iter().chain((2..=USERS).map(|i| format!("user{i:02}"))).collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.clone()),
        password: Some(PASSWORD.into()),
        max_conns: Some(most as u32 + 100),
        imap_client_limit: Some(IMAP_CLIENT_LIMIT),
        ..Default::default()
    });
    let logins: Vec<String> = users.iter().map(|u| format!("{u}@example.org")).collect();
    let alice = &logins[0];
    let dovecot_key = provider.state_dir.join("tls/key.pem");
    let start_nginx = |connections| {
        with_nginx.then(|| Nginx::start(provider.imap_port, &provider.ca_cert, &dovecot_key, connections))
    };
    let plain = format!("imap://127.0.0.1:{}", provider.imap_port);
    let mut problems: Vec<String> = Vec::new();
    let mut nginx_problems: Vec<String> = Vec::new();
    let mut summary = Summary::default();

    let started = Instant::now();
    let stored = mailbox::fill(provider.imap_port, alice);
    println!(
        "{} messages, {:.1} MB in {alice}'s INBOX (APPENDed in {:.1} s); Dovecot imap processes serve {IMAP_CLIENT_LIMIT} sessions each\n",
        mailbox::MESSAGES,
        mb(stored),
        started.elapsed().as_secs_f64()
    );

    // FETCH and NOOP, plain TCP.
    {
        let coi = Proxy::start(&coi_config(&plain, None, 100));
        let nginx = start_nginx(100);
        let mut routes = routes(&provider, &coi, nginx.as_ref(), alice, None, FAST_BUFFER);
        let fetch = measure::fetch(&mut routes, p.fetch_rounds, stored);
        fetch.print("FETCH throughput, UID FETCH 1:* BODY.PEEK[], plain TCP", &routes);
        summary.fetch = (1..routes.len()).map(|i| median(&fetch.ratios(i))).collect();
        println!();
        let mut routes = routes_small(&provider, &coi, nginx.as_ref(), alice);
        let noop = measure::noop(&mut routes, p.noop_rounds, p.noops);
        noop.print(&routes, p.noops);
        summary.noop = (1..routes.len())
            .map(|i| {
                let (a50, a99) = noop.added(i);
                (median(&a50), median(&a99))
            })
            .collect();
        println!();
        problems.extend(coi.problems());
        nginx_problems.extend(nginx.iter().flat_map(Nginx::problems));
    }

    // FETCH with TLS: the client to the proxy, and the proxy to Dovecot (nginx cannot do the latter).
    {
        let imaps = format!("imaps://127.0.0.1:{}", provider.imaps_port);
        let coi = Proxy::start(&coi_config(&imaps, Some(&provider.ca_cert), 100));
        let nginx = start_nginx(100);
        let dovecot_tls = Tls::pinned(&provider.ca_cert);
        let coi_tls = Tls::pinned(&coi.tls_cert());
        let login = |name, port, tls, procs| Route {
            name,
            client: Client::login_over(port, Some(tls), alice, FAST_BUFFER),
            procs,
        };
        let mut routes = vec![
            login("direct TLS", provider.imaps_port, &dovecot_tls, None),
            login("coi-proxy TLS+TLS", coi.tls_port.expect("imaps listener"), &coi_tls, Some(&coi as &dyn Processes)),
        ];
        if let Some(nginx) = &nginx {
            // Informational: TLS to the client only, plain to Dovecot.
            routes.push(login("nginx TLS+plain", nginx.tls_port, &dovecot_tls, Some(nginx)));
        }
        let fetch = measure::fetch(&mut routes, p.tls_rounds, stored);
        fetch.print("FETCH throughput, TLS from the client (and from the proxy to Dovecot, coi-proxy only)", &routes);
        summary.fetch_tls = (1..routes.len()).map(|i| median(&fetch.ratios(i))).collect();
        println!();
        problems.extend(coi.problems());
        nginx_problems.extend(nginx.iter().flat_map(Nginx::problems));
    }

    // Memory per idle session, each proxy fresh so that memory kept from earlier runs cannot
    // hide the cost.
    {
        measure::Idle::print_header(p.idle_sessions);
        let coi = Proxy::start(&coi_config(&plain, None, p.idle_sessions));
        let idle = measure::idle(coi.port, &logins, p.idle_sessions, &coi);
        idle.print("coi-proxy");
        summary.idle.push(idle.kib_per_session());
        problems.extend(coi.problems());
        drop(coi);
        if let Some(nginx) = start_nginx(p.idle_sessions) {
            let idle = measure::idle(nginx.port, &logins, p.idle_sessions, &nginx);
            idle.print("nginx (workers)");
            summary.idle.push(idle.kib_per_session());
            nginx_problems.extend(nginx.problems());
        }
        println!();
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");

    // The mixed load; alice's 100 MB INBOX is left out.
    if p.mix_sessions > 0 {
        let mix_logins = &logins[1..];
        runtime.block_on(mix::seed(provider.imap_port, mix_logins));
        println!(
            "Mixed load: {} sessions over {} users, {} s per route (logins spread over the first tenth)",
            p.mix_sessions,
            mix_logins.len(),
            p.mix_seconds
        );
        LoadResult::print_header();
        let direct =
            runtime.block_on(mix::run_load(provider.imap_port, mix_logins, p.mix_sessions, p.mix_seconds, None));
        direct.print("direct");
        let mut busy = Vec::new();
        let mut run = |name: &str, port: u16, procs: &dyn Processes| {
            // Let Dovecot reap the previous route's sessions first.
            std::thread::sleep(Duration::from_secs(5));
            let (rss, cpu) = (procs.rss_kib(), procs.cpu_secs());
            let result = runtime.block_on(mix::run_load(port, mix_logins, p.mix_sessions, p.mix_seconds, Some(procs)));
            result.print(name);
            busy.push(Busy {
                name: name.to_owned(),
                before: rss,
                peak: result.peak_rss_kib,
                cpu: procs.cpu_secs() - cpu,
                commands: result.commands(),
                errors: result.errors(),
                sessions: p.mix_sessions,
                seconds: p.mix_seconds,
            });
            result.print_errors(name);
        };
        let coi = Proxy::start(&coi_config(&plain, None, p.mix_sessions));
        run("coi-proxy", coi.port, &coi);
        problems.extend(coi.problems());
        drop(coi);
        if let Some(nginx) = start_nginx(p.mix_sessions) {
            run("nginx", nginx.port, &nginx);
            nginx_problems.extend(nginx.problems());
        }
        direct.print_errors("direct");
        for b in &busy {
            b.print(direct.commands());
        }
        summary.busy =
            busy.iter().map(|b| (b.kib_per_session(), b.commands as f64 / direct.commands() as f64)).collect();
        summary.mix_errors = (direct.errors(), busy.iter().map(|b| b.errors).collect());
        println!();
    }

    // Many concurrent sessions.
    if p.scale > 0 {
        println!(
            "{} concurrent sessions (LOGIN + SELECT INBOX, {SCALE_CONCURRENCY} logins in flight), then a NOOP on each",
            p.scale
        );
        std::thread::sleep(Duration::from_secs(5));
        let coi = Proxy::start(&coi_config(&plain, None, p.scale));
        let held = runtime.block_on(hold(coi.port, &logins, p.scale, &coi));
        held.print("coi-proxy");
        summary.scale.push((held.errors(), held.rss_kib as f64 / 1024.0));
        problems.extend(coi.problems());
        drop(coi);
        if let Some(nginx) = start_nginx(p.scale) {
            std::thread::sleep(Duration::from_secs(5));
            let held = runtime.block_on(hold(nginx.port, &logins, p.scale, &nginx));
            held.print("nginx (workers)");
            summary.scale.push((held.errors(), held.rss_kib as f64 / 1024.0));
            nginx_problems.extend(nginx.problems());
        }
        println!();
    }

    summary.print(with_nginx, &p);
    print_problems(&[("coi-proxy", problems), ("nginx", nginx_problems), ("Dovecot", log_problems(&provider.log))]);
}

/// What the environment may change (defaults in brackets): `PEERS_FETCH_ROUNDS` [20],
/// `PEERS_TLS_ROUNDS` [10], `PEERS_NOOP_ROUNDS` [5], `PEERS_NOOPS` [10000] per route and round,
/// `PEERS_IDLE_SESSIONS` [500], `PEERS_MIX_SESSIONS` [1000] (0 skips the mix),
/// `PEERS_MIX_SECONDS` [60] per route, `PEERS_SCALE` [10000] (0 skips it).
struct Params {
    fetch_rounds: usize,
    tls_rounds: usize,
    noop_rounds: usize,
    noops: usize,
    idle_sessions: usize,
    mix_sessions: usize,
    mix_seconds: u64,
    scale: usize,
}

impl Params {
    fn from_env() -> Params {
        Params {
            fetch_rounds: env_usize("PEERS_FETCH_ROUNDS", 20),
            tls_rounds: env_usize("PEERS_TLS_ROUNDS", 10),
            noop_rounds: env_usize("PEERS_NOOP_ROUNDS", 5),
            noops: env_usize("PEERS_NOOPS", 10_000),
            idle_sessions: env_usize("PEERS_IDLE_SESSIONS", 500),
            mix_sessions: env_usize("PEERS_MIX_SESSIONS", 1_000),
            mix_seconds: env_usize("PEERS_MIX_SECONDS", 60) as u64,
            scale: env_usize("PEERS_SCALE", 10_000),
        }
    }
}

/// coi-proxy's config in front of `upstream`, for up to `sessions` sessions (all from 127.0.0.1).
fn coi_config(upstream: &str, ca_file: Option<&Path>, sessions: usize) -> String {
    let ca = ca_file.map_or(String::new(), |f| format!("ca_file = {:?}\n", f.display().to_string()));
    format!(
        "[upstream]\nimap = \"{upstream}\"\n{ca}[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
         [limits]\nmax_sessions = {max}\nmax_sessions_per_ip = {max}\n",
        max = sessions + 100
    )
}

/// One logged-in client per route, plain TCP: direct, coi-proxy and (if running) nginx.
fn routes<'a>(
    provider: &Provider,
    coi: &'a Proxy,
    nginx: Option<&'a Nginx>,
    user: &str,
    tls: Option<&Tls>,
    buffer: usize,
) -> Vec<Route<'a>> {
    let mut routes = vec![
        Route { name: "direct", client: Client::login_over(provider.imap_port, tls, user, buffer), procs: None },
        Route { name: "coi-proxy", client: Client::login_over(coi.port, tls, user, buffer), procs: Some(coi) },
    ];
    if let Some(nginx) = nginx {
        routes.push(Route {
            name: "nginx",
            client: Client::login_over(nginx.port, tls, user, buffer),
            procs: Some(nginx),
        });
    }
    routes
}

/// [`routes`] for NOOPs: small buffers, and no CPU accounting.
fn routes_small<'a>(provider: &Provider, coi: &'a Proxy, nginx: Option<&'a Nginx>, user: &str) -> Vec<Route<'a>> {
    let mut routes = routes(provider, coi, nginx, user, None, SMALL_BUFFER);
    for route in &mut routes {
        route.procs = None;
    }
    routes
}

/// A proxy's figures under the mixed load.
struct Busy {
    name: String,
    before: u64,
    peak: u64,
    cpu: f64,
    commands: u64,
    errors: u64,
    sessions: usize,
    seconds: u64,
}

impl Busy {
    fn kib_per_session(&self) -> f64 {
        self.peak.saturating_sub(self.before) as f64 / self.sessions as f64
    }

    fn print(&self, direct_commands: u64) {
        println!(
            "  {:<18} VmRSS {} KiB before, peak {} KiB: {:.1} KiB per busy session; CPU {:.1} s ({:.0}% of a core); \
             commands {:.3} of direct",
            self.name,
            self.before,
            self.peak,
            self.kib_per_session(),
            self.cpu,
            100.0 * self.cpu / self.seconds as f64,
            self.commands as f64 / direct_commands as f64
        );
    }
}

/// Many sessions held open at once.
struct Held {
    sessions: usize,
    login_failures: Vec<String>,
    noop_failures: Vec<String>,
    open_secs: f64,
    rss_before: u64,
    rss_kib: u64,
    fds: (usize, String),
}

/// Opens `sessions` sessions through the proxy at `port`, `SCALE_CONCURRENCY` logins at a time,
/// reads the proxy's memory once all are open, then runs a NOOP on every one at once.
async fn hold(port: u16, logins: &[String], sessions: usize, procs: &dyn Processes) -> Held {
    let rss_before = procs.rss_kib();
    let gate = Arc::new(tokio::sync::Semaphore::new(SCALE_CONCURRENCY));
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let login = logins[i % logins.len()].clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                Conn::login(port, &login).await.map_err(|e| format!("{login}: {e}"))
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(sessions);
    let mut login_failures = Vec::new();
    for task in tasks {
        match task.await.expect("login task") {
            Ok(conn) => conns.push(conn),
            Err(e) => login_failures.push(e),
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_kib = procs.rss_kib();
    let fds = fds(procs.pids()[0]);
    let noops: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                match conn.command("NOOP").await {
                    Ok(reply) if reply.ok => Ok(()),
                    Ok(reply) => Err(reply.status),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .collect();
    let mut noop_failures = Vec::new();
    for noop in noops {
        if let Err(e) = noop.await.expect("NOOP task") {
            noop_failures.push(e);
        }
    }
    Held { sessions, login_failures, noop_failures, open_secs, rss_before, rss_kib, fds }
}

impl Held {
    fn errors(&self) -> usize {
        self.login_failures.len() + self.noop_failures.len()
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<18} opened {} of {} in {:.1} s, {} NOOPs failed; VmRSS {} KiB before, {} KiB with them \
             ({:.1} MB, {:.1} KiB per session); {} fds open, limit {}",
            self.sessions - self.login_failures.len(),
            self.sessions,
            self.open_secs,
            self.noop_failures.len(),
            self.rss_before,
            self.rss_kib,
            self.rss_kib as f64 / 1024.0,
            self.rss_kib.saturating_sub(self.rss_before) as f64 / self.sessions as f64,
            self.fds.0,
            self.fds.1
        );
        for e in self.login_failures.iter().chain(&self.noop_failures).take(5) {
            println!("    error: {e}");
        }
    }
}

/// The figures of the closing table: for coi-proxy, then nginx if it ran.
#[derive(Default)]
struct Summary {
    fetch: Vec<f64>,
    fetch_tls: Vec<f64>,
    noop: Vec<(f64, f64)>,
    idle: Vec<f64>,
    /// KiB per busy session, commands relative to direct.
    busy: Vec<(f64, f64)>,
    /// Direct's errors, then each proxy's.
    mix_errors: (u64, Vec<u64>),
    /// Errors, MB of RSS.
    scale: Vec<(usize, f64)>,
}

impl Summary {
    fn print(&self, with_nginx: bool, p: &Params) {
        let nginx = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!("Summary (coi-proxy and nginx; ratios to direct from the same run)");
        println!("  {:<34} {:>16} {:>16}   target", "", "coi-proxy", if with_nginx { "nginx" } else { "(no nginx)" });
        let row = |what: &str, coi: String, ngx: String, target: String| {
            println!("  {what:<34} {coi:>16} {ngx:>16}   {target}");
        };
        if let Some(&coi) = self.fetch.first() {
            let ngx = self.fetch.get(1).copied();
            let pass = coi >= TARGET_FETCH_RATIO && ngx.is_none_or(|n| coi >= n);
            row(
                "FETCH 100 MB, ratio",
                format!("{coi:.3}"),
                nginx(ngx.map(|n| format!("{n:.3}"))),
                format!(">= {TARGET_FETCH_RATIO} and >= nginx: {}", verdict(pass)),
            );
        }
        if let Some(&coi) = self.fetch_tls.first() {
            row(
                "FETCH TLS, ratio to direct TLS",
                format!("{coi:.3}"),
                nginx(self.fetch_tls.get(1).map(|n| format!("{n:.3} (TLS+plain)"))),
                String::new(),
            );
        }
        if let Some(&(c50, c99)) = self.noop.first() {
            let ngx = self.noop.get(1).copied();
            row(
                "NOOP added p50 / p99, µs",
                format!("{c50:+.1} / {c99:+.1}"),
                nginx(ngx.map(|(n50, n99)| format!("{n50:+.1} / {n99:+.1}"))),
                format!("p50 and p99 <= nginx's: {}", verdict(ngx.is_none_or(|(n50, n99)| c50 <= n50 && c99 <= n99))),
            );
        }
        if let Some(&coi) = self.idle.first() {
            let ngx = self.idle.get(1).copied();
            row(
                &format!("KiB per idle session ({})", p.idle_sessions),
                format!("{coi:.1}"),
                nginx(ngx.map(|n| format!("{n:.1}"))),
                format!("<= nginx's: {}", verdict(ngx.is_none_or(|n| coi <= n))),
            );
        }
        if let Some(&(kib, commands)) = self.busy.first() {
            let ngx = self.busy.get(1).copied();
            row(
                &format!("KiB per busy session ({})", p.mix_sessions),
                format!("{kib:.1}"),
                nginx(ngx.map(|n| format!("{:.1}", n.0))),
                format!("<= {TARGET_BUSY_KIB}: {}", verdict(kib <= TARGET_BUSY_KIB)),
            );
            row(
                "mixed load: commands, ratio",
                format!("{commands:.3}"),
                nginx(ngx.map(|n| format!("{:.3}", n.1))),
                String::new(),
            );
            let (direct, proxies) = &self.mix_errors;
            row(
                &format!("mixed load: errors (direct {direct})"),
                proxies[0].to_string(),
                nginx(proxies.get(1).map(u64::to_string)),
                format!("0: {}", verdict(proxies[0] == 0)),
            );
        }
        if let Some(&(errors, rss)) = self.scale.first() {
            let ngx = self.scale.get(1).copied();
            row(
                &format!("{} sessions: errors / RSS MB", p.scale),
                format!("{errors} / {rss:.1}"),
                nginx(ngx.map(|(e, r)| format!("{e} / {r:.1}"))),
                format!("0 / <= {TARGET_SCALE_MB}: {}", verdict(errors == 0 && rss <= TARGET_SCALE_MB)),
            );
        }
    }
}
