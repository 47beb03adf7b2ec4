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

use std::path::{Path, PathBuf};
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
/// Open files a proxy needs besides two sockets per session (listeners, epoll, its store, logs).
const FD_RESERVE: u64 = 64;
/// Logins in flight at once while the 10,000 sessions open.
const SCALE_CONCURRENCY: usize = 64;

/// Issue 19's targets that are not relative to nginx.
const TARGET_FETCH_RATIO: f64 = 0.98;
/// A third of the ~123 KB per busy session measured before issue 19.
const TARGET_BUSY_KIB: f64 = 41.0;
const TARGET_SCALE_MB: f64 = 150.0;

fn main() {
    let mut p = Params::from_env();
    println!("coi-proxy vs nginx's mail proxy vs direct (load average before: {})", load_average());
    let most = p.scale.max(p.mix_sessions).max(p.idle_sessions);
    // The bench holds every client socket; the proxies (which inherit the limit) two per session.
    let fd_limit = raise_fd_limit(2 * most as u64 + FD_RESERVE);
    let fits = (fd_limit.saturating_sub(FD_RESERVE) / 2) as usize;
    if p.scale > fits {
        println!(
            "The open-files limit ({fd_limit}, which this process cannot raise) fits {fits} sessions through one \
             coi-proxy process (two sockets each): the scale run opens {fits} instead of {}",
            p.scale
        );
        p.scale = fits;
    }
    let nginx_missing = Nginx::missing();
    if let Some(install) = &nginx_missing {
        println!("nginx's mail proxy is not installed ({install}): coi-proxy vs direct only");
    }
    let users: Vec<String> =
        ["alice".to_owned()].into_iter().chain((2..=USERS).map(|i| format!("user{i:02}"))).collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.clone()),
        password: Some(PASSWORD.into()),
        max_conns: Some(most as u32 + 100),
        imap_client_limit: Some(IMAP_CLIENT_LIMIT),
        ..Default::default()
    });
    let mut bench = Bench {
        logins: users.iter().map(|u| format!("{u}@example.org")).collect(),
        dovecot_key: provider.state_dir.join("tls/key.pem"),
        plain: format!("imap://127.0.0.1:{}", provider.imap_port),
        provider,
        with_nginx: nginx_missing.is_none(),
        problems: Vec::new(),
        nginx_problems: Vec::new(),
        summary: Summary::default(),
    };

    if p.fetch_rounds + p.tls_rounds + p.noop_rounds > 0 {
        let started = Instant::now();
        let stored = mailbox::fill(bench.provider.imap_port, &bench.logins[0]);
        println!(
            "{} messages, {:.1} MB in {}'s INBOX (APPENDed in {:.1} s); Dovecot imap processes serve {IMAP_CLIENT_LIMIT} sessions each\n",
            mailbox::MESSAGES,
            mb(stored),
            bench.logins[0],
            started.elapsed().as_secs_f64()
        );
        bench.fetch_and_noop(&p, stored);
        if p.tls_rounds > 0 {
            bench.fetch_tls(&p, stored);
        }
    }
    if p.idle_sessions > 0 {
        bench.idle(p.idle_sessions);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if p.mix_sessions > 0 {
        bench.mix(&runtime, p.mix_sessions, p.mix_seconds);
    }
    if p.scale > 0 {
        bench.scale(&runtime, p.scale);
    }
    bench.summary.print(bench.with_nginx, &p);
    print_problems(&[
        ("coi-proxy", bench.problems),
        ("nginx", bench.nginx_problems),
        ("Dovecot", log_problems(&bench.provider.log)),
    ]);
}

/// One run's Dovecot and what the phases collect.
struct Bench {
    provider: Provider,
    logins: Vec<String>,
    /// Dovecot's TLS key, which nginx's TLS listener uses too.
    dovecot_key: PathBuf,
    /// Dovecot's plain IMAP as coi-proxy's upstream.
    plain: String,
    with_nginx: bool,
    problems: Vec<String>,
    nginx_problems: Vec<String>,
    summary: Summary,
}

impl Bench {
    /// A fresh coi-proxy in front of `upstream`, for up to `sessions` sessions (all from
    /// 127.0.0.1).
    fn coi(&self, upstream: &str, ca_file: Option<&Path>, sessions: usize) -> Proxy {
        Proxy::start(&self.coi_config(upstream, ca_file, sessions))
    }

    fn coi_config(&self, upstream: &str, ca_file: Option<&Path>, sessions: usize) -> String {
        let ca = ca_file.map_or(String::new(), |f| format!("ca_file = {:?}\n", f.display().to_string()));
        format!(
            "[upstream]\nimap = \"{upstream}\"\n{ca}[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
             [limits]\nmax_sessions = {max}\nmax_sessions_per_ip = {max}\n",
            max = sessions + 100
        )
    }

    /// A fresh nginx in front of Dovecot's plain IMAP, if it is installed.
    fn nginx(&self, connections: usize) -> Option<Nginx> {
        self.with_nginx
            .then(|| Nginx::start(self.provider.imap_port, &self.provider.ca_cert, &self.dovecot_key, connections))
    }

    /// Keeps the proxies' log problems for the end of the report.
    fn done_with(&mut self, coi: Proxy, nginx: Option<Nginx>) {
        self.problems.extend(coi.problems());
        self.nginx_problems.extend(nginx.iter().flat_map(Nginx::problems));
    }

    /// One logged-in client per route, plain TCP: direct, coi-proxy, the other coi-proxy build
    /// and nginx (if running). All read the filled mailbox, or (`Users::Own`) each route has a
    /// user of its own: Dovecot serves sessions of one mailbox from one process, where one of
    /// them at a time keeps the mailbox list's index open and checks it on every NOOP (two
    /// more system calls, ~2.5 µs here), which would make one route slower for reasons of
    /// Dovecot's (bench/README.md).
    fn routes<'a>(
        &self,
        coi: &'a Proxy,
        coi_b: Option<&'a Proxy>,
        nginx: Option<&'a Nginx>,
        buffer: usize,
        users: Users,
    ) -> Vec<Route<'a>> {
        let user = |route: usize| match users {
            Users::Shared => &self.logins[0],
            Users::Own => &self.logins[1 + route],
        };
        let mut routes = vec![
            Route { name: "direct", client: Client::login(self.provider.imap_port, user(0), buffer), procs: None },
            Route { name: "coi-proxy", client: Client::login(coi.port, user(1), buffer), procs: Some(coi) },
        ];
        if let Some(b) = coi_b {
            let client = Client::login(b.port, user(routes.len()), buffer);
            routes.push(Route { name: "coi-proxy B", client, procs: Some(b) });
        }
        if let Some(nginx) = nginx {
            let client = Client::login(nginx.port, user(routes.len()), buffer);
            routes.push(Route { name: "nginx", client, procs: Some(nginx) });
        }
        routes
    }

    /// FETCH and NOOP over plain TCP.
    fn fetch_and_noop(&mut self, p: &Params, stored: u64) {
        let coi = self.coi(&self.plain, None, 100);
        let coi_b = p.coi_b.as_ref().map(|bin| Proxy::start_binary(bin, &self.coi_config(&self.plain, None, 100)));
        let nginx = self.nginx(100);
        if p.fetch_rounds > 0 {
            let mut routes = self.routes(&coi, coi_b.as_ref(), nginx.as_ref(), FAST_BUFFER, Users::Shared);
            let fetch = measure::fetch(&mut routes, p.fetch_rounds, stored, &common::dovecot(&self.provider));
            fetch.print("FETCH throughput, UID FETCH 1:* BODY.PEEK[], plain TCP", &routes);
            self.summary.fetch = summary_routes(&routes).map(|i| median(&fetch.ratios(i))).collect();
            println!();
        }
        if p.noop_rounds > 0 {
            let mut routes = self.routes(&coi, coi_b.as_ref(), nginx.as_ref(), SMALL_BUFFER, Users::Own);
            let noop = measure::noop(&mut routes, p.noop_rounds, p.noops);
            noop.print(&routes, p.noops);
            self.summary.noop = summary_routes(&routes)
                .map(|i| {
                    let (a50, a99) = noop.added(i);
                    (median(&a50), median(&a99))
                })
                .collect();
            println!();
        }
        self.problems.extend(coi_b.iter().flat_map(Proxy::problems));
        self.done_with(coi, nginx);
    }

    /// FETCH with TLS from the client to the proxy, and from the proxy to Dovecot (nginx
    /// cannot do the latter; its TLS-to-the-client-only figure is for information).
    fn fetch_tls(&mut self, p: &Params, stored: u64) {
        let imaps = format!("imaps://127.0.0.1:{}", self.provider.imaps_port);
        let coi = self.coi(&imaps, Some(&self.provider.ca_cert), 100);
        let nginx = self.nginx(100);
        let dovecot_tls = Tls::pinned(&self.provider.ca_cert);
        let coi_tls = Tls::pinned(&coi.tls_cert());
        let login = |name, port, tls, procs| Route {
            name,
            client: Client::login_over(port, Some(tls), &self.logins[0], FAST_BUFFER),
            procs,
        };
        let mut routes = vec![
            login("direct TLS", self.provider.imaps_port, &dovecot_tls, None),
            login("coi-proxy TLS+TLS", coi.tls_port.expect("imaps listener"), &coi_tls, Some(&coi as &dyn Processes)),
        ];
        if let Some(nginx) = &nginx {
            routes.push(login("nginx TLS+plain", nginx.tls_port, &dovecot_tls, Some(nginx)));
        }
        let fetch = measure::fetch(&mut routes, p.tls_rounds, stored, &common::dovecot(&self.provider));
        fetch.print("FETCH throughput, TLS from the client (and from coi-proxy to Dovecot)", &routes);
        self.summary.fetch_tls = (1..routes.len()).map(|i| median(&fetch.ratios(i))).collect();
        println!();
        drop(routes);
        self.done_with(coi, nginx);
    }

    /// Memory per idle session, each proxy fresh so that memory kept from earlier phases cannot
    /// hide the cost.
    fn idle(&mut self, sessions: usize) {
        measure::Idle::print_header(sessions);
        let coi = self.coi(&self.plain, None, sessions);
        let idle = measure::idle(coi.port, &self.logins, sessions, &coi);
        idle.print("coi-proxy");
        self.summary.idle.push(idle.kib_per_session());
        self.done_with(coi, None);
        if let Some(nginx) = self.nginx(sessions) {
            let idle = measure::idle(nginx.port, &self.logins, sessions, &nginx);
            idle.print("nginx (workers)");
            self.summary.idle.push(idle.kib_per_session());
            self.nginx_problems.extend(nginx.problems());
        }
        println!();
    }

    /// The mixed load over every route in turn; alice's 100 MB INBOX is left out.
    fn mix(&mut self, runtime: &tokio::runtime::Runtime, sessions: usize, seconds: u64) {
        let logins = self.logins[1..].to_vec();
        runtime.block_on(mix::seed(self.provider.imap_port, &logins));
        println!(
            "Mixed load: {sessions} sessions over {} users, {seconds} s per route (logins spread over the first tenth)",
            logins.len(),
        );
        LoadResult::print_header();
        let direct = runtime.block_on(mix::run_load(self.provider.imap_port, &logins, sessions, seconds, None));
        direct.print("direct");
        let mut busy = Vec::new();
        let mut run = |name: &str, port: u16, procs: &dyn Processes| {
            // Let Dovecot reap the previous route's sessions first.
            std::thread::sleep(Duration::from_secs(5));
            let (rss, cpu) = (procs.rss_kib(), procs.cpu_secs());
            let result = runtime.block_on(mix::run_load(port, &logins, sessions, seconds, Some(procs)));
            result.print(name);
            result.print_errors(name);
            busy.push(Busy {
                name: name.to_owned(),
                before: rss,
                peak: result.peak_rss_kib,
                cpu: procs.cpu_secs() - cpu,
                commands: result.commands(),
                errors: result.errors(),
                sessions,
                seconds,
            });
        };
        let coi = self.coi(&self.plain, None, sessions);
        run("coi-proxy", coi.port, &coi);
        self.done_with(coi, None);
        if let Some(nginx) = self.nginx(sessions) {
            run("nginx", nginx.port, &nginx);
            self.nginx_problems.extend(nginx.problems());
        }
        direct.print_errors("direct");
        for b in &busy {
            b.print(direct.commands());
        }
        self.summary.busy =
            busy.iter().map(|b| (b.kib_per_session(), b.commands as f64 / direct.commands() as f64)).collect();
        self.summary.mix_errors = (direct.errors(), busy.iter().map(|b| b.errors).collect());
        println!();
    }

    /// Many concurrent sessions through each proxy.
    fn scale(&mut self, runtime: &tokio::runtime::Runtime, sessions: usize) {
        println!(
            "{sessions} concurrent sessions (LOGIN + SELECT INBOX, {SCALE_CONCURRENCY} logins in flight), then a NOOP on each"
        );
        std::thread::sleep(Duration::from_secs(5));
        let coi = self.coi(&self.plain, None, sessions);
        let held = runtime.block_on(hold(coi.port, &self.logins, sessions, &coi));
        held.print("coi-proxy");
        self.summary.scale.push((held.errors(), held.rss_kib as f64 / 1024.0));
        self.done_with(coi, None);
        if let Some(nginx) = self.nginx(sessions) {
            std::thread::sleep(Duration::from_secs(5));
            let held = runtime.block_on(hold(nginx.port, &self.logins, sessions, &nginx));
            held.print("nginx (workers)");
            self.summary.scale.push((held.errors(), held.rss_kib as f64 / 1024.0));
            self.nginx_problems.extend(nginx.problems());
        }
        println!();
    }
}

/// What the environment may change (defaults in brackets): `PEERS_FETCH_ROUNDS` [150],
/// `PEERS_TLS_ROUNDS` [10], `PEERS_NOOP_ROUNDS` [30], `PEERS_NOOPS` [10000] per route and round,
/// `PEERS_IDLE_SESSIONS` [500], `PEERS_MIX_SESSIONS` [1000] (0 skips the mix),
/// `PEERS_MIX_SECONDS` [60] per route, `PEERS_SCALE` [10000] (0 skips it); `PEERS_COI_B`, the
/// path of another coi-proxy build, adds it as a route "coi-proxy B" to the plain FETCH and NOOP
/// (an A/B comparison of a change within one run).
struct Params {
    coi_b: Option<PathBuf>,
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
            coi_b: std::env::var_os("PEERS_COI_B").map(PathBuf::from),
            fetch_rounds: env_usize("PEERS_FETCH_ROUNDS", 150),
            tls_rounds: env_usize("PEERS_TLS_ROUNDS", 10),
            noop_rounds: env_usize("PEERS_NOOP_ROUNDS", 30),
            noops: env_usize("PEERS_NOOPS", 10_000),
            idle_sessions: env_usize("PEERS_IDLE_SESSIONS", 500),
            mix_sessions: env_usize("PEERS_MIX_SESSIONS", 1_000),
            mix_seconds: env_usize("PEERS_MIX_SECONDS", 60) as u64,
            scale: env_usize("PEERS_SCALE", 10_000),
        }
    }
}

/// The routes of the closing table: coi-proxy and nginx (not direct, not coi-proxy B).
fn summary_routes<'a>(routes: &'a [Route]) -> impl Iterator<Item = usize> + 'a {
    (1..routes.len()).filter(|&i| routes[i].name != "coi-proxy B")
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

/// Whose mailbox the routes of one measurement read ([`Bench::routes`]).
#[derive(Clone, Copy)]
enum Users {
    /// All the first user's (the filled mailbox).
    Shared,
    /// Each route a user of its own.
    Own,
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
