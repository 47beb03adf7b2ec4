//! Who may have a password checked now, decided before the provider is asked.
//!
//! A provider slows down failed logins per client address (Dovecot's auth penalty, rate limits
//! elsewhere); all logins reach it from the proxy's address, so one guesser used to slow down
//! everyone. The proxy therefore keeps its own books: after a failed login the account, and
//! after [`ADDRESS_FREE`] + 1 failures the client address, are under a back-off that doubles
//! per failure (1 s, 2 s, … up to [`ADDRESS_CAP`] and [`ACCOUNT_CAP`]; a typo blocks no one
//! else who shares the user's address); a login from an address or for an account under
//! back-off is refused here, with the provider's usual answer, and never reaches the provider.
//! Only logins the provider refused count: refusals made here do not prolong a back-off, and
//! the same wrong password again (a phone with an old password) counts once.
//!
//! A login whose password matches the one the provider last accepted for the account (kept as
//! a salted SHA-256 in memory, never the password) is never held back: other people's failures
//! cannot lock the account's owner out. A success clears the account's own record only; it
//! never clears an address's record, nor another account's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::group;

/// Failures of an address that put it under no back-off yet (a user's typos; the answer
/// delay grows from the first one all the same).
pub const ADDRESS_FREE: u32 = 2;
/// Longest back-off of a client address.
pub const ADDRESS_CAP: Duration = Duration::from_secs(60);
/// Longest back-off of an account.
pub const ACCOUNT_CAP: Duration = Duration::from_secs(5 * 60);
/// Longest wait before a failed login is answered.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Records kept at most per kind; an attacker with many addresses or account names must not
/// grow the maps without bound (beyond it, the oldest records go first).
const MAX_RECORDS: usize = 10_000;
/// Verified passwords kept at most (one per account that logged in).
const MAX_VERIFIED: usize = 100_000;

/// What the gate says about a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Ask the provider.
    Ask,
    /// Refuse it here: the client address is under back-off.
    AddressBackoff,
    /// Refuse it here: the account is under back-off.
    AccountBackoff,
}

/// Failed logins of one address or account.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    /// A hash of the last refused password (salted with the gate's key), so that the same
    /// wrong password again counts once.
    last_password: [u8; 32],
}

impl Record {
    fn blocked_until(&self, free: u32, cap: Duration) -> Instant {
        self.last + backoff(self.failures.saturating_sub(free), cap)
    }
}

/// `2^(failures-1)` seconds, at most `cap`; nothing before the first failure.
fn backoff(failures: u32, cap: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 1).min(20)).min(cap)
}

struct Verified {
    salt: [u8; 16],
    hash: [u8; 32],
    at: Instant,
}

#[derive(Default)]
struct Books {
    addresses: HashMap<IpAddr, Record>,
    accounts: HashMap<String, Record>,
    verified: HashMap<String, Verified>,
}

/// The login gate of the daemon (IMAP and SMTP share it).
pub struct Logins {
    books: Mutex<Books>,
    /// Salt of the refused-password hashes (per process).
    key: [u8; 16],
}

impl Default for Logins {
    fn default() -> Self {
        Logins { books: Mutex::default(), key: random() }
    }
}

fn random() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    // Without randomness the hashes are still hashes; only their salt is weaker.
    let _ = getrandom::getrandom(&mut bytes);
    bytes
}

fn hash(salt: &[u8], account: &str, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update((account.len() as u64).to_be_bytes());
    h.update(account.as_bytes());
    h.update(password);
    h.finalize().into()
}

/// Equal without an early exit (no timing hint about where they differ).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Drops forgotten records; if still full, the oldest.
fn prune<K: Clone + Eq + std::hash::Hash>(map: &mut HashMap<K, Record>, now: Instant) {
    if map.len() < MAX_RECORDS {
        return;
    }
    map.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
    while map.len() >= MAX_RECORDS {
        let Some(oldest) = map.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| k.clone()) else { break };
        map.remove(&oldest);
    }
}

impl Logins {
    /// Whether a login of `account` from `peer` with `password` goes to the provider.
    pub fn check(&self, peer: IpAddr, account: &str, password: &[u8], now: Instant) -> Gate {
        let books = self.books.lock().expect("login books");
        if let Some(v) = books.verified.get(account)
            && same(&hash(&v.salt, account, password), &v.hash)
        {
            return Gate::Ask;
        }
        let live =
            |r: &Record, free, cap| now.duration_since(r.last) < FORGET_AFTER && now < r.blocked_until(free, cap);
        if books.addresses.get(&group(peer)).is_some_and(|r| live(r, ADDRESS_FREE, ADDRESS_CAP)) {
            return Gate::AddressBackoff;
        }
        if books.accounts.get(account).is_some_and(|r| live(r, 0, ACCOUNT_CAP)) {
            return Gate::AccountBackoff;
        }
        Gate::Ask
    }

    /// The provider refused `account`'s login from `peer`: both go under back-off (longer if
    /// they already were). Returns how long to wait before answering: `base`, doubled per
    /// recent failure from the address, at most 30 s.
    pub fn failed(&self, peer: IpAddr, account: &str, password: &[u8], base: Duration, now: Instant) -> Duration {
        let refused = hash(&self.key, account, password);
        let mut books = self.books.lock().expect("login books");
        let books = &mut *books;
        prune(&mut books.addresses, now);
        prune(&mut books.accounts, now);
        let address = count(books.addresses.entry(group(peer)).or_insert_with(|| fresh(now)), refused, now);
        count(books.accounts.entry(account.to_string()).or_insert_with(|| fresh(now)), refused, now);
        delay(base, address)
    }

    /// How long to wait before answering a login refused here: as long as the address's
    /// failures make a provider's refusal wait, so that the two cannot be told apart.
    pub fn refusal_delay(&self, peer: IpAddr, base: Duration) -> Duration {
        let books = self.books.lock().expect("login books");
        delay(base, books.addresses.get(&group(peer)).map_or(1, |r| r.failures.max(1)))
    }

    /// The provider accepted `account` with `password`: it is the verified one from now on,
    /// and the account's failures are forgotten. Addresses and other accounts keep theirs.
    pub fn succeeded(&self, account: &str, password: &[u8], now: Instant) {
        let salt = random();
        let verified = Verified { salt, hash: hash(&salt, account, password), at: now };
        let mut books = self.books.lock().expect("login books");
        books.accounts.remove(account);
        if books.verified.len() >= MAX_VERIFIED && !books.verified.contains_key(account) {
            let oldest = books.verified.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                books.verified.remove(&oldest);
            }
        }
        books.verified.insert(account.to_string(), verified);
    }
}

fn fresh(now: Instant) -> Record {
    Record { failures: 0, last: now, last_password: [0; 32] }
}

/// One more provider refusal on `record`; the failures it counts now.
fn count(record: &mut Record, refused: [u8; 32], now: Instant) -> u32 {
    if now.duration_since(record.last) >= FORGET_AFTER {
        record.failures = 0;
    }
    if record.failures == 0 || !same(&record.last_password, &refused) {
        record.failures += 1;
    }
    record.last = now;
    record.last_password = refused;
    record.failures
}

fn delay(base: Duration, failures: u32) -> Duration {
    if base.is_zero() {
        return base;
    }
    base.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_DELAY.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_put_address_and_account_under_a_doubling_back_off() {
        let gate = Logins::default();
        let t0 = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(gate.check(a, "bob", b"guess1", t0), Gate::Ask);
        gate.failed(a, "bob", b"guess1", Duration::ZERO, t0);
        // The account, from any address; the address not yet (a typo).
        assert_eq!(gate.check(b, "bob", b"guess2", t0 + S / 2), Gate::AccountBackoff);
        assert_eq!(gate.check(a, "carol", b"x", t0 + S / 2), Gate::Ask);
        assert_eq!(gate.check(a, "bob", b"guess2", t0 + S), Gate::Ask, "1 s after the first failure");
        gate.failed(b, "bob", b"guess2", Duration::ZERO, t0 + S);
        assert_eq!(gate.check(ip("192.0.2.3"), "bob", b"guess3", t0 + 2 * S), Gate::AccountBackoff, "2 s now");
        assert_eq!(gate.check(ip("192.0.2.3"), "bob", b"guess3", t0 + 3 * S), Gate::Ask);
        // The third failure from an address puts it under back-off, for any account.
        gate.failed(a, "carol", b"x1", Duration::ZERO, t0 + 3 * S);
        assert_eq!(gate.check(a, "dave", b"x", t0 + 3 * S), Gate::Ask);
        gate.failed(a, "erin", b"x2", Duration::ZERO, t0 + 3 * S);
        assert_eq!(gate.check(a, "dave", b"x", t0 + 3 * S + S / 2), Gate::AddressBackoff);
        assert_eq!(gate.check(a, "dave", b"x", t0 + 4 * S), Gate::Ask);
        // Doubling up to the caps.
        let mut t = t0 + 3 * S;
        for i in 0..20 {
            gate.failed(a, "dave", format!("g{i}").as_bytes(), Duration::ZERO, t);
            t += 30 * 60 * S / 60;
        }
        assert_eq!(gate.check(a, "x", b"x", t - 30 * S + ADDRESS_CAP), Gate::Ask);
        assert_eq!(backoff(3, ACCOUNT_CAP), 4 * S);
        assert_eq!(backoff(30, ACCOUNT_CAP), ACCOUNT_CAP);
        assert_eq!(backoff(30, ADDRESS_CAP), ADDRESS_CAP);
    }

    #[test]
    fn the_verified_password_is_never_held_back() {
        let gate = Logins::default();
        let t0 = Instant::now();
        let attacker = ip("198.51.100.7");
        gate.succeeded("bob", b"right", t0);
        for i in 0..10 {
            gate.failed(attacker, "bob", format!("guess{i}").as_bytes(), Duration::ZERO, t0);
        }
        assert_eq!(gate.check(ip("192.0.2.1"), "bob", b"guess", t0), Gate::AccountBackoff);
        assert_eq!(gate.check(ip("192.0.2.1"), "bob", b"right", t0), Gate::Ask);
        assert_eq!(gate.check(attacker, "bob", b"right", t0), Gate::Ask, "even from the guesser's address");
        // The hash belongs to the account: the same password for another account is not verified.
        assert_eq!(gate.check(attacker, "carol", b"right", t0), Gate::AddressBackoff);
    }

    #[test]
    fn a_success_clears_only_its_own_account() {
        let gate = Logins::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..3 {
            gate.failed(a, "bob", format!("wrong{i}").as_bytes(), Duration::ZERO, t0);
        }
        gate.failed(ip("192.0.2.9"), "carol", b"wrong", Duration::ZERO, t0);
        gate.succeeded("alice", b"right", t0);
        assert_eq!(gate.check(a, "dave", b"x", t0), Gate::AddressBackoff, "alice's success cleared nothing");
        assert_eq!(gate.check(ip("192.0.2.5"), "carol", b"x", t0), Gate::AccountBackoff);
        gate.succeeded("carol", b"right", t0);
        assert_eq!(gate.check(ip("192.0.2.5"), "carol", b"x", t0), Gate::Ask);
    }

    #[test]
    fn the_same_wrong_password_counts_once() {
        let gate = Logins::default();
        let t0 = Instant::now();
        let phone = ip("192.0.2.1");
        for i in 0..5 {
            gate.failed(phone, "bob", b"old password", Duration::ZERO, t0 + i * 10 * S);
        }
        let t = t0 + 40 * S;
        assert_eq!(gate.check(ip("192.0.2.2"), "bob", b"new", t + S), Gate::Ask, "still a 1 s back-off");
    }

    #[test]
    fn answer_delays_double_per_address_and_refusals_wait_as_long() {
        let gate = Logins::default();
        let t0 = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        let base = Duration::from_millis(100);
        let delays: Vec<u128> =
            (0..4).map(|i| gate.failed(a, "x", format!("{i}").as_bytes(), base, t0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800]);
        assert_eq!(gate.refusal_delay(a, base), Duration::from_millis(800));
        assert_eq!(gate.refusal_delay(b, base), base);
        assert_eq!(gate.failed(a, "x", b"y", Duration::ZERO, t0), Duration::ZERO);
        // An IPv6 /64 is one client.
        for i in 0..3 {
            gate.failed(b, "y", format!("z{i}").as_bytes(), Duration::ZERO, t0);
        }
        assert_eq!(gate.check(ip("2001:db8::2"), "q", b"x", t0), Gate::AddressBackoff);
    }

    #[test]
    fn the_books_stay_bounded() {
        let gate = Logins::default();
        let t0 = Instant::now();
        for i in 0..(MAX_RECORDS as u32 + 50) {
            let addr = IpAddr::from(i.to_be_bytes());
            gate.failed(addr, &format!("user{i}"), b"x", Duration::ZERO, t0 + Duration::from_millis(i as u64));
        }
        let books = gate.books.lock().unwrap();
        assert!(books.addresses.len() <= MAX_RECORDS && books.accounts.len() <= MAX_RECORDS);
    }
}
