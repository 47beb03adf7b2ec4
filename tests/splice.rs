//! Literal bodies spliced from Dovecot to the client inside the kernel (plain TCP both sides,
//! issue 19): what the client gets is byte for byte what a direct connection gets, for large
//! messages read in many pieces, pipelined FETCHes, a client that reads slowly, and TLS (which
//! is never spliced); `coi_proxy_spliced_bytes_total` shows the path was taken.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::Proxy;

/// Message sizes: one below the splice threshold (16 KiB), one below what takes a pipe
/// (64 KiB), the rest above, the largest many pipe loads long.
const SIZES: [usize; 5] = [9_000, 40_000, 200_000, 1_500_000, 4_000_000];

/// A 7-bit message of `size` bytes with lines of pseudo-random text; `seed` varies it.
fn message(size: usize, seed: u32) -> Vec<u8> {
    let mut msg = format!("From: a@example.org\r\nSubject: splice {seed}\r\n\r\n").into_bytes();
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    while msg.len() < size - 2 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        msg.push(b'!' + ((x >> 16) % 90) as u8);
        if msg.len() % 900 == 0 {
            msg.extend_from_slice(b"\r\n");
        }
    }
    msg.truncate(size - 2);
    msg.extend_from_slice(b"\r\n");
    msg
}

/// Dovecot with alice's INBOX holding one message of each of [`SIZES`] (appended directly), and
/// a proxy in front of it with its metrics listener.
fn setup() -> (Provider, Proxy, Vec<Vec<u8>>) {
    let provider = Provider::start();
    let mut direct = ImapClient::connect(provider.imap_port);
    direct.login("alice@example.org", "secret");
    let messages: Vec<Vec<u8>> = SIZES.iter().enumerate().map(|(i, &size)| message(size, i as u32)).collect();
    for (i, msg) in messages.iter().enumerate() {
        let mut cmd = format!("a{i} APPEND INBOX {{{}+}}\r\n", msg.len()).into_bytes();
        cmd.extend_from_slice(msg);
        cmd.extend_from_slice(b"\r\n");
        direct.send_raw(&cmd);
        let ok = direct.read_line();
        assert!(ok.starts_with(&format!("a{i} OK")), "{ok}");
    }
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .listen("metrics = \"127.0.0.1:0\"")
        .start();
    (provider, proxy, messages)
}

/// Bytes moved in the kernel so far, as the proxy's metrics say.
fn spliced(proxy: &Proxy) -> u64 {
    proxy.metric("coi_proxy_spliced_bytes_total") as u64
}

/// Sends `commands` at once (pipelined) and reads every response up to the tagged ones of all
/// of them; tagged lines are cut after their status word (Dovecot puts timings in their text).
/// Sorted: Dovecot may run pipelined commands side by side, so the order may vary.
fn transcript<S: Read + Write>(c: &mut ImapClient<S>, commands: &[&str]) -> Vec<Vec<u8>> {
    let mut batch = String::new();
    for cmd in commands {
        batch.push_str(cmd);
        batch.push_str("\r\n");
    }
    c.send_raw(batch.as_bytes());
    let mut out = Vec::new();
    let mut done = 0;
    while done < commands.len() {
        let response = c.read_response_bytes();
        if response.starts_with(b"* ") {
            out.push(response);
        } else {
            let words: Vec<&[u8]> = response.splitn(3, |&b| b == b' ').take(2).collect();
            out.push(words.join(&b' '));
            done += 1;
        }
    }
    out.sort();
    out
}

fn logged_in(port: u16) -> ImapClient {
    let mut c = ImapClient::connect(port);
    c.set_timeout(Duration::from_secs(60));
    c.login("alice@example.org", "secret");
    c.expect_ok("s SELECT INBOX");
    c
}

#[test]
fn large_literals_are_spliced_byte_exact_and_pipelined() {
    let (provider, proxy, messages) = setup();
    let large: usize = messages.iter().filter(|m| m.len() > 64 * 1024).map(Vec::len).sum();
    let commands =
        ["f1 UID FETCH 1:* BODY.PEEK[]", "n1 NOOP", "f2 FETCH 4 (UID BODY.PEEK[])", "f3 FETCH 1,2 BODY.PEEK[]"];
    let direct = transcript(&mut logged_in(provider.imap_port), &commands);
    for (i, msg) in messages.iter().enumerate() {
        let header = format!("* {n} FETCH (UID {n} BODY[] {{{}}}\r\n", msg.len(), n = i + 1);
        let response = direct.iter().find(|r| r.starts_with(header.as_bytes())).expect("message fetched");
        assert_eq!(&response[header.len()..header.len() + msg.len()], &msg[..], "Dovecot's copy of {i}");
    }

    let before = spliced(&proxy);
    let proxied = transcript(&mut logged_in(proxy.imap_port), &commands);
    assert!(proxied == direct, "proxied FETCH responses differ from direct ones");
    let moved = spliced(&proxy) - before;
    // Most of each large literal goes through the pipe; its first piece may come with the
    // line that announced it, through the read buffer.
    assert!(moved as usize >= large, "spliced {moved} bytes of {} in large literals (twice over)", 2 * large);
    assert!((moved as usize) < 2 * messages.iter().map(Vec::len).sum::<usize>(), "{moved}");

    // The session goes on as usual afterwards, on the same connection too.
    let mut c = logged_in(proxy.imap_port);
    c.expect_ok("n2 NOOP");
    let again = transcript(&mut c, &["f4 FETCH 5 BODY.PEEK[]", "n3 NOOP"]);
    let mut expected = format!("* 5 FETCH (BODY[] {{{}}}\r\n", messages[4].len()).into_bytes();
    expected.extend_from_slice(&messages[4]);
    expected.extend_from_slice(b")\r\n");
    assert!(again == [expected, b"f4 OK".to_vec(), b"n3 OK".to_vec()], "the 4 MB message again, byte exact");
}

#[test]
fn a_client_reading_slowly_gets_every_byte_in_order() {
    let (_provider, proxy, messages) = setup();
    let before = spliced(&proxy);
    let big = &messages[4];
    // The client asks for the 4 MB message twice and a NOOP in between, then reads slowly
    // (its socket and the proxy's fill up: the pipe waits for the client to take more).
    let tcp = TcpStream::connect(("127.0.0.1", proxy.imap_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut raw = ImapClient::from_stream(tcp.try_clone().unwrap());
    raw.login("alice@example.org", "secret");
    raw.expect_ok("s SELECT INBOX");
    raw.send_raw(b"f1 FETCH 5 BODY.PEEK[]\r\nn NOOP\r\nf2 FETCH 5 BODY.PEEK[]\r\n");
    let mut got = Vec::new();
    let mut tcp = tcp;
    let mut buf = vec![0; 16 * 1024];
    // About 2 s of slow reading (16 KiB per 10 ms), then the rest at full speed.
    let mut reads = 0;
    let tags = loop {
        if let Some(tags) = parse(&got, big) {
            break tags;
        }
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "the proxy closed the connection");
        got.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads < 200 {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(tags, ["f1 OK", "f2 OK", "n OK"]);
    assert!(spliced(&proxy) - before >= 2 * (big.len() as u64 - 64 * 1024), "the slow client's FETCH was spliced");
}

#[test]
fn tls_clients_are_never_spliced() {
    let (provider, proxy, messages) = setup();
    let commands = ["f1 UID FETCH 3:* BODY.PEEK[]"];
    let direct = transcript(&mut logged_in(provider.imap_port), &commands);
    let before = spliced(&proxy);
    let mut c = proxy.connect_tls();
    c.login("alice@example.org", "secret");
    c.expect_ok("s SELECT INBOX");
    assert!(transcript(&mut c, &commands) == direct, "TLS FETCH responses differ from direct ones");
    assert_eq!(spliced(&proxy), before, "rustls needs the bytes: nothing spliced");
    assert!(messages.len() == SIZES.len());
}

/// The responses in `got` once complete: two FETCHes of `big` (checked byte for byte, each
/// followed by its closing parenthesis) and three tagged OKs (sorted, status word only).
/// `None` while more is to come.
fn parse(got: &[u8], big: &[u8]) -> Option<Vec<String>> {
    let header = format!("* 5 FETCH (BODY[] {{{}}}\r\n", big.len());
    let (mut rest, mut fetches, mut tags) = (got, 0, Vec::new());
    while !rest.is_empty() {
        if rest.starts_with(b"* ") {
            if rest.len() < header.len() + big.len() + 3 {
                return None;
            }
            assert!(rest.starts_with(header.as_bytes()), "{}", String::from_utf8_lossy(&rest[..80]));
            rest = &rest[header.len()..];
            assert!(rest.starts_with(big), "FETCH {fetches}: the message, byte exact");
            assert!(rest[big.len()..].starts_with(b")\r\n"));
            rest = &rest[big.len() + 3..];
            fetches += 1;
        } else {
            let end = rest.iter().position(|&b| b == b'\n')? + 1;
            let line = String::from_utf8_lossy(&rest[..end]);
            tags.push(line.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" "));
            rest = &rest[end..];
        }
    }
    tags.sort();
    (tags.len() == 3).then(|| {
        assert_eq!(fetches, 2);
        tags
    })
}
