//! The OpenPGP gateway's CPU costs (issue 14's closing figures, issue 15's view): key generation,
//! encrypt+sign and decrypt+verify of 1 KB and 20 KB messages in Delta Chat's shape, and the
//! decrypted view. Pure CPU, no provider; one core.
//!
//! Run with `cargo bench --bench openpgp` (`OPENPGP_ROUNDS`, default 200, per figure; key
//! generation runs a tenth of that); bench/README.md has the figures.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::hint::black_box;
use std::time::{Duration, Instant};

use coi_proxy::openpgp::autocrypt::PreferEncrypt;
use coi_proxy::openpgp::decrypt::{NoKeys, SignatureStatus, decrypt};
use coi_proxy::openpgp::encrypt::{Options, encrypt};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::view::{self, View};

use common::Rng;

/// Median, 90th percentile and mean of the timings.
fn summary(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    let n = times.len();
    let mean = times.iter().sum::<Duration>() / n as u32;
    (times[n / 2], times[(n * 9 / 10).min(n - 1)], mean)
}

fn print(what: &str, times: Vec<Duration>) {
    let n = times.len();
    let (p50, p90, mean) = summary(times);
    println!(
        "  {what:<38} median {:>8.3} ms   p90 {:>8.3} ms   mean {:>8.3} ms   ({n} runs)",
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
}

fn time<T>(rounds: usize, mut f: impl FnMut(usize) -> T) -> Vec<Duration> {
    (0..rounds)
        .map(|i| {
            let t = Instant::now();
            black_box(f(i));
            t.elapsed()
        })
        .collect()
}

/// A plain client's message of about `size` bytes of text.
fn message(size: usize, rng: &mut Rng) -> Vec<u8> {
    let mut body = String::with_capacity(size + 80);
    let words = ["chat", "over", "imap", "proxy", "delta", "mail", "key", "gossip", "hello", "group"];
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
        "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: Benchmark\r\n\
         Date: Sat, 5 Dec 2026 19:35:50 +0000\r\nMessage-ID: <bench@example.org>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
    .into_bytes()
}

fn main() {
    let rounds: usize = std::env::var("OPENPGP_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    println!("OpenPGP gateway, one core, {rounds} runs per figure");

    let keygen = time((rounds / 10).max(5), |_| AccountKey::generate("alice@example.org").unwrap());
    print("key generation (Ed25519 + X25519)", keygen);

    let alice = AccountKey::generate("alice@example.org").unwrap();
    let bob = AccountKey::generate("bob@example.org").unwrap();
    let to = vec![("bob@example.org".to_string(), bob.public_key().clone())];
    let options = Options::mail(PreferEncrypt::Mutual, 1_796_499_350);
    let mut rng = Rng(0x5eed);
    for size in [1024, 20 * 1024] {
        let plain = message(size, &mut rng);
        let label = format!("{} KB", size / 1024);
        let encrypted: Vec<Vec<u8>> = (0..rounds).map(|_| encrypt(&plain, &alice, &to, &options).unwrap()).collect();
        print(&format!("encrypt + sign, {label}"), time(rounds, |_| encrypt(&plain, &alice, &to, &options).unwrap()));
        print(
            &format!("decrypt + verify, {label}"),
            time(rounds, |i| {
                let d = decrypt(&encrypted[i], &bob, &NoKeys).unwrap();
                assert_eq!(d.signature, SignatureStatus::Valid(alice.fingerprint().clone()));
                d
            }),
        );
        print(
            &format!("decrypted view, {label}"),
            time(rounds, |i| {
                let v = view::render(&encrypted[i], &bob);
                assert!(matches!(v, View::Decrypted { .. }));
                v
            }),
        );
        println!("    ({label} message: {} bytes plain, {} bytes encrypted)", plain.len(), encrypted[0].len());
    }
    let delta_chat =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deltachat/one-to-one.eml")).unwrap();
    let bob_dc = AccountKey::import_armored(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deltachat/bob-secret.asc")).unwrap(),
        "bob@example.org",
        None,
    )
    .unwrap();
    print("view of Delta Chat's 1:1 message", time(rounds, |_| view::render(&delta_chat, &bob_dc)));
}
