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
use super::queue::Body;
use super::session::{QueueRefusal, Submission};
use crate::openpgp::autocrypt::PreferEncrypt;
use crate::openpgp::encrypt::{Outgoing, Prepared, classify, prepare};
use crate::openpgp::group;
use crate::openpgp::identity::IdentityError;
use crate::store::{Recipient, RecipientState, StoreError};

/// Messages prepared at once (each is read whole into memory, and a new one made): with the
/// SIZE limit, what bounds the gateway's share of memory however many clients finish a message.
const AT_ONCE: usize = 2;
/// What preparing a message holds, in multiples of its size (the message read whole, the one
/// made, and the parts in between), charged to the memory budget before it is read.
pub const MEMORY_FACTOR: u64 = 3;
/// How long a finished message may wait for room in the memory budget before `452`.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| tokio::sync::Semaphore::new(AT_ONCE))
}

/// Applies the gateway to `sub` and its `body` (in place). A spooled body is read into memory
/// for it ([`AT_ONCE`] messages at a time), and what the gateway makes goes to a new spool file;
/// `Err` is the refusal for the client.
pub async fn outgoing(ctx: &Smtp, sub: &mut Submission, body: &mut Body) -> Result<(), QueueRefusal> {
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
    let login = sub.login.clone();
    let message = std::mem::replace(body, Body::Bytes(Vec::new()));
    let store = ctx.shared.store.clone();
    let _slot = slots().acquire().await.map_err(|_| QueueRefusal::Unavailable("shutting down".into()))?;
    // The whole message is in memory while it is encrypted: charged to the account's share of
    // the memory budget first (waiting a little for room, then 452).
    let size = match &message {
        Body::Bytes(bytes) => bytes.len() as u64,
        Body::Spooled(file) => tokio::fs::metadata(file.path()).await.map_or(sub.size, |m| m.len()),
    };
    let _memory = ctx
        .shared
        .memory
        .account(&sub.login)
        .charge_within(size.saturating_mul(MEMORY_FACTOR) as usize, MEMORY_WAIT)
        .await
        .map_err(|e| {
            warn!(size, "OpenPGP gateway: no room in the memory budget: {e}");
            QueueRefusal::Memory(e)
        })?;
    let result = tokio::task::spawn_blocking(move || {
        let (bytes, spooled) = match message {
            Body::Bytes(bytes) => (bytes, None),
            Body::Spooled(file) => match std::fs::read(file.path()) {
                Ok(bytes) => (bytes, Some(file)),
                Err(e) => return Err(QueueRefusal::Unavailable(format!("cannot read the message back: {e}"))),
            },
        };
        let known = |addr: &str| identity.peer(&login, addr).ok().flatten();
        let now = crate::clock::now();
        // A reply to a Delta Chat group's message goes to the group: to every member, with the
        // group's id and name inside, encrypted (else as the client wrote it).
        let groups = match classify(&bytes) {
            Outgoing::Plain => identity.groups(&login).unwrap_or_else(|e| {
                warn!("OpenPGP gateway: cannot read the account's groups: {e}");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        let mut added = Vec::new();
        let mut prepared = None;
        if let Some(group) = group::of_reply(&bytes, &groups) {
            let (addressed, to_add) = group::address(&bytes, group, &login, &envelope);
            let all: Vec<String> = envelope.iter().chain(&to_add).cloned().collect();
            match prepare(&addressed, &key, &all, &known, PreferEncrypt::Mutual, now) {
                Ok(Prepared::Encrypted { message }) => {
                    debug!(group = %group.id, added = to_add.len(), "OpenPGP gateway: a reply to a Delta Chat group");
                    prepared = Some(Ok(Prepared::Encrypted { message }));
                    added = to_add;
                }
                _ => debug!(
                    group = %group.id,
                    "OpenPGP gateway: a group reply that cannot be encrypted to every member goes as written"
                ),
            }
        }
        let prepared = prepared.unwrap_or_else(|| prepare(&bytes, &key, &envelope, &known, PreferEncrypt::Mutual, now));
        let made = match &prepared {
            Ok(Prepared::Clear { message, .. } | Prepared::Encrypted { message }) => Some(message.as_slice()),
            _ => None,
        };
        let body = match (made, spooled) {
            (Some(message), _) => spool(&store, message)?,
            (None, Some(file)) => Body::Spooled(file),
            (None, None) => Body::Bytes(bytes),
        };
        Ok((prepared, body, added))
    })
    .await;
    let (prepared, made, added) = match result {
        Ok(done) => done?,
        Err(e) => return Err(QueueRefusal::Unavailable(format!("the encryption task failed: {e}"))),
    };
    for address in added {
        sub.recipients.push(Recipient { address, notify: None, orcpt: None, state: RecipientState::Pending });
    }
    match prepared {
        Ok(Prepared::AsIs) => debug!("OpenPGP gateway: sent as the client made it"),
        Ok(Prepared::Clear { message, without_key }) => {
            debug!(without_key = ?without_key, "OpenPGP gateway: in clear, with our Autocrypt header");
            sub.size = message.len() as u64;
        }
        Ok(Prepared::Encrypted { message }) => {
            debug!("OpenPGP gateway: encrypted and signed");
            sub.size = message.len() as u64;
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
    *body = made;
    Ok(())
}

/// `message` in a new spool file (blocking).
fn spool(store: &crate::store::Store, message: &[u8]) -> Result<Body, QueueRefusal> {
    use std::io::Write;
    let refusal = |e: StoreError| match e {
        StoreError::DiskFull => QueueRefusal::NoSpace,
        e => {
            warn!("OpenPGP gateway: cannot write the message: {e}");
            QueueRefusal::Unavailable("the message cannot be written to disk".into())
        }
    };
    let (guard, mut file) = store.spool_create().map_err(refusal)?;
    file.write_all(message).map_err(|e| refusal(StoreError::from_io(guard.path(), e)))?;
    Ok(Body::Spooled(guard))
}
