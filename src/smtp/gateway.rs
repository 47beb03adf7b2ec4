//! The OpenPGP gateway on the way out: before a submitted message is queued, the account's
//! key (made at first use) gives it an `Autocrypt` header, and it is encrypted and signed as
//! PGP/MIME when every recipient (the envelope: To, Cc and Bcc) has a key
//! (`openpgp::encrypt::prepare`). A message the client encrypted itself, or that carries its
//! own Autocrypt header (Delta Chat), passes as it is. Mail that would reach a verified
//! contact in clear is refused with `554 5.7.1` naming who has no key. A reply to a message of
//! a Delta Chat group the account is in goes to the whole group (`openpgp::group`): every member
//! is added to To and the envelope, and the group's id and name go inside, encrypted.

use tracing::{debug, warn};

use super::Smtp;
use super::session::{QueueRefusal, Submission};
use crate::openpgp::autocrypt::PreferEncrypt;
use crate::openpgp::encrypt::{Outgoing, Prepared, classify, prepare};
use crate::openpgp::group;
use crate::openpgp::identity::IdentityError;
use crate::store::{Recipient, RecipientState, StoreError};

/// Applies the gateway to `sub` (in place); `Err` is the refusal for the client.
pub async fn outgoing(ctx: &Smtp, sub: &mut Submission) -> Result<(), QueueRefusal> {
    let Some(identity) = ctx.identity.clone() else { return Ok(()) };
    let key = identity.account_key(&sub.login).await.map_err(|e| match e {
        // The key made now could not be stored: as for the message itself, `452`.
        IdentityError::Store(StoreError::DiskFull) => QueueRefusal::NoSpace,
        e => {
            warn!("OpenPGP gateway: no key for the account: {e}");
            QueueRefusal::Unavailable("the account's OpenPGP key is not available".into())
        }
    })?;
    // The worker learns keys from here on.
    ctx.shared.workers.want(&sub.login);
    let envelope: Vec<String> = sub.recipients.iter().map(|r| r.address.clone()).collect();
    let (login, body) = (sub.login.clone(), std::mem::take(&mut sub.body));
    let result = tokio::task::spawn_blocking(move || {
        let known = |addr: &str| identity.peer(&login, addr).ok().flatten();
        let now = crate::clock::now();
        // A reply to a Delta Chat group's message goes to the group: to every member, with the
        // group's id and name inside, encrypted (else as the client wrote it).
        let groups = match classify(&body) {
            Outgoing::Plain => identity.groups(&login).unwrap_or_else(|e| {
                warn!("OpenPGP gateway: cannot read the account's groups: {e}");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        if let Some(group) = group::of_reply(&body, &groups) {
            let (addressed, added) = group::address(&body, group, &login, &envelope);
            let all: Vec<String> = envelope.iter().chain(&added).cloned().collect();
            if let Ok(Prepared::Encrypted { message }) =
                prepare(&addressed, &key, &all, &known, PreferEncrypt::Mutual, now)
            {
                debug!(group = %group.id, added = added.len(), "OpenPGP gateway: a reply to a Delta Chat group");
                return (Ok(Prepared::Encrypted { message }), body, added);
            }
            debug!(group = %group.id, "OpenPGP gateway: a group reply that cannot be encrypted to every member goes as written");
        }
        let prepared = prepare(&body, &key, &envelope, &known, PreferEncrypt::Mutual, now);
        (prepared, body, Vec::new())
    })
    .await;
    let (prepared, body, added) = match result {
        Ok(done) => done,
        Err(e) => return Err(QueueRefusal::Unavailable(format!("the encryption task failed: {e}"))),
    };
    sub.body = body;
    for address in added {
        sub.recipients.push(Recipient { address, notify: None, orcpt: None, state: RecipientState::Pending });
    }
    match prepared {
        Ok(Prepared::AsIs) => debug!("OpenPGP gateway: sent as the client made it"),
        Ok(Prepared::Clear { message, without_key }) => {
            debug!(without_key = ?without_key, "OpenPGP gateway: in clear, with our Autocrypt header");
            sub.body = message;
        }
        Ok(Prepared::Encrypted { message }) => {
            debug!("OpenPGP gateway: encrypted and signed");
            sub.body = message;
        }
        Ok(Prepared::Refused { without_key, verified }) => {
            return Err(QueueRefusal::NotEncryptable(format!(
                "Not sent: {} only get encrypted mail (verified contacts), but {} have no key; send to them \
                 separately",
                verified.join(", "),
                without_key.join(", ")
            )));
        }
        Err(e) => {
            warn!("OpenPGP gateway: cannot encrypt: {e}");
            return Err(QueueRefusal::Unavailable(format!("cannot encrypt the message: {e}")));
        }
    }
    Ok(())
}
