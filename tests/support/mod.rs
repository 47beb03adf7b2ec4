//! Shared helpers of the integration tests: `mod support;` in a test file.
// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod data_block;
pub mod etcd;
pub mod fake_provider;
pub mod haproxy;
pub mod idp;
pub mod imap_client;
pub mod mailbox;
pub mod net_services;
pub mod openpgp;
pub mod other_provider;
pub mod provider;
pub mod proxy;
pub mod receipts;
pub mod smtp_client;

/// The first line a server sends on a plain TCP connection to `port` after `send` (if anything),
/// and how long it took; empty if it closed without a line.
pub fn first_line(port: u16, send: &[u8]) -> (String, std::time::Duration) {
    use std::io::{BufRead, Write};
    let started = std::time::Instant::now();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(90))).unwrap();
    tcp.write_all(send).unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(tcp).read_line(&mut line);
    (line, started.elapsed())
}

/// A plain connection to 127.0.0.1:`port` from the loopback address `source` (127.0.0.1 and
/// 127.0.0.2 are different client addresses to the proxy and to HAProxy).
pub fn connect_from(source: &str, port: u16) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let tcp = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(format!("{source}:0").parse().unwrap())?;
            socket.connect(([127, 0, 0, 1], port).into()).await
        })
        .unwrap_or_else(|e| panic!("connect from {source} to port {port}: {e}"))
        .into_std()
        .unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    tcp
}
