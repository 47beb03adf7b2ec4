//! The ~100 MB mailbox the FETCH benches read: 2,000 plain 7-bit text messages of 10–150 KB,
//! skewed to the small end, APPENDed over one direct connection with `LITERAL+`.

use crate::client::{Client, SMALL_BUFFER};
use crate::common::Rng;

/// Messages put into the INBOX, and their size range; sizes are skewed towards the small end
/// (`MIN + (MAX - MIN) * u^2.5`) so that the mailbox comes to ~100 MB.
pub const MESSAGES: usize = 2_000;
const MIN_SIZE: usize = 10_000;
const MAX_SIZE: usize = 150_000;

/// Creates the messages and APPENDs them to `user`'s INBOX; returns their total size.
pub fn fill(port: u16, user: &str) -> u64 {
    let mut client = Client::login(port, user, SMALL_BUFFER);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut total = 0;
    for i in 0..MESSAGES {
        let size = MIN_SIZE + ((MAX_SIZE - MIN_SIZE) as f64 * rng.unit().powf(2.5)) as usize;
        let message = message(i, size, user, &mut rng);
        total += message.len() as u64;
        let mut command = format!("APPEND INBOX {{{}+}}\r\n", message.len()).into_bytes();
        command.extend_from_slice(&message);
        command.extend_from_slice(b"\r\n");
        client.run_bytes(&command);
    }
    total
}

/// A plain 7-bit text message of `size` bytes: headers, then random words in CRLF lines of at
/// most 78 characters.
fn message(i: usize, size: usize, to: &str, rng: &mut Rng) -> Vec<u8> {
    let mut m = format!(
        "From: Bench Sender <sender{}@example.net>\r\nTo: {to}\r\nSubject: Benchmark message {i}\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench-{i}@example.net>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        i % 50
    )
    .into_bytes();
    let mut line = 0;
    while m.len() + 2 < size {
        let word = 1 + rng.below(10);
        if line + word + 1 > 78 {
            m.extend_from_slice(b"\r\n");
            line = 0;
        } else if line > 0 {
            m.push(b' ');
            line += 1;
        }
        for _ in 0..word.min(size - m.len() - 2) {
            m.push(b'a' + rng.below(26) as u8);
        }
        line += word;
    }
    m.extend_from_slice(b"\r\n");
    m
}
