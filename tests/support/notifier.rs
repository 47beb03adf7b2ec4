//! A Delta Chat notification service for tests: plain HTTP on 127.0.0.1, records every POST
//! (its body is a device token) with when it came, and answers each token with a status the
//! test chooses (200 unless told otherwise), as notifications.delta.chat does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub token: String,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    posts: Vec<Post>,
    status: HashMap<String, u16>,
}

pub struct Notifier {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Notifier {
    pub fn start() -> Notifier {
        Self::start_on(0)
    }

    /// On a given port (to come back on the same one).
    pub fn start_on(port: u16) -> Notifier {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test notifier");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(conn, state));
            }
        });
        Notifier { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/notify", self.port)
    }

    /// Answers POSTs of `token` with `status` from now on.
    pub fn set_status(&self, token: &str, status: u16) {
        self.state.lock().unwrap().status.insert(token.into(), status);
    }

    pub fn posts(&self) -> Vec<Post> {
        self.state.lock().unwrap().posts.clone()
    }

    /// The POSTs of `token` so far.
    pub fn posts_of(&self, token: &str) -> Vec<Post> {
        self.posts().into_iter().filter(|p| p.token == token).collect()
    }

    /// Waits until there are `n` POSTs in all; panics after `timeout`.
    pub fn wait(&self, n: usize, timeout: Duration) -> Vec<Post> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.posts();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} notifications after {timeout:?}: {got:?}", got.len());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
    let _ = conn.set_nodelay(true);
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let token = String::from_utf8_lossy(&body).into_owned();
        let status = {
            let mut s = state.lock().unwrap();
            let status = s.status.get(&token).copied().unwrap_or(200);
            s.posts.push(Post { path, headers, token, at });
            status
        };
        let reply = format!("HTTP/1.1 {status} Test\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
