//! The etcd keyspace of a cluster, in one place (sans-I/O): every key the instances write, and
//! how a shared-state key is read back into the change it carries.
//!
//! ```text
//! /coi-proxy/members/<node>                     node name, on the node's lease
//! /coi-proxy/owner/<login>                      owning node, on its lease; create_revision = fence
//! /coi-proxy/acct/<login>/inbox                 "uidvalidity:next_uid", the owner's progress
//! /coi-proxy/acct/<login>/meta/<mailbox>/<entry> a METADATA value (mailbox base64url, "" = server)
//! /coi-proxy/acct/<login>/push/<id>             a WebPush subscription, sealed
//! /coi-proxy/acct/<login>/dctoken/<sha256 hex>  a Delta Chat device token and when set, sealed
//! /coi-proxy/acct/<login>/oauth                 the OAuth2 grant, sealed
//! /coi-proxy/acct/<login>/pgp/key               the OpenPGP secret key (create-if-absent), sealed
//! /coi-proxy/acct/<login>/pgp/<kind>/<id>       an Autocrypt peer, invite, handshake or group, sealed
//! /coi-proxy/pushed/<login>/<uidvalidity>/<uid> a push's claim (one per message)
//! /coi-proxy/vapid                              the VAPID private key, sealed
//! ```
//!
//! Logins (the account key, exactly as the store has it: two logins a case-sensitive provider
//! tells apart never share a key) and ids are escaped (`%` and `/`) so that a key splits back
//! unambiguously. A device token is named by its SHA-256, never by itself.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::context::{OpenPgpEntry, PushChannel};

pub const MEMBERS: &str = "/coi-proxy/members/";
pub const OWNERS: &str = "/coi-proxy/owner/";
pub const ACCOUNTS: &str = "/coi-proxy/acct/";
pub const VAPID: &str = "/coi-proxy/vapid";
/// Seal purposes of what leaves the instance.
pub const SEAL_PUSH: &str = "coi-proxy cluster push subscription";
pub const SEAL_VAPID: &str = "coi-proxy cluster vapid key";
pub const SEAL_DC_TOKEN: &str = "coi-proxy cluster delta chat device token";
pub const SEAL_OAUTH: &str = "coi-proxy cluster oauth2 grant";
pub const SEAL_OPENPGP: &str = "coi-proxy cluster openpgp state";

fn escape(text: &str) -> String {
    text.replace('%', "%25").replace('/', "%2F")
}

fn unescape(login: &str) -> String {
    login.replace("%2F", "/").replace("%25", "%")
}

pub fn member(node: &str) -> String {
    format!("{MEMBERS}{node}")
}

pub fn owner(login: &str) -> String {
    format!("{OWNERS}{}", escape(login))
}

/// The login of an owner key.
pub fn owner_login(key: &[u8]) -> Option<String> {
    std::str::from_utf8(key).ok()?.strip_prefix(OWNERS).map(unescape)
}

pub fn progress(login: &str) -> String {
    format!("{ACCOUNTS}{}/inbox", escape(login))
}

/// The claim of a push about a message; WebPush keeps the key of earlier releases.
pub fn pushed(channel: PushChannel, login: &str, uidvalidity: u32, uid: u32) -> String {
    let kind = match channel {
        PushChannel::WebPush => "pushed",
        PushChannel::DeviceToken => "notified",
    };
    format!("/coi-proxy/{kind}/{}/{uidvalidity}/{uid}", escape(login))
}

pub fn metadata(login: &str, mailbox: &[u8], entry: &str) -> String {
    format!("{ACCOUNTS}{}/meta/{}/{entry}", escape(login), URL_SAFE_NO_PAD.encode(mailbox))
}

pub fn push(login: &str, id: &str) -> String {
    format!("{ACCOUNTS}{}/push/{id}", escape(login))
}

pub fn device_token(login: &str, token: &[u8]) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(token).iter().map(|b| format!("{b:02x}")).collect();
    format!("{ACCOUNTS}{}/dctoken/{hash}", escape(login))
}

pub fn oauth(login: &str) -> String {
    format!("{ACCOUNTS}{}/oauth", escape(login))
}

pub fn openpgp(login: &str, entry: &OpenPgpEntry) -> String {
    let (kind, id) = match entry {
        OpenPgpEntry::Key => return format!("{ACCOUNTS}{}/pgp/key", escape(login)),
        OpenPgpEntry::Peer(id) => ("peer", id),
        OpenPgpEntry::Invite(id) => ("invite", id),
        OpenPgpEntry::Join(id) => ("join", id),
        OpenPgpEntry::Group(id) => ("group", id),
    };
    format!("{ACCOUNTS}{}/pgp/{kind}/{}", escape(login), escape(id))
}

fn parse_openpgp(rest: &str) -> Option<OpenPgpEntry> {
    if rest == "key" {
        return Some(OpenPgpEntry::Key);
    }
    let (kind, id) = rest.split_once('/')?;
    let id = unescape(id);
    if id.is_empty() {
        return None;
    }
    Some(match kind {
        "peer" => OpenPgpEntry::Peer(id),
        "invite" => OpenPgpEntry::Invite(id),
        "join" => OpenPgpEntry::Join(id),
        "group" => OpenPgpEntry::Group(id),
        _ => return None,
    })
}

/// What a key under [`ACCOUNTS`] holds.
#[derive(Debug, PartialEq, Eq)]
pub enum AccountKey {
    Metadata {
        login: String,
        mailbox: Vec<u8>,
        entry: String,
    },
    Push {
        login: String,
        id: String,
    },
    DeviceToken {
        login: String,
    },
    OAuth {
        login: String,
    },
    OpenPgp {
        login: String,
        entry: OpenPgpEntry,
    },
    /// The worker's progress, or a key of a later version: not replicated into the store.
    Other,
}

pub fn parse_account_key(key: &[u8]) -> AccountKey {
    let Some(rest) = std::str::from_utf8(key).ok().and_then(|k| k.strip_prefix(ACCOUNTS)) else {
        return AccountKey::Other;
    };
    let Some((login, rest)) = rest.split_once('/') else { return AccountKey::Other };
    let login = unescape(login);
    if let Some(rest) = rest.strip_prefix("meta/")
        && let Some((mailbox, entry)) = rest.split_once('/')
        && let Ok(mailbox) = URL_SAFE_NO_PAD.decode(mailbox)
        && !entry.is_empty()
    {
        return AccountKey::Metadata { login, mailbox, entry: entry.to_string() };
    }
    if rest == "oauth" {
        return AccountKey::OAuth { login };
    }
    if let Some(hash) = rest.strip_prefix("dctoken/") {
        return match hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            true => AccountKey::DeviceToken { login },
            false => AccountKey::Other,
        };
    }
    if let Some(rest) = rest.strip_prefix("pgp/") {
        return parse_openpgp(rest).map_or(AccountKey::Other, |entry| AccountKey::OpenPgp { login, entry });
    }
    match rest.strip_prefix("push/") {
        Some(id) if !id.is_empty() => AccountKey::Push { login, id: id.to_string() },
        _ => AccountKey::Other,
    }
}

/// `uidvalidity:next_uid`.
pub fn encode_progress((uidvalidity, next_uid): (u32, u32)) -> String {
    format!("{uidvalidity}:{next_uid}")
}

pub fn decode_progress(value: &[u8]) -> Option<(u32, u32)> {
    let (v, n) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((v.parse().ok()?, n.parse().ok()?))
}

/// The most accounts one of `members` live instances takes while others are under their share:
/// about ceil(accounts / members).
pub fn share(accounts: usize, members: usize) -> usize {
    accounts.div_ceil(members.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back() {
        let entry = "/private/vendor/vendor.dovecot/coi/config/enabled";
        let key = metadata("Alice@Example.org", b"", entry);
        assert_eq!(key, format!("/coi-proxy/acct/Alice@Example.org/meta//{entry}"), "the login as given");
        assert_eq!(
            parse_account_key(key.as_bytes()),
            AccountKey::Metadata { login: "Alice@Example.org".into(), mailbox: vec![], entry: entry.into() }
        );
        assert_ne!(oauth("Bob@x"), oauth("bob@x"), "logins differing in case never share a key");
        let key = metadata("a/b%c@x", b"COI/Chats", "/shared/comment");
        assert_eq!(
            parse_account_key(key.as_bytes()),
            AccountKey::Metadata {
                login: "a/b%c@x".into(),
                mailbox: b"COI/Chats".to_vec(),
                entry: "/shared/comment".into()
            }
        );
        assert_eq!(
            parse_account_key(push("a@x", "dev-1").as_bytes()),
            AccountKey::Push { login: "a@x".into(), id: "dev-1".into() }
        );
        assert_eq!(parse_account_key(progress("a@x").as_bytes()), AccountKey::Other);
        let token = device_token("a/b@x", b"openpgp:secret-token");
        assert!(!token.contains("secret"), "a token is named by its hash: {token}");
        assert_eq!(parse_account_key(token.as_bytes()), AccountKey::DeviceToken { login: "a/b@x".into() });
        assert_eq!(parse_account_key(b"/coi-proxy/acct/a@x/dctoken/abc"), AccountKey::Other);
        assert_eq!(parse_account_key(oauth("a@x").as_bytes()), AccountKey::OAuth { login: "a@x".into() });
        for entry in [
            OpenPgpEntry::Key,
            OpenPgpEntry::Peer("p%q/r@y".into()),
            OpenPgpEntry::Invite("inv".into()),
            OpenPgpEntry::Join("j".into()),
            OpenPgpEntry::Group("g/h".into()),
        ] {
            let key = openpgp("a@x", &entry);
            assert_eq!(parse_account_key(key.as_bytes()), AccountKey::OpenPgp { login: "a@x".into(), entry });
        }
        assert_eq!(parse_account_key(b"/coi-proxy/acct/a@x/pgp/peer/"), AccountKey::Other);
        assert_eq!(parse_account_key(b"/coi-proxy/acct/a@x/pgp/other/x"), AccountKey::Other);
        assert_eq!(parse_account_key(b"/coi-proxy/acct/a@x/meta/!!/e"), AccountKey::Other, "bad mailbox");
        assert_eq!(parse_account_key(b"/elsewhere"), AccountKey::Other);
        assert_eq!(owner_login(owner("a/b@x").as_bytes()).as_deref(), Some("a/b@x"));
        assert_eq!(owner_login(b"/coi-proxy/members/a"), None);
    }

    #[test]
    fn progress_and_share() {
        assert_eq!(decode_progress(encode_progress((7, 42)).as_bytes()), Some((7, 42)));
        assert_eq!(decode_progress(b"7"), None);
        assert_eq!(decode_progress(b"x:1"), None);
        assert_eq!((share(1, 2), share(2, 2), share(3, 2), share(0, 3), share(5, 0)), (1, 1, 2, 1, 5));
    }
}
