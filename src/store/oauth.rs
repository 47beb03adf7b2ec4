//! OAuth2 grants: per account, what `coi-proxy oauth authorize` obtained and each refresh
//! renewed. The tokens and the local password's hash arrive sealed (the oauth wing seals them
//! with `seal`); this table keeps them as opaque bytes next to the facts `check` shows in clear
//! (which endpoint and client, when authorized, refreshed, refused). Point reads: called
//! directly; writes go through the store's writer like every other.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::read_table;
use super::{Pending, Store, StoreError};

/// `account` (the account key; lower-cased before schema 4) → [`OAuthGrant`] as JSON.
pub(super) const OAUTH_GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_grants");

/// One account's grant.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthGrant {
    /// The token endpoint and client the grant was issued to: its refresh token is sent nowhere
    /// else.
    pub token_url: String,
    pub client_id: String,
    /// The access and refresh token, sealed.
    #[serde(with = "b64")]
    pub sealed_tokens: Vec<u8>,
    /// When the access token expires (Unix seconds).
    pub access_expires_at: i64,
    /// The hash of the local password the client logs in to the proxy with, sealed.
    #[serde(with = "b64")]
    pub sealed_password: Vec<u8>,
    pub authorized_at: i64,
    /// The last successful refresh, and how many there were.
    #[serde(default)]
    pub refreshed_at: Option<i64>,
    #[serde(default)]
    pub refreshes: u64,
    /// Set when the provider refused a refresh for good (`invalid_grant`): when, and its words.
    #[serde(default)]
    pub refused: Option<(i64, String)>,
}

impl std::fmt::Debug for OAuthGrant {
    /// Without the sealed blobs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthGrant")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("access_expires_at", &self.access_expires_at)
            .field("authorized_at", &self.authorized_at)
            .field("refreshed_at", &self.refreshed_at)
            .field("refreshes", &self.refreshes)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

fn decode(login: &str, bytes: &[u8]) -> Result<OAuthGrant, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("oauth grant of {login}: {e}")))
}

impl Store {
    /// `login`'s grant, if `oauth authorize` stored one. A grant an earlier release kept under
    /// the lower-cased login that no login has claimed yet is `login`'s too until one does
    /// (read only: it moves when a login proves itself, `claim_legacy_state`).
    pub fn oauth_grant(&self, login: &str) -> Result<Option<OAuthGrant>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, OAUTH_GRANTS)? else { return Ok(None) };
        if let Some(v) = table.get(login)? {
            return decode(login, v.value()).map(Some);
        }
        let lower = login.to_ascii_lowercase();
        if lower == login || !self.legacy_identity_unclaimed(&lower)? {
            return Ok(None);
        }
        table.get(lower.as_str())?.map(|v| decode(&lower, v.value())).transpose()
    }

    /// Stores `login`'s grant, replacing any; durable when the `Pending` resolves (a rotated
    /// refresh token must survive a crash before it is used).
    pub fn oauth_grant_save(&self, login: &str, grant: &OAuthGrant) -> Pending<()> {
        let (login, json) = (login.to_string(), serde_json::to_vec(grant).expect("plain struct"));
        self.write(move |txn| {
            txn.open_table(OAUTH_GRANTS)?.insert(login.as_str(), json.as_slice())?;
            Ok(())
        })
    }

    /// Every stored grant, by login.
    pub fn oauth_grants(&self) -> Result<Vec<(String, OAuthGrant)>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, OAUTH_GRANTS)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let login = k.value().to_string();
            let grant = decode(&login, v.value())?;
            out.push((login, grant));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> OAuthGrant {
        OAuthGrant {
            token_url: "https://idp.example/token".into(),
            client_id: "client".into(),
            sealed_tokens: vec![1, 2, 3, 255],
            access_expires_at: 100,
            sealed_password: vec![9; 40],
            authorized_at: 50,
            refreshed_at: None,
            refreshes: 0,
            refused: None,
        }
    }

    #[test]
    fn grants_round_trip_by_exact_login() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.oauth_grant("a@x").unwrap(), None);
        assert!(store.oauth_grants().unwrap().is_empty());
        let mut g = grant();
        store.oauth_grant_save("a@x", &g).wait().unwrap();
        assert_eq!(store.oauth_grant("a@x").unwrap(), Some(g.clone()));
        assert_eq!(store.oauth_grant("A@x").unwrap(), None, "another login on a case-sensitive provider");
        g.refreshes = 1;
        g.refused = Some((70, "invalid_grant".into()));
        store.oauth_grant_save("a@x", &g).wait().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.oauth_grants().unwrap(), vec![("a@x".to_string(), g)]);
        assert!(!format!("{:?}", grant()).contains("sealed"), "Debug leaves the blobs out");
    }
}
