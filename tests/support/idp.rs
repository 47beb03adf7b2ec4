//! A local OAuth2 identity provider for the OAuth2 tests, on a random loopback port, behaving
//! like Microsoft's and Google's endpoints where the proxy can tell:
//!
//! - `POST /devicecode` (RFC 8628): a device code and a user code; the test plays the user with
//!   [`Idp::approve`] (or [`Idp::decline`]).
//! - `GET /authorize` (browser flow): consents at once for the `login_hint` and redirects to the
//!   `redirect_uri` with the code and state (PKCE S256 required).
//! - `POST /token`: device code (`authorization_pending` while not approved, as Microsoft says
//!   it), authorization code (PKCE checked), refresh token (rotated: the old one is revoked, as
//!   Microsoft does; or kept, as Google does). Errors with the providers' bodies.
//! - `POST /introspect` (RFC 7662) for Dovecot's oauth2 passdb: `{"active":true,"username":…}`.
//!
//! The test steers it: revoke a user's grant, expire access tokens, count requests, and list
//! every token it issued (to look for them where they must not be).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};

/// The client the tests register.
pub const CLIENT_ID: &str = "coi-proxy-test-client";

/// How the provider behaves.
#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// Seconds an access token lives (`expires_in`).
    pub access_lifetime: u64,
    /// Rotate refresh tokens on use and revoke the old one (Microsoft); else keep it (Google).
    pub rotate: bool,
    /// A client secret the token endpoint insists on (Google's desktop clients have one).
    pub client_secret: Option<String>,
}

impl Default for IdpOptions {
    fn default() -> Self {
        IdpOptions { access_lifetime: 3600, rotate: true, client_secret: None }
    }
}

#[derive(Default)]
struct State {
    next: u64,
    /// device code → (user code, approved for, declined)
    devices: HashMap<String, (String, Option<String>, bool)>,
    /// authorization code → (user, redirect_uri, code challenge)
    codes: HashMap<String, (String, String, String)>,
    /// refresh token → user, while valid
    refresh: HashMap<String, String>,
    /// access token → (user, expires at), while valid
    access: HashMap<String, (String, u64)>,
    issued: Vec<String>,
    token_requests: usize,
    refreshes: usize,
    introspections: usize,
}

pub struct Idp {
    pub port: u16,
    opts: IdpOptions,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Idp {
    pub fn start() -> Idp {
        Idp::start_with(IdpOptions::default())
    }

    pub fn start_with(opts: IdpOptions) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the identity provider");
        let port = listener.local_addr().unwrap().port();
        let idp = Idp { port, opts, state: Arc::default(), stop: Arc::default() };
        let (state, stop, opts) = (idp.state.clone(), idp.stop.clone(), idp.opts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (state, opts) = (state.clone(), opts.clone());
                std::thread::spawn(move || serve(conn, port, &state, &opts));
            }
        });
        idp
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn introspection_url(&self) -> String {
        self.url("/introspect")
    }

    /// The `[account.oauth2]` table for an account of this provider.
    pub fn account_config(&self) -> String {
        let secret = self.opts.client_secret.as_ref().map_or(String::new(), |s| format!("client_secret = {s:?}\n"));
        format!(
            "[account.oauth2]\ndevice_authorization_url = {:?}\nauthorization_url = {:?}\ntoken_url = {:?}\nclient_id = {CLIENT_ID:?}\n{secret}scope = \"mail offline_access\"\n",
            self.url("/devicecode"),
            self.url("/authorize"),
            self.url("/token"),
        )
    }

    /// The user signs in with `user_code` as `user`.
    pub fn approve(&self, user_code: &str, user: &str) {
        let mut state = self.state.lock().unwrap();
        let entry = state.devices.values_mut().find(|(code, _, _)| code == user_code).expect("a known user code");
        entry.1 = Some(user.to_string());
    }

    /// The user declines the sign-in of `user_code`.
    pub fn decline(&self, user_code: &str) {
        let mut state = self.state.lock().unwrap();
        let entry = state.devices.values_mut().find(|(code, _, _)| code == user_code).expect("a known user code");
        entry.2 = true;
    }

    /// The user revokes the app's access: every refresh and access token of `user` dies.
    pub fn revoke(&self, user: &str) {
        let mut state = self.state.lock().unwrap();
        state.refresh.retain(|_, u| u != user);
        state.access.retain(|_, (u, _)| u != user);
    }

    /// `user`'s access tokens stop working now (the refresh token stays good).
    pub fn expire_access_tokens(&self, user: &str) {
        self.state.lock().unwrap().access.retain(|_, (u, _)| u != user);
    }

    pub fn refreshes(&self) -> usize {
        self.state.lock().unwrap().refreshes
    }

    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    pub fn introspections(&self) -> usize {
        self.state.lock().unwrap().introspections
    }

    /// How many refresh tokens are valid now.
    pub fn live_refresh_tokens(&self) -> usize {
        self.state.lock().unwrap().refresh.len()
    }

    /// Every token and code this provider handed out.
    pub fn issued(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A token that looks like the real ones (long, URL-safe), unique and easy to search for.
fn token(state: &mut State, kind: &str) -> String {
    state.next += 1;
    let mut seed = Sha256::new();
    seed.update(format!("{kind}{}{:?}", state.next, SystemTime::now()));
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed.finalize());
    let token = format!("{kind}.{random}{}", "x".repeat(if kind == "at" { 900 } else { 300 }));
    state.issued.push(token.clone());
    token
}

/// Access and refresh token for `user`, as a token response.
fn grant(state: &mut State, opts: &IdpOptions, user: &str, refresh: Option<String>) -> (u16, String) {
    let access = token(state, "at");
    state.access.insert(access.clone(), (user.to_string(), now() + opts.access_lifetime));
    let refresh = refresh.unwrap_or_else(|| {
        let r = token(state, "rt");
        state.refresh.insert(r.clone(), user.to_string());
        r
    });
    let body = serde_json::json!({
        "token_type": "Bearer",
        "scope": "mail offline_access",
        "expires_in": opts.access_lifetime,
        "ext_expires_in": opts.access_lifetime,
        "access_token": access,
        "refresh_token": refresh,
    });
    (200, body.to_string())
}

/// Microsoft's shape of an error body.
fn error(status: u16, code: &str, description: &str) -> (u16, String) {
    let body = serde_json::json!({
        "error": code,
        "error_description": format!("{description}\r\nTrace ID: 8f1c0d5e-0000\r\nCorrelation ID: 2b7e\r\nTimestamp: 2026-01-01 00:00:00Z"),
        "error_codes": [70000],
        "timestamp": "2026-01-01 00:00:00Z",
    });
    (status, body.to_string())
}

fn serve(conn: TcpStream, port: u16, state: &Mutex<State>, opts: &IdpOptions) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(if method == "GET" { query.as_bytes() } else { &body })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let p = |k: &str| params.get(k).cloned().unwrap_or_default();
    let mut state = state.lock().unwrap();
    let (status, body, location) = match (method, path) {
        ("POST", "/devicecode") if p("client_id") != CLIENT_ID => {
            let (s, b) = error(400, "unauthorized_client", "AADSTS700016: Application not found in the directory.");
            (s, b, None)
        }
        ("POST", "/devicecode") => {
            let device = token(&mut state, "dc");
            state.next += 1;
            let user_code = format!("TEST{:04}", state.next);
            state.devices.insert(device.clone(), (user_code.clone(), None, false));
            let uri = format!("http://127.0.0.1:{port}/device");
            let body = serde_json::json!({
                "user_code": user_code,
                "device_code": device,
                "verification_uri": uri,
                "expires_in": 900,
                "interval": 1,
                "message": format!("To sign in, use a web browser to open the page {uri} and enter the code {user_code} to authenticate."),
            });
            (200, body.to_string(), None)
        }
        ("GET", "/authorize") => {
            let redirect = p("redirect_uri");
            let user = p("login_hint");
            if p("code_challenge_method") != "S256" || p("code_challenge").is_empty() || user.is_empty() {
                let location =
                    format!("{redirect}?error=invalid_request&error_description=PKCE+required&state={}", p("state"));
                (302, String::new(), Some(location))
            } else {
                let code = token(&mut state, "ac");
                state.codes.insert(code.clone(), (user, redirect.clone(), p("code_challenge")));
                let mut location = url::Url::parse(&redirect).unwrap();
                location.query_pairs_mut().append_pair("code", &code).append_pair("state", &p("state"));
                (302, String::new(), Some(location.to_string()))
            }
        }
        ("POST", "/token") => {
            state.token_requests += 1;
            let (s, b) = token_endpoint(&mut state, opts, &p);
            (s, b, None)
        }
        ("POST", "/introspect") => {
            state.introspections += 1;
            let body = match state.access.get(&p("token")) {
                Some((user, exp)) if *exp > now() => {
                    serde_json::json!({"active": true, "username": user, "exp": exp, "scope": "mail"})
                }
                _ => serde_json::json!({"active": false}),
            };
            (200, body.to_string(), None)
        }
        _ => (404, "{\"error\":\"not_found\"}".to_string(), None),
    };
    drop(state);
    let reason = match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let location = location.map_or(String::new(), |l| format!("Location: {l}\r\n"));
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n{location}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut conn = conn;
    let _ = conn.write_all(response.as_bytes());
}

fn token_endpoint(state: &mut State, opts: &IdpOptions, p: &dyn Fn(&str) -> String) -> (u16, String) {
    if p("client_id") != CLIENT_ID {
        return error(400, "unauthorized_client", "AADSTS700016: Application not found in the directory.");
    }
    if let Some(secret) = &opts.client_secret
        && p("client_secret") != *secret
    {
        return (401, r#"{"error": "invalid_client", "error_description": "Unauthorized"}"#.into());
    }
    match p("grant_type").as_str() {
        "urn:ietf:params:oauth:grant-type:device_code" => match state.devices.get(&p("device_code")).cloned() {
            None => error(400, "expired_token", "AADSTS70019: Verification code expired."),
            Some((_, _, true)) => error(400, "authorization_declined", "AADSTS70000: The user declined."),
            Some((_, None, false)) => error(
                400,
                "authorization_pending",
                "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            ),
            Some((_, Some(user), false)) => {
                state.devices.remove(&p("device_code"));
                grant(state, opts, &user, None)
            }
        },
        "authorization_code" => {
            let Some((user, redirect, challenge)) = state.codes.remove(&p("code")) else {
                return (400, r#"{"error": "invalid_grant", "error_description": "Bad Request"}"#.into());
            };
            let verifier_challenge =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(p("code_verifier").as_bytes()));
            if redirect != p("redirect_uri") || verifier_challenge != challenge {
                return (400, r#"{"error": "invalid_grant", "error_description": "Bad Request"}"#.into());
            }
            grant(state, opts, &user, None)
        }
        "refresh_token" => {
            let presented = p("refresh_token");
            let Some(user) = state.refresh.get(&presented).cloned() else {
                return error(
                    400,
                    "invalid_grant",
                    "AADSTS70000: The provided value for the input parameter 'refresh_token' or 'assertion' is not valid.",
                );
            };
            state.refreshes += 1;
            if opts.rotate {
                state.refresh.remove(&presented);
                grant(state, opts, &user, None)
            } else {
                let (status, body) = grant(state, opts, &user, Some(presented));
                // Google leaves the refresh token out of a refresh's answer.
                let mut json: serde_json::Value = serde_json::from_str(&body).unwrap();
                json.as_object_mut().unwrap().remove("refresh_token");
                (status, json.to_string())
            }
        }
        _ => (400, r#"{"error": "unsupported_grant_type"}"#.into()),
    }
}
