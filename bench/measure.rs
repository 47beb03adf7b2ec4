//! The measurements the proxy benches share, run over several routes to the same Dovecot (direct,
//! coi-proxy, nginx, ...) in one run: FETCH throughput and NOOP latency with the routes taking
//! turns so that noise hits them alike, and the memory a proxy holds per idle session. Route 0 is
//! the baseline the others are compared with, round by round.

use std::time::{Duration, Instant};

use crate::client::{Client, SMALL_BUFFER};
use crate::common::{Processes, Rng, fds, mb, median, min_max, percentile, thread_cpu_secs};

/// One way to the Dovecot, with one logged-in client.
pub struct Route<'a> {
    pub name: &'static str,
    pub client: Client,
    /// The proxy's processes, whose CPU time counts (none for the direct route).
    pub procs: Option<&'a dyn Processes>,
}

/// `UID FETCH 1:* BODY.PEEK[]` timings.
pub struct Fetch {
    /// Bytes of each response before the tagged status.
    pub bytes: u64,
    /// Seconds, per route and round.
    pub secs: Vec<Vec<f64>>,
    /// CPU seconds over all rounds, per route: the client, Dovecot, the proxy (if any).
    pub cpu: Vec<[f64; 3]>,
}

/// FETCHes the whole mailbox over every route, once untimed (to warm Dovecot's caches), then
/// `rounds` times, each round in a new random order of the routes; every response must carry the stored
/// message bytes and the same total. Counts the CPU time of the client (this thread), of
/// `dovecot` and of the route's proxy.
pub fn fetch(routes: &mut [Route], rounds: usize, stored: u64, dovecot: &dyn Processes) -> Fetch {
    let mut bytes = 0;
    let mut once = |route: &mut Route| {
        let cpu = |route: &Route| [thread_cpu_secs(), dovecot.cpu_secs(), route.procs.map_or(0.0, |p| p.cpu_secs())];
        let before = cpu(route);
        let started = Instant::now();
        let response = route.client.run("UID FETCH 1:* BODY.PEEK[]");
        let secs = started.elapsed().as_secs_f64();
        let after = cpu(route);
        assert_eq!(
            response.literal_bytes, stored,
            "{}: the FETCH returned other message bytes than stored",
            route.name
        );
        if bytes == 0 {
            bytes = response.bytes;
        }
        assert_eq!(response.bytes, bytes, "{}: the FETCH response differs in size", route.name);
        (secs, [0, 1, 2].map(|k| after[k] - before[k]))
    };
    for route in routes.iter_mut() {
        once(route);
    }
    let n = routes.len();
    let mut secs = vec![Vec::new(); n];
    let mut cpu = vec![[0.0; 3]; n];
    let mut rng = Rng(0x5eed_f37c);
    for _ in 0..rounds {
        for i in shuffled(n, &mut rng) {
            let (s, c) = once(&mut routes[i]);
            secs[i].push(s);
            for k in 0..3 {
                cpu[i][k] += c[k];
            }
        }
    }
    Fetch { bytes, secs, cpu }
}

impl Fetch {
    /// MB/s of each round.
    pub fn rates(&self, route: usize) -> Vec<f64> {
        self.secs[route].iter().map(|s| mb(self.bytes) / s).collect()
    }

    /// Each round's throughput relative to route 0's in the same round.
    pub fn ratios(&self, route: usize) -> Vec<f64> {
        self.secs[route].iter().zip(&self.secs[0]).map(|(s, base)| base / s).collect()
    }

    pub fn print(&self, title: &str, routes: &[Route]) {
        let rounds = self.secs[0].len();
        println!("{title} ({:.1} MB response; {rounds} rounds, the routes in a new random order each)", mb(self.bytes));
        println!(
            "  {:<18} {:>9} {:>9}   {:>16} {:>17}   CPU ms per 100 MB: client Dovecot proxy = sum",
            "", "MB/s", "best", "ratio (median)", "spread of rounds"
        );
        for (i, route) in routes.iter().enumerate() {
            let rates = self.rates(i);
            let best = min_max(&rates).1;
            let ratio = if i == 0 {
                format!("{:>16} {:>17}", "-", "-")
            } else {
                let ratios = self.ratios(i);
                let (lo, hi) = min_max(&ratios);
                format!("{:>16.3} {:>17}", median(&ratios), format!("{lo:.3} .. {hi:.3}"))
            };
            let per_100mb = self.cpu[i].map(|c| c * 1e3 * 100.0 / (rounds as f64 * mb(self.bytes)));
            let cpu = format!(
                "{:>6.1} {:>7.1} {:>5.1} = {:.1}",
                per_100mb[0],
                per_100mb[1],
                per_100mb[2],
                per_100mb.iter().sum::<f64>()
            );
            println!("  {:<18} {:>9.1} {best:>9.1}   {ratio}   {cpu}", route.name, median(&rates));
        }
    }
}

/// The routes `0..n` in a random order: each round takes them in a new one, so that no route
/// always follows the same other (whose after-effects, e.g. caches or a busy core, it would
/// always inherit) and none always goes first.
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// NOOPs sent over every route before timing, so connection warm-up is not measured.
const NOOP_WARMUP: usize = 500;
/// NOOPs one route runs before the next takes its turn.
const NOOP_BLOCK: usize = 100;

/// NOOP round trips: (p50, p99) in µs per route and round.
pub struct Noop(pub Vec<Vec<(f64, f64)>>);

/// `rounds` rounds of `per_round` sequential NOOPs per route on the selected INBOX, each timed
/// from write to tagged OK. Within a round the routes take turns in blocks of 100 NOOPs (in a new
/// random order each time), so that a noisy second hits all of them alike.
pub fn noop(routes: &mut [Route], rounds: usize, per_round: usize) -> Noop {
    for route in routes.iter_mut() {
        for _ in 0..NOOP_WARMUP {
            route.client.run("NOOP");
        }
    }
    let n = routes.len();
    let mut result = vec![Vec::new(); n];
    let mut rng = Rng(0x5eed_4009);
    for _ in 0..rounds {
        let mut micros = vec![Vec::with_capacity(per_round); n];
        for block in 0..per_round.div_ceil(NOOP_BLOCK) {
            for i in shuffled(n, &mut rng) {
                for _ in 0..NOOP_BLOCK.min(per_round - block * NOOP_BLOCK) {
                    let started = Instant::now();
                    routes[i].client.run("NOOP");
                    micros[i].push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        for (i, mut m) in micros.into_iter().enumerate() {
            m.sort_by(f64::total_cmp);
            result[i].push((percentile(&m, 0.50), percentile(&m, 0.99)));
        }
    }
    Noop(result)
}

impl Noop {
    /// What the route adds to route 0's p50 and p99, per round.
    pub fn added(&self, route: usize) -> (Vec<f64>, Vec<f64>) {
        self.0[route].iter().zip(&self.0[0]).map(|(r, base)| (r.0 - base.0, r.1 - base.1)).unzip()
    }

    pub fn print(&self, routes: &[Route], per_round: usize) {
        let rounds = self.0[0].len();
        println!(
            "NOOP round trip, {per_round} sequential per route and round, in turns of {NOOP_BLOCK} (median of {rounds} rounds)"
        );
        println!(
            "  {:<18} {:>9} {:>9}   {:>9} {:>17}   {:>9} {:>17}",
            "", "p50 µs", "p99 µs", "added p50", "spread", "added p99", "spread"
        );
        for (i, route) in routes.iter().enumerate() {
            let p50 = median(&self.0[i].iter().map(|r| r.0).collect::<Vec<_>>());
            let p99 = median(&self.0[i].iter().map(|r| r.1).collect::<Vec<_>>());
            let added = if i == 0 {
                String::new()
            } else {
                let (a50, a99) = self.added(i);
                let spread = |v: &[f64]| {
                    let (lo, hi) = min_max(v);
                    format!("{lo:+.1} .. {hi:+.1}")
                };
                format!("{:>+9.1} {:>17}   {:>+9.1} {:>17}", median(&a50), spread(&a50), median(&a99), spread(&a99))
            };
            println!("  {:<18} {p50:>9.1} {p99:>9.1}   {added}", route.name);
        }
    }
}

/// A proxy's memory (KiB) around authenticated, selected, idle sessions.
pub struct Idle {
    pub sessions: usize,
    pub before: u64,
    pub with_sessions: u64,
    pub after_close: u64,
    pub open_secs: f64,
    /// Open fds and their limit, of the first of the proxy's processes.
    pub fds: (usize, String),
}

/// Opens `sessions` sessions (LOGIN + SELECT INBOX, one after the other, spread over `logins`)
/// through the proxy at `port` and leaves them idle; reads the proxy's RSS before, with them
/// and after closing them. One session is opened and closed first, so that one-time setup is in
/// the baseline.
pub fn idle(port: u16, logins: &[String], sessions: usize, procs: &dyn Processes) -> Idle {
    drop(Client::login(port, &logins[0], SMALL_BUFFER));
    settle();
    let before = procs.rss_kib();
    let started = Instant::now();
    let open: Vec<Client> =
        (0..sessions).map(|i| Client::login(port, &logins[i % logins.len()], SMALL_BUFFER)).collect();
    let open_secs = started.elapsed().as_secs_f64();
    settle();
    let with_sessions = procs.rss_kib();
    let fds = fds(procs.pids()[0]);
    drop(open);
    settle();
    Idle { sessions, before, with_sessions, after_close: procs.rss_kib(), open_secs, fds }
}

impl Idle {
    pub fn kib_per_session(&self) -> f64 {
        self.with_sessions.saturating_sub(self.before) as f64 / self.sessions as f64
    }

    pub fn print(&self, name: &str) {
        println!(
            "  {name:<18} {:>9} {:>9} {:>9}   {:>8.1}   (opened in {:.1} s; {} fds open, limit {})",
            self.before,
            self.with_sessions,
            self.after_close,
            self.kib_per_session(),
            self.open_secs,
            self.fds.0,
            self.fds.1
        );
    }

    pub fn print_header(sessions: usize) {
        println!("Memory (VmRSS, KiB), {sessions} idle sessions (LOGIN + SELECT INBOX, opened one after the other)");
        println!("  {:<18} {:>9} {:>9} {:>9}   {:>8}", "", "before", "with", "closed", "KiB/sess");
    }
}

/// Gives a proxy time to finish handling what was just sent before its memory is read.
fn settle() {
    std::thread::sleep(Duration::from_secs(1));
}
