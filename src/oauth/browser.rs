//! The browser flow (RFC 6749 4.1 with PKCE, RFC 7636, and a loopback redirect, RFC 8252 7.3):
//! the URL to open, a listener on `localhost` for the browser's redirect, the code traded for
//! tokens. Google's only flow for the Gmail scope. The redirect request is peer input (anything
//! on this machine can connect): it is read bounded and parsed by [`parse_redirect`], and only a
//! request carrying our `state` ends the wait.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use rand_core_06::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::authorize::AuthorizeError;
use super::endpoint;
use super::token::{ErrorResponse, TokenReply, TokenSet};
use crate::config::OAuth2Endpoints;
use crate::secret::Secret;

/// How long the user has to finish in the browser.
const WAIT: Duration = Duration::from_secs(10 * 60);
/// Largest request head read from a connection to the loopback listener.
const MAX_HEAD: usize = 16 * 1024;

/// What a request to the loopback listener carried.
#[derive(Debug)]
pub enum Redirect {
    /// The authorization code, with our state.
    Code(Secret),
    /// The provider's refusal (`access_denied` …), with our state.
    Denied(ErrorResponse),
    /// A code or error with another state: not the answer to our request.
    WrongState,
    /// Anything else (`/favicon.ico`, a stray connection).
    Other,
}

/// Reads a request head (`GET /?code=…&state=… HTTP/1.1` …) for the redirect with `state`.
pub fn parse_redirect(head: &[u8], state: &str) -> Redirect {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Redirect::Other };
    let mut words = line.trim_end_matches('\r').split(' ');
    let (Some("GET"), Some(target)) = (words.next(), words.next()) else { return Redirect::Other };
    let Some((_, query)) = target.split_once('?') else { return Redirect::Other };
    let (mut code, mut their_state, mut error, mut description) = (None, None, None, None);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "code" => code = Some(Secret::new(value.into_owned().into_bytes())),
            "state" => their_state = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            _ => {}
        }
    }
    if code.is_none() && error.is_none() {
        return Redirect::Other;
    }
    if their_state.as_deref() != Some(state) {
        return Redirect::WrongState;
    }
    match (code, error) {
        (_, Some(error)) => Redirect::Denied(
            ErrorResponse::new(&error, description.as_deref())
                .unwrap_or(ErrorResponse { error: "access_denied".into(), description: None }),
        ),
        (Some(code), None) if !code.is_empty() => Redirect::Code(code),
        _ => Redirect::Other,
    }
}

/// 32 random bytes, base64url without padding (PKCE verifiers and `state`).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 code challenge of a verifier (RFC 7636 4.2).
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The URL the user opens.
pub fn authorization_url(
    endpoints: &OAuth2Endpoints,
    base: &str,
    login: &str,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> Result<String, url::ParseError> {
    let mut url = url::Url::parse(base)?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &endpoints.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &endpoints.scope)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("login_hint", login);
        for (key, value) in &endpoints.authorize_params {
            query.append_pair(key, value);
        }
    }
    Ok(url.into())
}

/// Runs the browser flow for `login`: prints the URL to `out`, waits for the redirect, trades
/// the code.
pub async fn run<W: Write>(
    endpoints: &OAuth2Endpoints,
    base: &str,
    login: &str,
    out: &mut W,
) -> Result<TokenSet, AuthorizeError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| AuthorizeError::Listener { addr: "127.0.0.1".into(), source })?;
    let port =
        listener.local_addr().map_err(|source| AuthorizeError::Listener { addr: "127.0.0.1".into(), source })?.port();
    // Browsers may try ::1 for `localhost` first; the same port there, where it is free.
    let v6 = TcpListener::bind(("::1", port)).await.ok();
    // `http://localhost` is what Microsoft's registrations name (any port) and Google's desktop
    // clients accept.
    let redirect_uri = format!("http://localhost:{port}");
    let (verifier, state) = (Secret::new(random_token().into_bytes()), random_token());
    let verifier_text = String::from_utf8_lossy(verifier.expose()).into_owned();
    let url = authorization_url(endpoints, base, login, &redirect_uri, &state, &challenge(&verifier_text))
        .map_err(|e| AuthorizeError::Config { login: login.into(), key: "authorization_url", why: e.to_string() })?;
    let _ = writeln!(
        out,
        "To authorize coi-proxy for {login}, open this URL in a browser on this machine and sign in:\n\n  {url}\n\n\
         Waiting for the browser on {redirect_uri} (from another machine: ssh -L {port}:localhost:{port} to this one first) …"
    );
    let _ = out.flush();
    let code = tokio::time::timeout(WAIT, wait_for_code(&listener, v6.as_ref(), &state))
        .await
        .map_err(|_| AuthorizeError::Timeout { minutes: WAIT.as_secs() / 60 })??;
    let grant: [(&str, &[u8]); 4] = [
        ("grant_type", b"authorization_code"),
        ("code", code.expose()),
        ("redirect_uri", redirect_uri.as_bytes()),
        ("code_verifier", verifier.expose()),
    ];
    match endpoint::token_request(endpoints, &grant).await? {
        TokenReply::Tokens(tokens) => Ok(tokens),
        TokenReply::Error(e) => {
            Err(AuthorizeError::Refused { origin: super::http::origin(&endpoints.token_url), error: e.describe() })
        }
    }
}

/// Serves requests on the loopback listeners until one brings the code (or the refusal).
async fn wait_for_code(v4: &TcpListener, v6: Option<&TcpListener>, state: &str) -> Result<Secret, AuthorizeError> {
    loop {
        let accepted = match v6 {
            Some(v6) => tokio::select! { a = v4.accept() => a, a = v6.accept() => a },
            None => v4.accept().await,
        };
        let Ok((mut stream, _)) = accepted else { continue };
        let head = match tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream)).await {
            Ok(Ok(head)) => head,
            _ => continue,
        };
        let (status, page, outcome) = match parse_redirect(&head, state) {
            Redirect::Code(code) => ("200 OK", "coi-proxy is authorized. You can close this window.", Some(Ok(code))),
            Redirect::Denied(e) => (
                "200 OK",
                "The authorization was declined; coi-proxy got no access.",
                Some(Err(AuthorizeError::Denied { reason: e.describe() })),
            ),
            Redirect::WrongState => ("400 Bad Request", "This is not the answer coi-proxy is waiting for.", None),
            Redirect::Other => ("404 Not Found", "Not found.", None),
        };
        let html = format!("<!doctype html><title>coi-proxy</title><p>{page}</p>\n");
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
            html.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

/// The request head, up to the blank line (or [`MAX_HEAD`] bytes, or the end).
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects() {
        let code = |head: &str| match parse_redirect(head.as_bytes(), "S1") {
            Redirect::Code(c) => String::from_utf8(c.expose().to_vec()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code("GET /?code=4%2F0AX&scope=x&state=S1 HTTP/1.1\r\nHost: localhost\r\n\r\n"), "4/0AX");
        assert_eq!(code("GET /?state=S1&code=M.C5 HTTP/1.1\r\n"), "M.C5");
        let denied = parse_redirect(
            b"GET /?error=access_denied&error_description=The+user+said+no%0D%0Ax&state=S1 HTTP/1.1\r\n",
            "S1",
        );
        assert!(
            matches!(&denied, Redirect::Denied(e) if e.describe() == "access_denied: The user said no"),
            "{denied:?}"
        );
        assert!(matches!(parse_redirect(b"GET /?code=x&state=S2 HTTP/1.1\r\n", "S1"), Redirect::WrongState));
        assert!(matches!(parse_redirect(b"GET /?code=x HTTP/1.1\r\n", "S1"), Redirect::WrongState));
        for other in [
            &b"GET /favicon.ico HTTP/1.1\r\n"[..],
            b"POST /?code=x&state=S1 HTTP/1.1\r\n",
            b"",
            b"\xff\xfe",
            b"GET",
            b"GET /?code=&state=S1 HTTP/1.1",
        ] {
            assert!(matches!(parse_redirect(other, "S1"), Redirect::Other), "{other:?}");
        }
    }

    /// RFC 7636 appendix B.
    #[test]
    fn s256_challenge() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }

    #[test]
    fn the_url_to_open() {
        let endpoints = crate::config::OAuth2 {
            provider: Some("google".into()),
            device_authorization_url: None,
            authorization_url: None,
            token_url: None,
            client_id: "id.apps.googleusercontent.com".into(),
            client_secret: Some("shh".into()),
            scope: None,
        }
        .endpoints()
        .unwrap();
        let url = authorization_url(
            &endpoints,
            endpoints.authorization_url.as_deref().unwrap(),
            "a@gmail.com",
            "http://localhost:4711",
            "st",
            "ch",
        )
        .unwrap();
        assert!(url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?response_type=code&client_id=id.apps.googleusercontent.com&redirect_uri=http%3A%2F%2Flocalhost%3A4711&scope=https%3A%2F%2Fmail.google.com%2F&state=st&code_challenge=ch&code_challenge_method=S256&login_hint=a%40gmail.com"), "{url}");
        assert!(url.ends_with("&access_type=offline&prompt=consent"), "{url}");
        assert!(!url.contains("shh"));
    }
}
