//! An account's grant at run time: the local password checked against its sealed hash, the
//! access token taken from memory or the store while it is good, and refreshed under the
//! account's lock when it is not (one refresh at a time per account; the rotated refresh token
//! is committed to the store before the new access token is used). A refresh the provider
//! refuses for good (`invalid_grant`) is recorded, so `check` can say so and logins are told to
//! re-authorize without asking the provider again for a minute.

use std::sync::Arc;

use tracing::{info, warn};

use super::endpoint;
use super::http;
use super::password;
use super::token::{TokenReply, TokenSet};
use super::{OAuthError, blocking};
use crate::account::{Account, Bearer};
use crate::clock::now;
use crate::config::{Config, OAuth2Endpoints};
use crate::context::{Cluster, Context, SharedChange};
use crate::seal::SealKey;
use crate::secret::Secret;
use crate::store::{OAuthGrant, Store};

/// After a refused refresh, logins hear that verdict for this long before the provider is asked
/// again (a user who re-authorizes replaces the grant at once).
const ASK_AGAIN_AFTER: i64 = 60;
/// The most a token is refreshed ahead of its expiry (email-oauth2-proxy uses 600 s; tokens
/// live an hour at Google and Microsoft).
const MAX_MARGIN: i64 = 300;

/// The seal purpose of an account's tokens.
pub fn tokens_purpose(login: &str) -> String {
    format!("oauth2-tokens:{}", login.to_ascii_lowercase())
}

/// The seal purpose of an account's local password hash.
pub fn password_purpose(login: &str) -> String {
    format!("oauth2-local-password:{}", login.to_ascii_lowercase())
}

/// The two tokens, as sealed together.
pub struct Tokens {
    pub access: Secret,
    pub refresh: Secret,
}

impl Tokens {
    /// Length of the access token (4 bytes, big-endian), the access token, the refresh token.
    fn seal(&self, key: &SealKey, login: &str) -> Vec<u8> {
        let mut plain = Vec::with_capacity(4 + self.access.len() + self.refresh.len());
        plain.extend_from_slice(&(self.access.len() as u32).to_be_bytes());
        plain.extend_from_slice(self.access.expose());
        plain.extend_from_slice(self.refresh.expose());
        let plain = Secret::new(plain);
        key.seal(&tokens_purpose(login), plain.expose())
    }

    fn open(key: &SealKey, login: &str, sealed: &[u8]) -> Result<Tokens, OAuthError> {
        let seal_error = |source| OAuthError::Seal { login: login.to_string(), source };
        let plain = key.open(&tokens_purpose(login), sealed).map_err(seal_error)?;
        let bytes = plain.expose();
        let corrupt = || OAuthError::Store(crate::store::StoreError::Corrupt(format!("oauth tokens of {login}")));
        let len = bytes.get(..4).ok_or_else(corrupt)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let access = bytes.get(4..4 + len).ok_or_else(corrupt)?;
        let refresh = &bytes[4 + len..];
        Ok(Tokens { access: Secret::new(access.to_vec()), refresh: Secret::new(refresh.to_vec()) })
    }
}

/// How early before its expiry a token of `lifetime` seconds is refreshed: a quarter of its
/// life, at most [`MAX_MARGIN`].
fn margin(lifetime: i64) -> i64 {
    (lifetime / 4).clamp(0, MAX_MARGIN)
}

/// Whether a token expiring at `expires_at` is good for a while yet at `now`.
pub fn fresh(expires_at: i64, lifetime: i64, now: i64) -> bool {
    expires_at - now > margin(lifetime)
}

/// The grant `oauth authorize` stores: the tokens (a refresh token is required), the hash of the
/// local password, the endpoint and client they belong to. Blocking (Argon2): call off the
/// runtime.
pub fn new_grant(
    key: &SealKey,
    login: &str,
    endpoints: &OAuth2Endpoints,
    tokens: TokenSet,
    password: &Secret,
    now: i64,
) -> Result<OAuthGrant, OAuthError> {
    let refresh = tokens.refresh_token.ok_or(OAuthError::NoRefreshToken)?;
    let sealed_tokens = Tokens { access: tokens.access_token, refresh }.seal(key, login);
    let hash = password::hash(password);
    Ok(OAuthGrant {
        token_url: endpoints.token_url.clone(),
        client_id: endpoints.client_id.clone(),
        sealed_tokens,
        access_expires_at: now.saturating_add(tokens.expires_in.min(i64::MAX as u64) as i64),
        sealed_password: key.seal(&password_purpose(login), hash.expose()),
        authorized_at: now,
        refreshed_at: None,
        refreshes: 0,
        refused: None,
    })
}

/// Hashes the password, seals and stores a new grant (durably), replacing any; with
/// `[cluster]` (`cluster`) in etcd first, so that every instance has it. Used by the daemon for
/// `oauth authorize` and by the command line when no daemon runs.
pub async fn save_new(
    store: &Store,
    key: &Arc<SealKey>,
    login: &str,
    endpoints: &OAuth2Endpoints,
    tokens: TokenSet,
    password: Secret,
    cluster: Option<&Arc<dyn Cluster>>,
) -> Result<(), OAuthError> {
    let (owned, key, endpoints) = (login.to_string(), key.clone(), endpoints.clone());
    let grant = blocking(move || new_grant(&key, &owned, &endpoints, tokens, &password, now())).await??;
    save(store, cluster, login, grant).await
}

/// A point read (one key): called directly, as the store's doc allows.
fn load(store: &Store, login: &str) -> Result<OAuthGrant, OAuthError> {
    store.oauth_grant(login)?.ok_or_else(|| OAuthError::NotAuthorized { login: login.into() })
}

/// Stores `login`'s grant: with `[cluster]` in etcd first (sealed there).
async fn save(
    store: &Store,
    cluster: Option<&Arc<dyn Cluster>>,
    login: &str,
    grant: OAuthGrant,
) -> Result<(), OAuthError> {
    if let Some(cluster) = cluster {
        let change = SharedChange::OAuthGrant { login: login.to_string(), grant: grant.clone() };
        cluster.publish(change).await.map_err(OAuthError::Cluster)?;
    }
    Ok(store.oauth_grant_save(login, &grant).await?)
}

fn endpoints_for(config: &Config, login: &str) -> Result<OAuth2Endpoints, OAuthError> {
    let oauth2 = config.oauth2_for(login).ok_or_else(|| OAuthError::NotConfigured { login: login.into() })?;
    oauth2.endpoints().map_err(|(key, why)| OAuthError::Config { login: login.into(), key, why })
}

/// A client's login: `password` checked against the stored hash (off the runtime), then a
/// good access token. A wrong password never reaches the provider.
pub async fn sign_in(ctx: &Context, login: &str, password: &Secret) -> Result<Secret, OAuthError> {
    endpoints_for(&ctx.config(), login)?;
    // Kept under the account key, like the rest of the store.
    let login = &ctx.config().account_key(login);
    let grant = load(&ctx.store, login)?;
    let key = seal_key(ctx, login).await?;
    let (owned, given) = (login.to_string(), password.clone());
    let matches = blocking(move || {
        let hash = key.open(&password_purpose(&owned), &grant.sealed_password);
        hash.map(|hash| password::verify(&hash, &given)).map_err(|source| OAuthError::Seal { login: owned, source })
    })
    .await??;
    if !matches {
        return Err(OAuthError::WrongPassword);
    }
    access_token(ctx, login, None).await
}

/// A good access token for `login`, refreshed if it expires soon. `refused`: the token the
/// provider just turned down, which forces a refresh unless another task has refreshed since.
///
/// The work runs in a task of its own that finishes even when the caller gives up (a client's
/// login timeout): a refresh whose answer has arrived is always committed, because the provider
/// may have revoked the old refresh token with that answer.
pub async fn access_token(ctx: &Context, login: &str, refused: Option<&Secret>) -> Result<Secret, OAuthError> {
    let login = &ctx.config().account_key(login);
    let job = Refresh {
        cluster: ctx.cluster.clone(),
        account: ctx.accounts.account(login),
        store: ctx.store.clone(),
        seal: seal_key(ctx, login).await?,
        config: ctx.config(),
        login: login.to_string(),
        refused: refused.cloned(),
    };
    tokio::spawn(job.run()).await.map_err(|_| OAuthError::Task)?
}

/// The daemon's seal key, read or made (off the runtime) at its first use.
async fn seal_key(ctx: &Context, login: &str) -> Result<Arc<SealKey>, OAuthError> {
    if let Some(key) = ctx.seal.if_loaded() {
        return Ok(key);
    }
    let cell = ctx.seal.clone();
    blocking(move || cell.get()).await?.map_err(|source| OAuthError::Seal { login: login.to_string(), source })
}

/// What [`access_token`] hands its task.
struct Refresh {
    cluster: Option<Arc<dyn Cluster>>,
    account: Arc<Account>,
    store: Store,
    seal: Arc<SealKey>,
    config: Arc<Config>,
    login: String,
    refused: Option<Secret>,
}

impl Refresh {
    async fn run(self) -> Result<Secret, OAuthError> {
        let Refresh { cluster, account, store, seal, config, login, refused } = self;
        let cluster = cluster.as_ref();
        let login = login.as_str();
        let mut slot = account.bearer.lock().await;
        let t = now();
        let turned_down = |token: &Secret| refused.as_ref().is_some_and(|r| r.expose() == token.expose());
        if let Some(bearer) = slot.as_ref()
            && fresh(bearer.expires_at, bearer.lifetime, t)
            && !turned_down(&bearer.token)
        {
            return Ok(bearer.token.clone());
        }
        *slot = None;
        let endpoints = endpoints_for(&config, login)?;
        let mut grant = load(&store, login)?;
        if grant.token_url != endpoints.token_url || grant.client_id != endpoints.client_id {
            return Err(OAuthError::Reauthorize {
                login: login.into(),
                reason: "the configuration names another token_url or client_id than the grant was made for".into(),
            });
        }
        let tokens = Tokens::open(&seal, login, &grant.sealed_tokens)?;
        let lifetime = grant.access_expires_at - grant.refreshed_at.unwrap_or(grant.authorized_at);
        if fresh(grant.access_expires_at, lifetime, t) && !turned_down(&tokens.access) {
            *slot = Some(Bearer { token: tokens.access.clone(), expires_at: grant.access_expires_at, lifetime });
            return Ok(tokens.access);
        }
        if let Some((at, reason)) = &grant.refused
            && t - at < ASK_AGAIN_AFTER
        {
            return Err(OAuthError::Reauthorize { login: login.into(), reason: reason.clone() });
        }
        let origin = http::origin(&endpoints.token_url);
        match endpoint::refresh(&endpoints, &tokens.refresh).await? {
            TokenReply::Tokens(set) => {
                let rotated = set.refresh_token.is_some();
                let fresh_tokens =
                    Tokens { access: set.access_token, refresh: set.refresh_token.unwrap_or(tokens.refresh) };
                let lifetime = set.expires_in.min(i64::MAX as u64) as i64;
                grant.sealed_tokens = fresh_tokens.seal(&seal, login);
                grant.access_expires_at = t.saturating_add(lifetime);
                grant.refreshed_at = Some(t);
                grant.refreshes += 1;
                grant.refused = None;
                let expires_at = grant.access_expires_at;
                // Durable before the new token is used: the provider may have revoked the old
                // refresh token already.
                save(&store, cluster, login, grant).await?;
                *slot = Some(Bearer { token: fresh_tokens.access.clone(), expires_at, lifetime });
                info!(login, expires_in = lifetime, rotated, "refreshed the OAuth2 access token");
                Ok(fresh_tokens.access)
            }
            TokenReply::Error(e) if e.is_permanent() => {
                // With `[cluster]` another instance may have refreshed meanwhile with the same
                // refresh token (a provider that rotates them refuses the second): its grant,
                // brought here by the replica, is the good one.
                if let Ok(current) = load(&store, login)
                    && current.sealed_tokens != grant.sealed_tokens
                    && current.refused.is_none()
                {
                    let tokens = Tokens::open(&seal, login, &current.sealed_tokens)?;
                    info!(login, "another instance refreshed the OAuth2 grant meanwhile; using its token");
                    let lifetime = current.access_expires_at - current.refreshed_at.unwrap_or(current.authorized_at);
                    *slot =
                        Some(Bearer { token: tokens.access.clone(), expires_at: current.access_expires_at, lifetime });
                    return Ok(tokens.access);
                }
                warn!(login, "{origin} refused to refresh the OAuth2 grant: {}", e.describe());
                grant.refused = Some((t, e.describe()));
                save(&store, cluster, login, grant).await?;
                Err(OAuthError::Reauthorize { login: login.into(), reason: e.describe() })
            }
            TokenReply::Error(e) => Err(OAuthError::Provider { origin, error: e.describe() }),
        }
    }
}

/// Stores a new grant for `login` in the running daemon: under the account's lock, so that a
/// refresh in flight cannot write the old grant back over it, and with the cached access token
/// dropped.
pub async fn replace(
    ctx: &Context,
    login: &str,
    endpoints: &OAuth2Endpoints,
    tokens: TokenSet,
    password: Secret,
) -> Result<(), OAuthError> {
    let login = &ctx.config().account_key(login);
    let account = ctx.accounts.account(login);
    let mut slot = account.bearer.lock().await;
    let key = seal_key(ctx, login).await?;
    save_new(&ctx.store, &key, login, endpoints, tokens, password, ctx.cluster.as_ref()).await?;
    *slot = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_seal_for_their_account_only() {
        let key = SealKey::generate();
        let t = Tokens { access: Secret::new(b"acc".to_vec()), refresh: Secret::new(b"ref\0resh".to_vec()) };
        let sealed = t.seal(&key, "A@x");
        let back = Tokens::open(&key, "a@X", &sealed).unwrap();
        assert_eq!((back.access.expose(), back.refresh.expose()), (&b"acc"[..], &b"ref\0resh"[..]));
        assert!(matches!(Tokens::open(&key, "b@x", &sealed), Err(OAuthError::Seal { .. })));
        assert!(!sealed.windows(3).any(|w| w == b"acc"));
        let bad = key.seal(&tokens_purpose("a@x"), &[0, 0, 0, 9, 1]);
        assert!(matches!(Tokens::open(&key, "a@x", &bad), Err(OAuthError::Store(_))));
    }

    #[test]
    fn refresh_ahead_of_expiry() {
        // An hour's token: five minutes ahead; a short one: a quarter of its life.
        assert!(fresh(1000 + 301, 3600, 1000));
        assert!(!fresh(1000 + 300, 3600, 1000));
        assert!(fresh(1000 + 3, 8, 1000));
        assert!(!fresh(1000 + 2, 8, 1000));
        assert!(!fresh(999, 3600, 1000));
        assert!(!fresh(1000, 0, 1000));
    }

    #[test]
    fn a_new_grant_needs_a_refresh_token_and_hides_its_secrets() {
        let key = SealKey::generate();
        let endpoints = crate::config::OAuth2 {
            provider: Some("google".into()),
            device_authorization_url: None,
            authorization_url: None,
            token_url: None,
            client_id: "c".into(),
            client_secret: None,
            scope: None,
        }
        .endpoints()
        .unwrap();
        let set = |refresh: Option<&str>| TokenSet {
            access_token: Secret::new(b"ACCESS-123".to_vec()),
            refresh_token: refresh.map(|r| Secret::new(r.as_bytes().to_vec())),
            expires_in: 3600,
        };
        let pw = Secret::new(b"local-pw".to_vec());
        assert!(matches!(new_grant(&key, "a@x", &endpoints, set(None), &pw, 10), Err(OAuthError::NoRefreshToken)));
        let grant = new_grant(&key, "a@x", &endpoints, set(Some("REFRESH-456")), &pw, 10).unwrap();
        assert_eq!((grant.access_expires_at, grant.authorized_at), (3610, 10));
        assert_eq!(grant.token_url, "https://oauth2.googleapis.com/token");
        let json = serde_json::to_string(&grant).unwrap();
        for secret in ["ACCESS-123", "REFRESH-456", "local-pw", "argon2"] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        let hash = key.open(&password_purpose("a@x"), &grant.sealed_password).unwrap();
        assert!(password::verify(&hash, &pw));
    }
}
