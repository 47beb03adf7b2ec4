//! The OpenPGP gateway on the way out: before a submitted message is queued, the account's
//! key (made at first use) gives it an `Autocrypt` header, and it is encrypted and signed as
//! PGP/MIME when every recipient (the envelope: To, Cc and Bcc) has a key
//! (`openpgp::encrypt::prepare`). A message the client encrypted itself, or that carries its
//! own Autocrypt header (Delta Chat), passes as it is. Mail that would reach a verified
//! contact in clear is refused with `554 5.7.1` naming who has no key.

use tracing::{debug, warn};

use super::Smtp;
use super::session::{QueueRefusal, Submission};
use crate::openpgp::autocrypt::PreferEncrypt;
use crate::openpgp::encrypt::{Prepared, prepare};
use crate::openpgp::identity::IdentityError;
use crate::store::StoreError;

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
        let prepared = prepare(&body, &key, &envelope, &known, PreferEncrypt::Mutual, crate::clock::now());
        (prepared, body)
    })
    .await;
    let (prepared, body) = match result {
        Ok(done) => done,
        Err(e) => return Err(QueueRefusal::Unavailable(format!("the encryption task failed: {e}"))),
    };
    sub.body = body;
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
