//! A push service for tests: plain HTTP on 127.0.0.1, records every request, answers each path
//! with a status the test chooses (201 unless told otherwise). And a "device": a subscription's
//! key pair, which decrypts what the proxy pushed, and a check of the VAPID token.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePublicKey;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    status: HashMap<String, u16>,
}

pub struct PushEndpoint {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl PushEndpoint {
    pub fn start() -> PushEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind push endpoint");
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
        PushEndpoint { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The VAPID `aud` the proxy must use for this endpoint.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers requests for `path` with `status` from now on.
    pub fn set_status(&self, path: &str, status: u16) {
        self.state.lock().unwrap().status.insert(path.into(), status);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state.lock().unwrap().received.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits until `path` has had `n` requests; panics after `timeout`.
    pub fn wait(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received(path);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{path}: {} of {n} pushes after {timeout:?}", got.len());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
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
        let status = {
            let mut s = state.lock().unwrap();
            s.received.push(Received { path: path.clone(), headers, body, at: Instant::now() });
            s.status.get(&path).copied().unwrap_or(201)
        };
        let extra = if status == 429 { "Retry-After: 1\r\n" } else { "" };
        let reply = format!("HTTP/1.1 {status} Test\r\n{extra}Content-Length: 0\r\n\r\n");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A subscriber: its P-256 key pair and authentication secret.
pub struct Device {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Device {
    pub fn new() -> Device {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).unwrap();
        let mut auth = [0u8; 16];
        getrandom::getrandom(&mut auth).unwrap();
        Device { secret: SecretKey::from_slice(&bytes).expect("a valid scalar"), auth }
    }

    /// The subscription JSON for `endpoint`, with a key the proxy must drop.
    pub fn subscription(&self, endpoint: &str, msgtype: &str) -> String {
        let p256dh = URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes());
        let auth = URL_SAFE_NO_PAD.encode(self.auth);
        format!(
            r#"{{"client":"coi-proxy test","device":"test phone","msgtype":"{msgtype}","unknown":{{"x":1}},"resource":{{"endpoint":"{endpoint}","keys":{{"p256dh":"{p256dh}","auth":"{auth}"}}}}}}"#
        )
    }

    /// Decrypts a push body (RFC 8291) and parses the JSON.
    pub fn decrypt(&self, push: &Received) -> serde_json::Value {
        assert_eq!(push.headers.get("content-encoding").map(String::as_str), Some("aes128gcm"));
        let auth = web_push_native::Auth::clone_from_slice(&self.auth);
        let plain = web_push_native::decrypt(push.body.clone(), &self.secret, &auth).expect("decrypts with our key");
        serde_json::from_slice(&plain).expect("JSON payload")
    }
}

/// Checks the request's VAPID token (RFC 8292) against the PEM key the proxy serves: an ES256
/// JWT whose signature verifies, the right `aud`, and an expiry at most 24 hours ahead.
/// Returns the claims.
pub fn check_vapid(push: &Received, vapid_pem: &str, audience: &str) -> serde_json::Value {
    let auth = push.headers.get("authorization").expect("Authorization header");
    let (token, k) = auth.strip_prefix("vapid t=").and_then(|r| r.split_once(", k=")).expect("vapid t=…, k=…");
    let key = VerifyingKey::from_public_key_pem(vapid_pem).expect("the served PEM parses");
    assert_eq!(k, URL_SAFE_NO_PAD.encode(key.to_encoded_point(false).as_bytes()), "k= is the served key");
    let (input, signature) = token.rsplit_once('.').expect("header.claims.signature");
    let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).expect("base64url")).expect("R || S");
    key.verify(input.as_bytes(), &signature).expect("signed by the served key");
    let part = |b64: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).expect("base64url")).expect("JSON")
    };
    let (header, claims) = input.split_once('.').expect("header.claims");
    assert_eq!(part(header)["alg"], "ES256");
    let claims = part(claims);
    assert_eq!(claims["aud"], audience);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(exp > now && exp <= now + 24 * 3600, "exp {exp}, now {now}");
    claims
}
