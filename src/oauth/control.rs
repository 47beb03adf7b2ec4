//! `coi-proxy oauth authorize` and `oauth status` while the daemon runs: the store is one redb
//! file that one process at a time can open, so the command line hands the grant to the daemon
//! on its control socket (`control.sock`, 0600, as `coi-proxy queue` does) and the daemon hashes
//! the password, seals and stores. With no daemon answering, the command line does that itself.
//!
//! Requests: `oauth store <login>` and one line of JSON (the local password, the tokens, the
//! endpoint and client they came from); `oauth status`. Answers: `ok` or `error`, then text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::token::TokenSet;
use super::{OAuthError, grant};
use crate::clock::now;
use crate::config::{Config, OAuth2Endpoints};
use crate::context::Context;
use crate::mail::rfc5322_date;
use crate::seal::{SealError, SealKey};
use crate::secret::Secret;
use crate::store::{OAuthGrant, Store, StoreError};

/// Largest request body (tokens are a few KB at most).
const MAX_BODY: u64 = 64 * 1024;

/// Why handing a grant over or reading the status failed; the text is shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the running coi-proxy did not answer on {}: {source}", socket.display())]
    NoAnswer { socket: PathBuf, source: std::io::Error },
    /// The running daemon's answer to a request it refused, as it sent it.
    #[error("the running coi-proxy: {0}")]
    Daemon(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(
        "{source}\n(is a coi-proxy daemon running with this state directory? It holds the store; its control socket {} did not answer)",
        socket.display()
    )]
    Locked { source: StoreError, socket: PathBuf },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Grant(#[from] OAuthError),
    #[error("a background task failed")]
    Task,
}

/// The grant as it crosses the socket. `Debug` is not derived: it holds secrets.
#[derive(Serialize, Deserialize)]
struct StoreRequest {
    token_url: String,
    client_id: String,
    password: String,
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

/// Stores `login`'s new grant: through the running daemon, else in the store directly. Returns
/// what to tell the user.
pub async fn store_grant(
    config: &Config,
    socket: &Path,
    login: &str,
    endpoints: &OAuth2Endpoints,
    tokens: TokenSet,
    password: Secret,
) -> Result<String, ControlError> {
    let login = login.to_ascii_lowercase();
    if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
        let refresh = tokens.refresh_token.ok_or(OAuthError::NoRefreshToken)?;
        let text = |s: &Secret| String::from_utf8_lossy(s.expose()).into_owned();
        let request = StoreRequest {
            token_url: endpoints.token_url.clone(),
            client_id: endpoints.client_id.clone(),
            password: text(&password),
            access_token: text(&tokens.access_token),
            refresh_token: text(&refresh),
            expires_in: tokens.expires_in,
        };
        let mut body = format!("oauth store {login}\n").into_bytes();
        body.extend(serde_json::to_vec(&request).expect("plain struct"));
        body.push(b'\n');
        let body = Secret::new(body);
        drop(Secret::new(request.password.into_bytes()));
        drop(Secret::new(request.access_token.into_bytes()));
        drop(Secret::new(request.refresh_token.into_bytes()));
        return ask(stream, body.expose())
            .await
            .map_err(|source| ControlError::NoAnswer { socket: socket.into(), source })?;
    }
    let (store, key) = open_directly(config, socket).await?;
    // No daemon: no cluster either; the daemon's replica of etcd holds what it holds.
    let key_login = config.account_key(&login);
    grant::save_new(&store, &key, &key_login, endpoints, tokens, password, None).await?;
    Ok(format!("stored the authorization for {login} (no coi-proxy daemon was running)\n"))
}

/// The state of every OAuth2 account, from the running daemon or the store. It only reads:
/// where there is no state directory or no store, nothing is created and every account is
/// "not authorized yet", after the words that say where it looked.
pub async fn status(config: &Config, socket: &Path) -> Result<String, ControlError> {
    let dir = &config.state_dir;
    if crate::state::existing(dir)?.is_none() {
        let here = crate::state::no_state_here(dir, "does not exist");
        return Ok(format!("{here}\n{}", describe(config, &[], now())));
    }
    if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
        return ask(stream, b"oauth status\n")
            .await
            .map_err(|source| ControlError::NoAnswer { socket: socket.into(), source })?;
    }
    if !dir.join("coi-proxy.redb").exists() {
        let here = crate::state::no_state_here(dir, "has no store (coi-proxy.redb)");
        return Ok(format!("{here}\n{}", describe(config, &[], now())));
    }
    let store =
        Store::open(&config.state_dir).map_err(|source| ControlError::Locked { source, socket: socket.into() })?;
    let grants = tokio::task::spawn_blocking(move || store.oauth_grants()).await.map_err(|_| ControlError::Task)?;
    let grants = grants.map_err(|e| ControlError::Grant(e.into()))?;
    Ok(describe(config, &grants, now()))
}

async fn open_directly(config: &Config, socket: &Path) -> Result<(Store, Arc<SealKey>), ControlError> {
    let (state_dir, key_path, socket) = (config.state_dir.clone(), config.seal_key_path(), socket.to_path_buf());
    tokio::task::spawn_blocking(move || {
        // Authorizing writes state: the directory is made (0700) or made private, as by `run`.
        crate::state::prepare(&state_dir)?;
        let store = Store::open(&state_dir).map_err(|source| ControlError::Locked { source, socket })?;
        let key = SealKey::load_or_create(&key_path)?;
        Ok((store, Arc::new(key)))
    })
    .await
    .map_err(|_| ControlError::Task)?
}

async fn ask(mut stream: tokio::net::UnixStream, request: &[u8]) -> std::io::Result<Result<String, ControlError>> {
    stream.write_all(request).await?;
    let mut answer = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(60), stream.read_to_string(&mut answer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 60 s"))??;
    Ok(match answer.split_once('\n') {
        Some(("ok", text)) => Ok(text.to_string()),
        Some((_, text)) => Err(ControlError::Daemon(text.trim_end().to_string())),
        None => Err(ControlError::Daemon(format!("an answer that is not one: {:?}", answer.trim_end()))),
    })
}

/// Whether a control request is one of ours.
pub fn is_ours(line: &str) -> bool {
    line.split_whitespace().next() == Some("oauth")
}

/// The daemon's side: answers `line` (and reads the body that follows `oauth store`).
pub async fn answer<R: AsyncBufRead + Unpin>(ctx: &Context, line: &str, body: &mut R) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let result = match words.as_slice() {
        ["oauth", "status"] => match ctx.store.read(|s| s.oauth_grants()).await {
            Ok(grants) => Ok(describe(&ctx.config(), &grants, now())),
            Err(e) => Err(e.to_string()),
        },
        ["oauth", "store", login] => store_request(ctx, login, body).await,
        _ => Err("unknown command; use: oauth status | oauth store LOGIN".to_string()),
    };
    match result {
        Ok(text) => format!("ok\n{text}"),
        Err(text) => format!("error\n{text}\n"),
    }
}

async fn store_request<R: AsyncBufRead + Unpin>(ctx: &Context, login: &str, body: &mut R) -> Result<String, String> {
    let mut line = Vec::new();
    body.take(MAX_BODY).read_until(b'\n', &mut line).await.map_err(|e| format!("cannot read the request: {e}"))?;
    let line = Secret::new(line);
    let request: StoreRequest = serde_json::from_slice(line.expose())
        .map_err(|_| "the request is not a grant (is the daemon of another version?)".to_string())?;
    let secret = |s: String| Secret::new(s.into_bytes());
    let (password, access, refresh) =
        (secret(request.password), secret(request.access_token), secret(request.refresh_token));
    let config = ctx.config();
    let endpoints = config
        .oauth2_for(login)
        .ok_or_else(|| format!("the running coi-proxy has no [account.oauth2] for {login} (reload it with SIGHUP after editing the configuration)"))?
        .endpoints()
        .map_err(|(key, why)| format!("[account.oauth2] of {login}: {key}: {why}"))?;
    if endpoints.token_url != request.token_url || endpoints.client_id != request.client_id {
        return Err(format!(
            "the running coi-proxy's configuration names another token_url or client_id for {login} than this command's; use the same configuration file"
        ));
    }
    let tokens = TokenSet { access_token: access, refresh_token: Some(refresh), expires_in: request.expires_in };
    grant::replace(ctx, login, &endpoints, tokens, password).await.map_err(|e| e.to_string())?;
    info!(login, "control: stored a new OAuth2 authorization");
    // The account's work that waited for a sign-in may go on now.
    ctx.workers.want(&ctx.config().account_key(login));
    Ok(format!("stored the authorization for {login} in the running coi-proxy\n"))
}

/// The state of every OAuth2 account, for `check` and `oauth status`.
pub fn describe(config: &Config, grants: &[(String, OAuthGrant)], now: i64) -> String {
    let mut logins: Vec<String> = config.oauth2_logins();
    logins.extend(grants.iter().map(|(l, _)| l.clone()));
    logins.sort();
    logins.dedup();
    if logins.is_empty() {
        return "no OAuth2 accounts\n".into();
    }
    let mut out = String::new();
    for login in logins {
        let authorize = format!("run `coi-proxy oauth authorize {login} --password-stdin`");
        match grants.iter().find(|(l, _)| *l == login).map(|(_, g)| g) {
            None => out.push_str(&format!("{login}: not authorized yet; {authorize}\n")),
            Some(g) => {
                if let Some((at, reason)) = &g.refused {
                    out.push_str(&format!(
                        "{login}: REFUSED by the provider {}: {reason}; {authorize}\n",
                        rfc5322_date(*at)
                    ));
                } else {
                    let access = if g.access_expires_at > now {
                        format!("access token good until {}", rfc5322_date(g.access_expires_at))
                    } else {
                        "access token expired (refreshed at the next use)".to_string()
                    };
                    let refreshed = match g.refreshed_at {
                        Some(at) => format!("refreshed {} time(s), last {}", g.refreshes, rfc5322_date(at)),
                        None => "not refreshed yet".to_string(),
                    };
                    out.push_str(&format!(
                        "{login}: authorized {} at {}; {access}; {refreshed}\n",
                        rfc5322_date(g.authorized_at),
                        super::http::origin(&g.token_url)
                    ));
                }
                if config.oauth2_for(&login).is_none() {
                    out.push_str("    (no [account.oauth2] applies to it any more)\n");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(refused: Option<(i64, String)>) -> OAuthGrant {
        OAuthGrant {
            token_url: "https://login.example/tenant/token".into(),
            client_id: "c".into(),
            sealed_tokens: vec![1],
            access_expires_at: 5000,
            sealed_password: vec![2],
            authorized_at: 1000,
            refreshed_at: Some(2000),
            refreshes: 3,
            refused,
        }
    }

    #[test]
    fn the_status_says_what_to_do() {
        let config = Config::parse(
            "[upstream]\nimap = \"imaps://x\"\n[[account]]\nlogin = \"a@x\"\n[account.oauth2]\nprovider = \"microsoft\"\nclient_id = \"c\"\n[[account]]\nlogin = \"b@x\"\n[account.oauth2]\nprovider = \"google\"\nclient_id = \"c\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let text = describe(&config, &[], 0);
        assert!(
            text.contains("a@x: not authorized yet; run `coi-proxy oauth authorize a@x --password-stdin`"),
            "{text}"
        );
        let grants = vec![
            ("a@x".to_string(), grant(None)),
            ("b@x".to_string(), grant(Some((3000, "invalid_grant: revoked".into())))),
            ("c@x".to_string(), grant(None)),
        ];
        let text = describe(&config, &grants, 4000);
        assert!(
            text.contains(
                "a@x: authorized Thu, 01 Jan 1970 00:16:40 +0000 at https://login.example; access token good until"
            ),
            "{text}"
        );
        assert!(text.contains("refreshed 3 time(s)"), "{text}");
        assert!(text.contains("b@x: REFUSED by the provider Thu, 01 Jan 1970 00:50:00 +0000: invalid_grant: revoked; run `coi-proxy oauth authorize b@x"), "{text}");
        assert!(
            text.contains("c@x: authorized") && text.contains("(no [account.oauth2] applies to it any more)"),
            "{text}"
        );
        assert!(describe(&config, &grants, 6000).contains("access token expired"));
        assert_eq!(describe(&Config::defaults(), &[], 0), "no OAuth2 accounts\n");
        assert!(is_ours("oauth status\n") && !is_ours("queue list"));
    }
}
