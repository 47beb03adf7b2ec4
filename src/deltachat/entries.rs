//! The METADATA Delta Chat reads and writes, answered by the proxy whatever the provider has:
//! `GETMETADATA ""` of `/shared/vendor/deltachat/…` (`maxsmtprecipients` from
//! `[deltachat] max_smtp_recipients`, NIL for the rest: no iroh relay, no TURN server, no app
//! versions), `/shared/comment` and `/shared/admin` when `[deltachat]` sets them; and
//! `SETMETADATA "INBOX" (/private/devicetoken "<token>")`, kept in the local store and never
//! sent to the provider. Tokens are write-only: a GETMETADATA of them answers NIL, so a token
//! leaves the proxy only towards the notifier.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::{ADMIN, COMMENT, DEVICE_TOKEN, MAX_SMTP_RECIPIENTS, MAX_TOKEN, VENDOR_SUBTREE};
use crate::account::Account;
use crate::context::{Context, SharedChange};
use crate::imap::wire::metadata::{Entries as EntryList, LocalEntries, Refusal, Status};
use crate::secret::Secret;

/// Why a SETMETADATA of Delta Chat's entries was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0} is set by the proxy's configuration")]
    ReadOnly(String),
    #[error("a device token must be printable ASCII")]
    NotAToken,
    #[error("a device token is at most {MAX_TOKEN} bytes")]
    TooLong,
    #[error("the proxy cannot store the device token now (its store is full or unwritable)")]
    Store,
    #[error("the proxy cannot share the device token with its other instances now (etcd is unreachable)")]
    Cluster,
}

impl Refusal for TokenError {
    fn status(&self) -> Status {
        match self {
            TokenError::ReadOnly(_) | TokenError::NotAToken => Status::Cannot,
            TokenError::TooLong => Status::MaxSize(MAX_TOKEN as u64),
            TokenError::Store | TokenError::Cluster => Status::Unavailable,
        }
    }
}

/// Delta Chat's entries for one session.
pub struct Entries {
    shared: Arc<Context>,
    account: Arc<Account>,
}

impl Entries {
    pub fn new(shared: Arc<Context>, account: Arc<Account>) -> Entries {
        Entries { shared, account }
    }
}

/// A device token as Delta Chat sends it: printable ASCII (`openpgp:` and base64), at most
/// [`MAX_TOKEN`] bytes; stored and POSTed verbatim.
pub fn check_token(value: &[u8]) -> Result<(), TokenError> {
    if value.len() > MAX_TOKEN {
        return Err(TokenError::TooLong);
    }
    if value.is_empty() || !value.iter().all(u8::is_ascii_graphic) {
        return Err(TokenError::NotAToken);
    }
    Ok(())
}

fn is_inbox(mailbox: &[u8]) -> bool {
    mailbox.eq_ignore_ascii_case(b"INBOX")
}

impl LocalEntries for Entries {
    type Error = TokenError;

    fn subtrees(&self, mailbox: &[u8]) -> Vec<&'static str> {
        if is_inbox(mailbox) {
            return vec![DEVICE_TOKEN];
        }
        if !mailbox.is_empty() {
            return Vec::new();
        }
        let config = self.shared.config();
        let mut subtrees = vec![VENDOR_SUBTREE];
        if config.deltachat.comment.is_some() {
            subtrees.push(COMMENT);
        }
        if config.deltachat.admin.is_some() {
            subtrees.push(ADMIN);
        }
        subtrees
    }

    async fn available(&self, mailbox: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        if !mailbox.is_empty() {
            return out;
        }
        let config = self.shared.config();
        let dc = &config.deltachat;
        out.insert(MAX_SMTP_RECIPIENTS.to_string(), dc.max_smtp_recipients.to_string().into_bytes());
        if let Some(comment) = &dc.comment {
            out.insert(COMMENT.to_string(), comment.clone().into_bytes());
        }
        if let Some(admin) = &dc.admin {
            out.insert(ADMIN.to_string(), admin.clone().into_bytes());
        }
        out
    }

    async fn set(&mut self, mailbox: &[u8], entries: &EntryList) -> Result<(), TokenError> {
        for (entry, value) in entries {
            if !is_inbox(mailbox) || entry != DEVICE_TOKEN {
                return Err(TokenError::ReadOnly(entry.clone()));
            }
            // NIL: Delta Chat never sends it, and chatmail ignores it too (a token goes when the
            // notifier says it is gone, or after 90 days).
            let Some(value) = value else { continue };
            check_token(value)?;
            if !self.shared.config().deltachat.push() {
                debug!("Delta Chat push is off ([deltachat] notifier_url = \"\"): device token not kept");
                continue;
            }
            let token = Secret::new(value.clone());
            let now = crate::clock::now_unsigned();
            let login = &self.account.login;
            // With `[cluster]`, etcd first (sealed there): every instance can wake the device.
            let change = SharedChange::DeviceToken { login: login.clone(), token: token.clone(), set_at: Some(now) };
            if let Err(e) = self.shared.publish(change).await {
                warn!("cannot share a Delta Chat device token through the cluster: {e}");
                return Err(TokenError::Cluster);
            }
            if let Err(e) = self
                .shared
                .store
                .dc_token_set(login, &token, now, super::TOKENS_PER_ACCOUNT, super::TOKEN_MAX_AGE)
                .await
            {
                warn!("cannot store a Delta Chat device token: {e}");
                return Err(TokenError::Store);
            }
            info!("Delta Chat device registered for push");
            // With a device to wake, the account needs its worker.
            self.shared.workers.want(login);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_printable_ascii_within_the_limit() {
        assert!(check_token(b"openpgp:wcDMA+abc/def==").is_ok());
        assert!(matches!(check_token(b""), Err(TokenError::NotAToken)));
        assert!(matches!(check_token(b"a b"), Err(TokenError::NotAToken)));
        assert!(matches!(check_token(b"a\r\nb"), Err(TokenError::NotAToken)));
        assert!(matches!(check_token("ä".as_bytes()), Err(TokenError::NotAToken)));
        assert!(check_token(&[b'x'; MAX_TOKEN]).is_ok());
        assert!(matches!(check_token(&[b'x'; MAX_TOKEN + 1]), Err(TokenError::TooLong)));
        assert_eq!(TokenError::TooLong.status(), Status::MaxSize(4096));
        assert_eq!(TokenError::ReadOnly(MAX_SMTP_RECIPIENTS.into()).status(), Status::Cannot);
        assert!(!TokenError::NotAToken.to_string().contains("openpgp"));
    }
}
