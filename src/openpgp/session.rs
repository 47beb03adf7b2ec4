//! The decrypted view on a plain mail client's session (issue 15): FETCH of content (`BODY[]`,
//! sections, `RFC822*`, `BODYSTRUCTURE`, `BODY`, `ENVELOPE`, `RFC822.SIZE`) is answered from
//! each encrypted message's view ([`super::cache`]), everything else as the provider answers.
//!
//! Only what must be is taken out of the relay's stream: a FETCH without content items is not
//! intercepted at all; an intercepted one first asks the provider which of its messages are
//! encrypted (`SEARCH … HEADER Content-Type multipart/encrypted`, small), has the provider
//! answer the others straight to the client (their literals stream as before), and composes
//! the answers for the encrypted ones. SELECT and EXAMINE are relayed untouched but watched for
//! the mailbox name; its UIDVALIDITY (asked with STATUS before the first view) and the UID name
//! a view.

use std::sync::Arc;

use tracing::{debug, warn};

use super::cache::{Held, Known, Shown, Views};
use super::encrypt::EncryptError;
use crate::imap::wire::command::{self, Arg, CommandName, Head};
use crate::imap::wire::fetch::{self, Item, Items};
use crate::imap::wire::message::MessageView;
use crate::imap::wire::provider::{
    FETCHES, Interceptor, MAX_INTERCEPTED, ProviderCommands, ProviderError, Reply, ReplyOut,
};
use crate::imap::wire::response::{appenduid, copyuid, search_uids, uid_set};
use crate::limits::budget::{Charge, Exceeded, Share};
use crate::store::ViewId;

/// Capabilities a session of an account with views loses (`-NAME` removes it, see
/// `capability::post_login`): what the proxy cannot keep consistent with the views
/// (server-side previews, sorting and threading by content, BINARY sections, CATENATE and
/// URLAUTH of parts). Chat clients do not use them.
pub const DROPPED_CAPABILITIES: &[&str] =
    &["-BINARY", "-PREVIEW", "-SNIPPET", "-SORT", "-THREAD", "-CATENATE", "-URLAUTH"];

/// Most bytes of originals read by one command (the session captures at most 4 MiB of the
/// answer to one of its own commands): smaller originals are read several at a time, a larger
/// one alone in pieces of this size (`BODY.PEEK[]<offset.size>`), up to
/// [`Views::max_message`]; a larger one is shown as an explanation.
const ORIGINALS_BATCH: u64 = 2 * 1024 * 1024;
/// Charges to the memory budget grow in steps of this many bytes.
const CHARGE_STEP: usize = 256 * 1024;

/// The search key that finds the messages that may have a view at the provider: PGP/MIME, and
/// SecureJoin handshake mail sent unencrypted (the legacy first step), which shows as a notice.
const ENCRYPTED_KEY: &str = "OR HEADER Content-Type \"multipart/encrypted\" HEADER Secure-Join \"\"";

/// One session's view state.
pub struct ViewSession {
    views: Arc<Views>,
    login: String,
    /// Whether the client is a plain mail program now (a chat client may say so after login).
    plain: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The selected mailbox and its UIDVALIDITY.
    selected: Option<(String, u32)>,
    /// A SELECT or EXAMINE went by (with its mailbox, if it was on its line): `selected` is
    /// asked again before the next view.
    selecting: std::sync::Mutex<Option<Option<String>>>,
    /// The session's hook for `\Seen` set by the client (read receipts, the worker's nudge).
    seen_changed: Option<Arc<dyn Fn() + Send + Sync>>,
    /// An APPEND being read whole: its bytes so far (literals and their lines), and what of
    /// them counts against the bound on large messages ([`Views::hold`]). Boxed: every
    /// session task carries this struct, idle or not.
    appending: Box<std::sync::Mutex<(usize, Option<Held>)>>,
}

impl ViewSession {
    pub fn new(views: Arc<Views>, login: &str, plain: Arc<dyn Fn() -> bool + Send + Sync>) -> ViewSession {
        ViewSession {
            views,
            login: login.to_string(),
            plain,
            selected: None,
            selecting: Default::default(),
            seen_changed: None,
            appending: Default::default(),
        }
    }

    /// Tells `hook` when a FETCH sets `\Seen` on encrypted messages (the relay's hook for
    /// relayed commands does not see the proxy's own STORE).
    pub fn with_seen_hook(mut self, hook: Arc<dyn Fn() + Send + Sync>) -> ViewSession {
        self.seen_changed = Some(hook);
        self
    }

    /// The selected mailbox and its UIDVALIDITY, asked with STATUS once after each SELECT
    /// (which is relayed untouched: its answer streams, and the relay keeps knowing whether
    /// INBOX is selected).
    async fn selected(&mut self, provider: &mut impl ProviderCommands) -> Result<Option<(String, u32)>, ProviderError> {
        let pending = self.selecting.lock().expect("selecting").take();
        if let Some(mailbox) = pending {
            self.selected = None;
            let Some(mailbox) = mailbox else { return Ok(None) };
            let quoted = String::from_utf8_lossy(&command::astring(mailbox.as_bytes(), false)).into_owned();
            let reply = provider.run(format!("STATUS {quoted} (UIDVALIDITY)\r\n").as_bytes(), &[b"* STATUS"]).await?;
            let uidvalidity = reply.untagged.iter().find_map(|r| {
                let text = String::from_utf8_lossy(r).to_ascii_uppercase();
                let at = text.find("UIDVALIDITY ")? + "UIDVALIDITY ".len();
                text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok()
            });
            if let Some(uidvalidity) = uidvalidity {
                self.views.mailbox_seen(&self.login, &mailbox, uidvalidity).await;
                self.selected = Some((mailbox, uidvalidity));
            }
        }
        Ok(self.selected.clone())
    }

    async fn fetch(&mut self, rest: &[u8], provider: &mut impl ProviderCommands, reply_out: &mut ReplyOut) -> Reply {
        let Some(request) = FetchRequest::parse(rest) else { return relay(rest, provider).await };
        let (mailbox, uidvalidity) = match self.selected(provider).await {
            Ok(Some(selected)) => selected,
            Ok(None) => return relay(rest, provider).await,
            Err(e) => return failed(&e),
        };
        let by = if request.uid { "UID SEARCH UID" } else { "SEARCH" };
        let set = &request.set;
        let all = match search(provider, format!("{by} {set}\r\n")).await {
            Ok(found) => found,
            Err(e) => return failed(&e),
        };
        let encrypted = match search(provider, format!("{by} {set} {ENCRYPTED_KEY}\r\n")).await {
            Ok(found) => found,
            Err(e) => return failed(&e),
        };
        if encrypted.is_empty() {
            return relay(rest, provider).await;
        }
        let command = if request.uid { "UID FETCH" } else { "FETCH" };
        let others: Vec<u32> = all.iter().copied().filter(|n| !encrypted.contains(n)).collect();
        let mut status = None;
        if !others.is_empty() {
            // Straight to the client: these literals stream.
            let line = format!("{command} {} {}\r\n", uid_set(&others), request.items_text);
            match provider.run(line.as_bytes(), &[]).await {
                Ok(reply) if reply.ok() => status = Some(reply),
                Ok(reply) => return reply,
                Err(e) => return failed(&e),
            }
        }
        let mut out = Vec::new();
        let mut seen_set = false;
        if request.items.iter().any(Item::sets_seen) {
            let store = if request.uid { "UID STORE" } else { "STORE" };
            // Fails harmlessly on a mailbox opened with EXAMINE.
            let line = format!("{store} {} +FLAGS.SILENT (\\Seen)\r\n", uid_set(&encrypted));
            match provider.run(line.as_bytes(), &[]).await {
                Err(e) => return failed(&e),
                Ok(reply) => seen_set = reply.ok(),
            }
        }
        // The provider's items (flags, dates, UID) and the message numbers of the encrypted ones.
        let mut provider_items: Vec<String> = vec!["UID".into()];
        // The `\Seen` this fetch set is told, as the provider tells it for the others.
        if request.items.iter().any(Item::sets_seen) {
            provider_items.push("FLAGS".into());
        }
        for item in &request.items {
            if let Item::Other(name) = item
                && !provider_items.contains(name)
            {
                provider_items.push(name.clone());
            }
        }
        let line = format!("{command} {} ({})\r\n", uid_set(&encrypted), provider_items.join(" "));
        let reply = match provider.run(line.as_bytes(), FETCHES).await {
            Ok(reply) => reply,
            Err(e) => return failed(&e),
        };
        let mut messages = Vec::new();
        for resp in &reply.untagged {
            match fetch::parse_response(resp) {
                Some((number, items)) => {
                    let uid = items
                        .iter()
                        .find(|(n, _)| n == "UID")
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
                    match uid {
                        Some(uid) => messages.push((number, uid, items)),
                        None => out.extend_from_slice(resp),
                    }
                }
                // EXISTS, EXPUNGE and the like go on to the client.
                None => out.extend_from_slice(resp),
            }
        }
        let (views, mut charge) = match self.views_of(&mailbox, uidvalidity, &messages, request.uid, provider).await {
            Ok((views, passthrough, charge)) => {
                out.extend(passthrough.concat());
                (views, charge)
            }
            Err(e) => return failed(&e),
        };
        let originals: Vec<u32> = messages
            .iter()
            .zip(&views)
            .filter(|(_, d)| matches!(d, Decided::Shown(Shown::Original)))
            .map(|((number, uid, _), _)| if request.uid { *uid } else { *number })
            .collect();
        // The provider's last command for this FETCH: its answer streams to the client.
        if !originals.is_empty() {
            let line = format!("{command} {} {}\r\n", uid_set(&originals), request.items_text);
            if let Err(e) = provider.run(line.as_bytes(), &[]).await {
                return failed(&e);
            }
        }
        // Told once the views are decided: read receipts read a request inside the encryption
        // from them.
        if seen_set && let Some(seen_changed) = &self.seen_changed {
            seen_changed();
        }
        // The answers from the views, in parts the client takes one after the other: a large
        // view is loaded when its turn comes, so the command holds one at a time.
        for ((number, _, items), decided) in messages.iter().zip(views) {
            if let Some(Shown::View { view, .. }) = decided.load(&self.views).await {
                out.extend(compose(*number, request.uid, &request.items, items, &view));
            }
            if let Some(charge) = charge.as_mut()
                && let Err(e) = charge.cover(charge.bytes().max(out.len()), CHARGE_STEP)
            {
                return failed(&ProviderError::Connection(Box::new(e)));
            }
            if out.len() >= PART {
                reply_out.send(std::mem::take(&mut out)).await;
            }
        }
        let status = status.unwrap_or(reply).status;
        Reply { untagged: vec![out], status }
    }

    /// SEARCH and UID SEARCH: the provider's answer for messages that are not encrypted, the
    /// program judged on the clear text (with the provider's word on flags, dates, UIDs) for
    /// those that are.
    async fn search(&mut self, tag: &str, rest: &[u8], provider: &mut impl ProviderCommands) -> Reply {
        let (mailbox, uidvalidity) = match self.selected(provider).await {
            Ok(Some(selected)) => selected,
            Ok(None) => return relay(rest, provider).await,
            Err(e) => return failed(&e),
        };
        let Ok(parsed) = command::parse(&[tag.as_bytes(), b" ", rest].concat()) else {
            return relay(rest, provider).await;
        };
        // ESEARCH (RFC 4731): the options are answered here, the program judged as any other.
        let (returns, args) = match search_return(&parsed.args) {
            Some(split) => split,
            None => return relay(rest, provider).await,
        };
        let program = match super::search::parse(args) {
            Ok(program) => program,
            Err(e) => {
                debug!("{e}; the provider answers alone");
                return relay(rest, provider).await;
            }
        };
        // Everything in the client command's numbering (UIDs or message numbers): a UID command
        // during a SEARCH by number would let the provider send EXPUNGE in the middle of it.
        let (by, within_key) = if parsed.uid { ("UID SEARCH", "UID ") } else { ("SEARCH", "") };
        let encrypted = match search(provider, format!("{by} {ENCRYPTED_KEY}\r\n")).await {
            Ok(found) => found,
            Err(e) => return failed(&e),
        };
        if encrypted.is_empty() {
            return relay(rest, provider).await;
        }
        // The program as the client wrote it, without its RETURN options.
        let program_text = {
            let at = rest.windows(6).position(|w| w.eq_ignore_ascii_case(b"SEARCH")).map_or(0, |i| i + 6);
            let program = &rest[at..];
            let trimmed = program.trim_ascii_start();
            match trimmed.get(..6).filter(|w| w.eq_ignore_ascii_case(b"RETURN")) {
                Some(_) => &trimmed[trimmed.iter().position(|&b| b == b')').map_or(0, |i| i + 1)..],
                None => program,
            }
        };
        let answer = match provider.run(&[by.as_bytes(), program_text].concat(), &[b"* SEARCH"]).await {
            Ok(reply) => reply,
            Err(e) => return failed(&e),
        };
        if !answer.ok() {
            return answer;
        }
        let by_provider: Vec<u32> = answer.untagged.iter().flat_map(|r| search_uids(r)).collect();
        let within = uid_set(&encrypted);
        let mut keys: Vec<(String, Vec<u32>)> = Vec::new();
        for key in program.provider_keys() {
            match search(provider, format!("{by} {within_key}{within} {key}\r\n")).await {
                Ok(found) => keys.push((key, found)),
                Err(e) => return failed(&e),
            }
        }
        let mut untagged = Vec::new();
        let messages: Vec<(u32, u32, Items)> = if parsed.uid {
            encrypted.iter().map(|&u| (u, u, Vec::new())).collect()
        } else {
            // Their UIDs, which name the views.
            let line = format!("FETCH {within} (UID)\r\n");
            let reply = match provider.run(line.as_bytes(), FETCHES).await {
                Ok(reply) => reply,
                Err(e) => return failed(&e),
            };
            let mut pairs = Vec::new();
            for resp in reply.untagged {
                let uid = fetch::parse_response(&resp).and_then(|(n, items)| {
                    let uid = items.iter().find(|(k, _)| k == "UID")?;
                    Some((n, std::str::from_utf8(&uid.1).ok()?.parse::<u32>().ok()?))
                });
                match uid {
                    Some((n, uid)) => pairs.push((n, uid, Vec::new())),
                    None => untagged.push(resp),
                }
            }
            encrypted.iter().filter_map(|n| pairs.iter().find(|(m, _, _)| m == n).cloned()).collect()
        };
        let views = match self.views_of(&mailbox, uidvalidity, &messages, parsed.uid, provider).await {
            Ok((views, passthrough, _charge)) => {
                untagged.extend(passthrough);
                views
            }
            Err(e) => return failed(&e),
        };
        let encrypted: Vec<u32> = messages.iter().map(|(n, _, _)| *n).collect();
        let mut found: Vec<u32> = by_provider.iter().copied().filter(|n| !encrypted.contains(n)).collect();
        for (&n, decided) in encrypted.iter().zip(views) {
            let Some(shown) = decided.load(&self.views).await else { continue };
            let hit = match &shown {
                Shown::View { view, .. } => {
                    let clear = super::search::Clear::new(view);
                    program.matches(&clear, &|key| keys.iter().any(|(k, ns)| k == key && ns.contains(&n)))
                }
                Shown::Original => by_provider.contains(&n),
            };
            if hit {
                found.push(n);
            }
        }
        found.sort_unstable();
        let line = match returns {
            Some(options) => esearch(tag, parsed.uid, &options, &found),
            None => {
                let mut line = String::from("* SEARCH");
                for n in &found {
                    line.push_str(&format!(" {n}"));
                }
                line + "\r\n"
            }
        };
        untagged.push(line.into_bytes());
        Reply { untagged, status: answer.status }
    }

    /// APPEND (and MULTIAPPEND): each copy of an encrypted conversation is stored encrypted to
    /// the account and its new UID shows the client's clear text; anything else goes as it
    /// came. The encryption runs off the runtime; nothing of the command reaches the provider
    /// unless every copy that needs it was encrypted.
    async fn append(&mut self, command: Vec<u8>, provider: &mut impl ProviderCommands) -> Reply {
        if AppendRequest::parse(rest_of(&command)).is_none() {
            return relay(rest_of(&command), provider).await;
        }
        let (views, login) = (self.views.clone(), self.login.clone());
        let made = tokio::task::spawn_blocking(move || {
            let append = AppendRequest::parse(rest_of(&command)).expect("parsed before");
            let mut line = Vec::new();
            // The clear text of each message stored encrypted, for its view.
            let mut seeds: Vec<Option<Vec<u8>>> = Vec::new();
            for (head, message) in &append.messages {
                let stored = match views.own_copy_blocking(&login, message)? {
                    Some(encrypted) => {
                        seeds.push(Some(message.to_vec()));
                        encrypted
                    }
                    None => {
                        seeds.push(None);
                        message.to_vec()
                    }
                };
                line.extend_from_slice(head);
                line.extend_from_slice(format!("{{{}}}\r\n", stored.len()).as_bytes());
                line.extend_from_slice(&stored);
            }
            line.extend_from_slice(b"\r\n");
            let mailbox = append.mailbox;
            // Only when nothing was encrypted is the command needed again, as it came.
            let command = seeds.iter().all(Option::is_none).then_some(command);
            Ok::<_, EncryptError>((mailbox, line, seeds, command))
        })
        .await;
        let (mailbox, line, seeds) = match made {
            Ok(Ok((_, _, _, Some(command)))) => return relay(rest_of(&command), provider).await,
            Ok(Ok((mailbox, line, seeds, None))) => (mailbox, line, seeds),
            Ok(Err(e)) => {
                // Never the clear text of an encrypted conversation at the provider.
                warn!("cannot encrypt an appended copy: {e}");
                let status =
                    format!("NO [CANNOT] coi-proxy could not encrypt this copy of an encrypted conversation: {e}\r\n");
                return Reply { untagged: Vec::new(), status: status.into_bytes() };
            }
            Err(e) => return failed(&ProviderError::Connection(Box::new(e))),
        };
        let reply = match provider.run(&line, &[]).await {
            Ok(reply) => reply,
            Err(e) => return failed(&e),
        };
        drop(line);
        debug!(status = %reply.status_text(), messages = seeds.len(), "appended copies stored encrypted to the account");
        // APPENDUID names the new UIDs in the order of the messages (RFC 4315).
        let uids = appenduid(&reply.status).filter(|(_, uids)| reply.ok() && uids.len() == seeds.len());
        if let Some((uidvalidity, uids)) = uids {
            let (views, login) = (self.views.clone(), self.login.clone());
            let seeded = tokio::task::spawn_blocking(move || {
                for (uid, clear) in uids.into_iter().zip(seeds) {
                    if let Some(clear) = clear {
                        views.seed_blocking(&ViewId::new(&login, &mailbox, uidvalidity, uid), clear);
                    }
                }
            })
            .await;
            if let Err(e) = seeded {
                warn!("cannot keep the view of an appended copy: {e}");
            }
        }
        reply
    }

    /// COPY and MOVE (and their UID forms): the provider's answer; each decided view goes to
    /// its copy's UID (COPYUID), so the copy shows what the original showed.
    async fn copy(&mut self, rest: &[u8], moving: bool, provider: &mut impl ProviderCommands) -> Reply {
        let (mailbox, uidvalidity) = match self.selected(provider).await {
            Ok(Some(selected)) => selected,
            Ok(None) => return relay(rest, provider).await,
            Err(e) => return failed(&e),
        };
        let target =
            command::parse(&[b"x ", rest].concat()).ok().and_then(|c| c.args.get(1)?.astring().map(mailbox_name));
        // MOVE says COPYUID untagged, before its EXPUNGEs (which go on to the client as they come).
        let capture: &[&[u8]] = if moving { &[b"* OK [COPYUID "] } else { &[] };
        let reply = match provider.run(rest, capture).await {
            Ok(reply) => reply,
            Err(e) => return failed(&e),
        };
        let responses: Vec<&[u8]> = reply.untagged.iter().map(Vec::as_slice).chain([reply.status.as_slice()]).collect();
        if let (true, Some(target), Some((target_validity, pairs))) = (reply.ok(), target, copyuid(&responses)) {
            let (views, login) = (self.views.clone(), self.login.clone());
            let carried = tokio::task::spawn_blocking(move || {
                for (from, to) in pairs {
                    views.copy_blocking(
                        &ViewId::new(&login, &mailbox, uidvalidity, from),
                        &ViewId::new(&login, &target, target_validity, to),
                    );
                }
            })
            .await;
            if let Err(e) = carried {
                warn!("cannot carry views to copied messages: {e}");
            }
        }
        reply
    }

    /// The views of the messages, deciding those not decided yet from their originals; with
    /// the charge to the memory budget for the originals read (`Err` when the budget has no
    /// room for them: a [`ProviderError::Connection`] holding the [`Exceeded`]).
    async fn views_of(
        &self,
        mailbox: &str,
        uidvalidity: u32,
        messages: &[(u32, u32, Items)],
        by_uid: bool,
        provider: &mut impl ProviderCommands,
    ) -> Result<(Vec<Decided>, Vec<Vec<u8>>, Option<Charge>), ProviderError> {
        // The originals read, and the views composed from them, are charged to the account's
        // share of the memory budget (`Views::charge_to`); the share is looked up here rather
        // than kept, since every session task carries its interceptors.
        let mut charge = self.views.share(&self.login).as_ref().map(Share::empty);
        let ids: Vec<ViewId> =
            messages.iter().map(|(_, uid, _)| ViewId::new(&self.login, mailbox, uidvalidity, *uid)).collect();
        let views = self.views.clone();
        let lookup = ids.clone();
        let known: Vec<Known> =
            tokio::task::spawn_blocking(move || lookup.iter().map(|id| views.known_within(id, INLINE)).collect())
                .await
                .map_err(|e| ProviderError::Connection(Box::new(e)))?;
        // In the client command's numbering: a UID command while the client waits for a FETCH or
        // SEARCH by number would let the provider send EXPUNGE in the middle of it.
        let missing: Vec<u32> = messages
            .iter()
            .zip(&known)
            .filter(|(_, k)| matches!(k, Known::Undecided))
            .map(|((number, uid, _), _)| if by_uid { *uid } else { *number })
            .collect();
        let mut originals: Vec<(u32, Vec<u8>)> = Vec::new();
        // Untagged responses that are not about these messages (EXISTS, EXPUNGE) go on.
        let mut passthrough = Vec::new();
        // Read alone, in pieces: (number in the command's numbering, UID, size).
        let mut large: Vec<(u32, u32, u64)> = Vec::new();
        // Over the bound: explained from their header (UID, size, header).
        let mut too_large: Vec<(u32, u64, Vec<u8>)> = Vec::new();
        if !missing.is_empty() {
            let command = if by_uid { "UID FETCH" } else { "FETCH" };
            let max = self.views.max_message() as u64;
            // Their sizes first: the originals are read in batches the session can capture whole.
            let line = format!("{command} {} (UID RFC822.SIZE)\r\n", uid_set(&missing));
            let reply = provider.run(line.as_bytes(), FETCHES).await?;
            let mut batches: Vec<Vec<u32>> = vec![Vec::new()];
            let mut batch_bytes = 0u64;
            let mut over: Vec<(u32, u64)> = Vec::new();
            for resp in &reply.untagged {
                let Some((number, items)) = fetch::parse_response(resp) else {
                    passthrough.push(resp.clone());
                    continue;
                };
                let value = |name: &str| {
                    items
                        .iter()
                        .find(|(n, _)| n == name)
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                };
                let (Some(uid), Some(size)) = (value("UID"), value("RFC822.SIZE")) else { continue };
                let Ok(uid) = u32::try_from(uid) else { continue };
                let key = if by_uid { uid } else { number };
                if size > max {
                    over.push((key, size));
                    continue;
                }
                if size > ORIGINALS_BATCH {
                    large.push((key, uid, size));
                    continue;
                }
                if batch_bytes + size > ORIGINALS_BATCH && !batches.last().is_some_and(Vec::is_empty) {
                    batches.push(Vec::new());
                    batch_bytes = 0;
                }
                batch_bytes += size;
                batches.last_mut().expect("a batch").push(key);
            }
            for batch in batches.iter().filter(|b| !b.is_empty()) {
                let line = format!("{command} {} (UID BODY.PEEK[])\r\n", uid_set(batch));
                let reply = provider.run(line.as_bytes(), FETCHES).await?;
                for resp in &reply.untagged {
                    match body_of(resp, "BODY[]") {
                        Some((uid, body)) => {
                            if let Some(charge) = charge.as_mut() {
                                charge.grow(body.len()).map_err(|e| ProviderError::Connection(Box::new(e)))?;
                            }
                            originals.push((uid, body));
                        }
                        None => passthrough.push(resp.clone()),
                    }
                }
            }
            if !over.is_empty() {
                let keys: Vec<u32> = over.iter().map(|(k, _)| *k).collect();
                let line = format!("{command} {} (UID RFC822.SIZE BODY.PEEK[HEADER])\r\n", uid_set(&keys));
                let reply = provider.run(line.as_bytes(), FETCHES).await?;
                for resp in &reply.untagged {
                    let Some((uid, header)) = body_of(resp, "BODY[HEADER]") else {
                        passthrough.push(resp.clone());
                        continue;
                    };
                    let size = fetch::parse_response(resp).and_then(|(_, items)| {
                        let (_, v) = items.iter().find(|(n, _)| n == "RFC822.SIZE")?;
                        std::str::from_utf8(v).ok()?.parse().ok()
                    });
                    too_large.push((uid, size.unwrap_or_default(), header));
                }
            }
        }
        let mut decided_large: Vec<(u32, Decided)> = Vec::new();
        for (key, uid, size) in large {
            // A few at a time across all sessions: each is read whole and decrypted in memory.
            let held = self.views.hold_waiting(size as usize).await;
            let command = if by_uid { "UID FETCH" } else { "FETCH" };
            let mut whole = Vec::with_capacity(size as usize);
            loop {
                let line = format!("{command} {key} (UID BODY.PEEK[]<{}.{ORIGINALS_BATCH}>)\r\n", whole.len());
                let reply = provider.run(line.as_bytes(), FETCHES).await?;
                let mut piece = None;
                for resp in &reply.untagged {
                    match body_of(resp, "BODY[]<") {
                        Some((_, bytes)) => piece = Some(bytes),
                        None => passthrough.push(resp.clone()),
                    }
                }
                let Some(piece) = piece else { break };
                let end = piece.len() < ORIGINALS_BATCH as usize;
                whole.extend_from_slice(&piece);
                if end || whole.len() as u64 > size.max(self.views.max_message() as u64) {
                    break;
                }
            }
            if whole.is_empty() {
                continue; // Expunged meanwhile: decided when asked again.
            }
            let (views, id) = (self.views.clone(), ViewId::new(&self.login, mailbox, uidvalidity, uid));
            let kept = id.clone();
            let shown = tokio::task::spawn_blocking(move || views.views_blocking(vec![(id, Some(whole))]))
                .await
                .map_err(|e| ProviderError::Connection(Box::new(e)))?;
            drop(held);
            decided_large.extend(shown.into_iter().map(|s| (uid, Decided::of(s, &kept))));
        }
        let views = self.views.clone();
        let done: Vec<u32> = decided_large.iter().map(|(uid, _)| *uid).collect();
        let known_before = known.clone();
        let rest = tokio::task::spawn_blocking(move || {
            for (uid, size, header) in &too_large {
                if let Some(id) = ids.iter().find(|id| id.uid == *uid) {
                    views.too_large_blocking(id, header, *size);
                }
            }
            let mut originals = originals;
            // The undecided ones (not read alone above), each with its original (none if
            // expunged meanwhile).
            let messages: Vec<_> = ids
                .into_iter()
                .zip(&known)
                .filter(|(id, known)| matches!(known, Known::Undecided) && !done.contains(&id.uid))
                .map(|(id, _)| {
                    let original =
                        originals.iter().position(|(uid, _)| *uid == id.uid).map(|at| originals.swap_remove(at).1);
                    (id, original)
                })
                .collect();
            let ids: Vec<ViewId> = messages.iter().map(|(id, _)| id.clone()).collect();
            let shown = views.views_blocking(messages);
            shown.into_iter().zip(&ids).map(|(s, id)| Decided::of(s, id)).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ProviderError::Connection(Box::new(e)))?;
        // In the order of `messages`: those known before, those read alone, the others.
        let mut rest = rest.into_iter();
        let decided = messages
            .iter()
            .zip(known_before)
            .map(|((_, uid, _), known)| match known {
                Known::Shown(shown) => Decided::Shown(shown),
                Known::Large => Decided::Large(ViewId::new(&self.login, mailbox, uidvalidity, *uid)),
                Known::Undecided => match decided_large.iter().position(|(u, _)| u == uid) {
                    Some(at) => decided_large.swap_remove(at).1,
                    None => rest.next().unwrap_or(Decided::Shown(Shown::Original)),
                },
            })
            .collect();
        Ok((decided, passthrough, charge))
    }
}

impl ViewSession {
    /// Whether a mailbox is (or is being) selected.
    fn has_mailbox(&self) -> bool {
        match &*self.selecting.lock().expect("selecting") {
            Some(pending) => pending.is_some(),
            None => self.selected.is_some(),
        }
    }
}

impl Interceptor for ViewSession {
    fn wants(&self, _: CommandName) -> bool {
        false
    }

    /// Whether or not the client is a plain one now, and whatever is selected.
    fn watches(&self, name: CommandName, _uid: bool) -> bool {
        use CommandName::*;
        matches!(name, Select | Examine | Search | Copy | Move | Append | Fetch)
    }

    fn wants_command(&self, name: CommandName, uid: bool, line: &[u8]) -> bool {
        if !(self.plain)() {
            return false;
        }
        match name {
            CommandName::Select | CommandName::Examine => {
                // Watched, not taken: the mailbox name is kept for the next FETCH or SEARCH.
                let mailbox = command::parse(line).ok().and_then(|c| c.args.first()?.astring().map(mailbox_name));
                *self.selecting.lock().expect("selecting") = Some(mailbox);
                false
            }
            CommandName::Search => self.has_mailbox(),
            CommandName::Copy | CommandName::Move => self.has_mailbox(),
            // Every APPEND with a literal, up to `collect_limit`: a larger one is refused rather
            // than stored in clear.
            CommandName::Append => !uid && AppendRequest::literal_len(line).is_some(),
            CommandName::Fetch => {
                self.has_mailbox()
                    && FetchRequest::parse(rest_of(line)).is_some_and(|r| r.items.iter().any(Item::is_content))
            }
            _ => false,
        }
    }

    /// An APPEND is read whole up to [`Views::max_message`] per message; over
    /// [`MAX_INTERCEPTED`] in all, its bytes count against the installation's bound on large
    /// messages held at once (called for its first line and again for each further literal).
    fn collect_limit(&self, name: CommandName, _uid: bool, line: &[u8]) -> usize {
        if name != CommandName::Append {
            return MAX_INTERCEPTED;
        }
        let mut appending = self.appending.lock().expect("appending");
        if Head::parse(line).is_some_and(|h| h.name == CommandName::Append) {
            *appending = (0, None);
        }
        let (so_far, held) = &mut *appending;
        let limit = |so_far: usize| so_far.max(MAX_INTERCEPTED);
        let Some(len) = AppendRequest::literal_len(line) else { return limit(*so_far) };
        if len > self.views.max_message() {
            return limit(*so_far);
        }
        let wanted = *so_far + line.len() + len + 2;
        if wanted <= MAX_INTERCEPTED {
            *so_far = wanted;
            return MAX_INTERCEPTED;
        }
        let more = wanted - held.as_ref().map_or(0, Held::bytes);
        match self.views.hold(held.take(), more) {
            Ok(now) => {
                *held = Some(now);
                *so_far = wanted;
                wanted
            }
            Err(before) => {
                debug!(bytes = wanted, "too many large messages appended at once; this one is refused");
                *held = before;
                limit(*so_far)
            }
        }
    }

    async fn handle<P: ProviderCommands>(&mut self, command: Vec<u8>, provider: &mut P, out: &mut ReplyOut) -> Vec<u8> {
        let Some(head) = Head::parse(&command) else { return b"* BAD Invalid command\r\n".to_vec() };
        let tag = String::from_utf8_lossy(head.tag).into_owned();
        let rest = rest_of(&command);
        let reply = match head.name {
            CommandName::Search => self.search(&tag, rest, provider).await,
            CommandName::Fetch => self.fetch(rest, provider, out).await,
            CommandName::Append => {
                let reply = self.append(command, provider).await;
                // What it held is free again.
                *self.appending.lock().expect("appending") = (0, None);
                reply
            }
            CommandName::Copy => self.copy(rest, false, provider).await,
            CommandName::Move => self.copy(rest, true, provider).await,
            _ => relay(rest, provider).await,
        };
        let mut out: Vec<u8> = reply.untagged.concat();
        out.extend(reply.for_client(&tag));
        out
    }
}

/// Composed FETCH answers are handed to the client in parts of about this size.
const PART: usize = 256 * 1024;

/// Views larger than this that are not in memory are loaded one at a time, as a FETCH answer
/// or a SEARCH gets to them, so a command over many large messages holds one at a time.
const INLINE: usize = 4 * 1024 * 1024;

/// What a UID shows, for one command.
enum Decided {
    Shown(Shown),
    /// A view over [`INLINE`] bytes, kept on disk; loaded when its turn comes.
    Large(ViewId),
}

impl Decided {
    fn of(shown: Shown, id: &ViewId) -> Decided {
        match &shown {
            Shown::View { view, .. } if view.size() > INLINE => Decided::Large(id.clone()),
            _ => Decided::Shown(shown),
        }
    }

    /// The view, loaded if it is a large one (off the runtime); `None` if it went missing
    /// from the store (logged).
    async fn load(self, views: &Arc<Views>) -> Option<Shown> {
        match self {
            Decided::Shown(shown) => Some(shown),
            Decided::Large(id) => {
                let views = views.clone();
                let uid = id.uid;
                let shown = tokio::task::spawn_blocking(move || views.known(&id)).await.ok().flatten();
                if shown.is_none() {
                    warn!(uid, "a kept view could not be read back");
                }
                shown
            }
        }
    }
}

/// A FETCH or UID FETCH, parsed.
struct FetchRequest {
    uid: bool,
    set: String,
    items: Vec<Item>,
    /// The items as the client wrote them (with any modifiers after the list).
    items_text: String,
}

impl FetchRequest {
    /// From the command after its tag (`UID FETCH 1:* (…)`), one line.
    fn parse(rest: &[u8]) -> Option<FetchRequest> {
        let text = std::str::from_utf8(rest).ok()?.trim_end_matches(['\r', '\n']);
        let (first, text) = text.split_once(' ')?;
        let (uid, text) = if first.eq_ignore_ascii_case("UID") {
            let (name, text) = text.split_once(' ')?;
            (true, (name, text))
        } else {
            (false, (first, text))
        };
        let (name, text) = text;
        if !name.eq_ignore_ascii_case("FETCH") {
            return None;
        }
        let (set, items_text) = text.split_once(' ')?;
        if !set.bytes().all(|b| b.is_ascii_digit() || b == b':' || b == b',' || b == b'*') || set.is_empty() {
            return None;
        }
        let items = fetch::parse_items(items_text.as_bytes()).ok()?;
        Some(FetchRequest { uid, set: set.to_string(), items, items_text: items_text.to_string() })
    }
}

/// The `RETURN (…)` options of an extended SEARCH (RFC 4731) and the arguments after them:
/// `(None, args)` without them; `None` for options only the provider can answer (`SAVE`,
/// `PARTIAL`, …), which then answers alone.
fn search_return(args: &[Arg]) -> Option<(Option<Vec<String>>, &[Arg])> {
    let [Arg::Atom(word), Arg::List(options), rest @ ..] = args else { return Some((None, args)) };
    if !word.eq_ignore_ascii_case("RETURN") {
        return Some((None, args));
    }
    let mut asked = Vec::new();
    for option in options {
        let Arg::Atom(name) = option else { return None };
        let name = name.to_ascii_uppercase();
        if !["MIN", "MAX", "COUNT", "ALL"].contains(&name.as_str()) {
            return None;
        }
        asked.push(name);
    }
    if asked.is_empty() {
        asked.push("ALL".into());
    }
    Some((Some(asked), rest))
}

/// The `* ESEARCH` answer (RFC 4731) for the sorted `found`: MIN, MAX and ALL only when
/// something was found, COUNT always.
fn esearch(tag: &str, uid: bool, options: &[String], found: &[u32]) -> String {
    let mut line = format!("* ESEARCH (TAG \"{tag}\")");
    if uid {
        line.push_str(" UID");
    }
    let asked = |name: &str| options.iter().any(|o| o == name);
    if let (Some(min), Some(max)) = (found.first(), found.last()) {
        if asked("MIN") {
            line.push_str(&format!(" MIN {min}"));
        }
        if asked("MAX") {
            line.push_str(&format!(" MAX {max}"));
        }
    }
    if asked("COUNT") {
        line.push_str(&format!(" COUNT {}", found.len()));
    }
    if asked("ALL") && !found.is_empty() {
        line.push_str(&format!(" ALL {}", uid_set(found)));
    }
    line + "\r\n"
}

/// An APPEND (or MULTIAPPEND, RFC 3502), parsed from the command after its tag.
struct AppendRequest<'a> {
    /// The mailbox as a view names it.
    mailbox: String,
    /// Each message and what precedes its literal: `APPEND mailbox [flags] [date] ` for the
    /// first, ` [flags] [date] ` for the others.
    messages: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> AppendRequest<'a> {
    /// `None` for anything but messages each in one literal (CATENATE, a mailbox name or
    /// message sent otherwise): such commands go to the provider as they came.
    fn parse(rest: &'a [u8]) -> Option<AppendRequest<'a>> {
        let mut messages = Vec::new();
        let mut at = 0;
        loop {
            let eol = at + memchr::memmem::find(rest.get(at..)?, b"\r\n")?;
            let line = &rest[at..eol + 2];
            let len = Self::literal_len(line)?;
            let open = line.iter().rposition(|&b| b == b'{')?;
            let message = rest.get(eol + 2..(eol + 2).checked_add(len)?)?;
            messages.push((&line[..open], message));
            at = eol + 2 + len;
            if rest.get(at..)? == b"\r\n" {
                break;
            }
        }
        let (first, _) = messages.first()?;
        let parsed = command::parse(&[b"x ", first.trim_ascii_end(), b"\r\n"].concat()).ok()?;
        if parsed.kind != CommandName::Append || parsed.uid {
            return None;
        }
        let mailbox = mailbox_name(parsed.args.first()?.astring()?);
        Some(AppendRequest { mailbox, messages })
    }

    /// The size of the literal the first line of an APPEND ends with (`{n}` or `{n+}`; not a
    /// binary literal `~{n}`).
    fn literal_len(line: &[u8]) -> Option<usize> {
        let line = line.strip_suffix(b"\r\n").unwrap_or(line).strip_suffix(b"}")?;
        let open = line.iter().rposition(|&b| b == b'{')?;
        if open == 0 || line[open - 1] != b' ' {
            return None;
        }
        let digits = line[open + 1..].strip_suffix(b"+").unwrap_or(&line[open + 1..]);
        if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

/// A mailbox name as views name it: INBOX in any case is INBOX.
fn mailbox_name(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name).into_owned();
    if name.eq_ignore_ascii_case("INBOX") { "INBOX".to_string() } else { name }
}

/// The answer for one encrypted message: the items in the order asked, content from the view,
/// the rest as the provider said it; UID always for a UID FETCH.
fn compose(
    number: u32,
    uid_command: bool,
    asked: &[Item],
    provider: &[(String, Vec<u8>)],
    view: &MessageView,
) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let named = |name: &str, parts: &mut Vec<Vec<u8>>| {
        if let Some((n, v)) = provider.iter().find(|(n, _)| n == name) {
            let entry = [n.as_bytes(), b" ", v].concat();
            if !parts.contains(&entry) {
                parts.push(entry);
            }
        }
    };
    if uid_command {
        named("UID", &mut parts);
    }
    for item in asked {
        match item {
            Item::Other(name) => named(name, &mut parts),
            content => parts.extend(view.item(content)),
        }
    }
    // Flags the provider volunteered (\Seen set by this fetch) go along.
    if !asked.iter().any(|i| matches!(i, Item::Other(n) if n == "FLAGS")) {
        named("FLAGS", &mut parts);
    }
    let mut out = format!("* {number} FETCH (").into_bytes();
    out.extend(parts.join(&b' '));
    out.extend_from_slice(b")\r\n");
    out
}

/// The UID and the bytes of the item whose name starts with `item` (`BODY[]`, `BODY[]<` for a
/// partial) of a FETCH response.
fn body_of(resp: &[u8], item: &str) -> Option<(u32, Vec<u8>)> {
    let (_, items) = fetch::parse_response(resp)?;
    let uid = items.iter().find(|(n, _)| n == "UID").and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())?;
    let body = items.iter().find(|(n, _)| n.starts_with(item)).and_then(|(_, v)| literal_or_string(v))?;
    Some((uid, body))
}

/// The bytes of a literal or quoted string value.
fn literal_or_string(value: &[u8]) -> Option<Vec<u8>> {
    if value.starts_with(b"{") {
        let start = memchr::memmem::find(value, b"}\r\n")? + 3;
        return Some(value[start..].to_vec());
    }
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    Some(inner.to_vec())
}

/// The command after its tag.
fn rest_of(line: &[u8]) -> &[u8] {
    command::head(line).map_or(line, |(tag, _)| line.get(tag.len() + 1..).unwrap_or_default())
}

async fn relay(rest: &[u8], provider: &mut impl ProviderCommands) -> Reply {
    match provider.run(rest, &[]).await {
        Ok(reply) => reply,
        Err(e) => failed(&e),
    }
}

async fn search(provider: &mut impl ProviderCommands, line: String) -> Result<Vec<u32>, ProviderError> {
    let reply = provider.run(line.as_bytes(), &[b"* SEARCH"]).await?;
    if !reply.ok() {
        debug!(status = %reply.status_text(), "the provider refused a search for encrypted messages");
    }
    Ok(reply.untagged.iter().flat_map(|r| search_uids(r)).collect())
}

fn failed(e: &ProviderError) -> Reply {
    if let ProviderError::Connection(inner) = e
        && let Some(exceeded) = inner.downcast_ref::<Exceeded>()
    {
        warn!("decrypted views: no room in the memory budget: {exceeded}");
        let status = format!("NO [LIMIT] {exceeded}; ask for fewer messages at a time\r\n");
        return Reply { untagged: Vec::new(), status: status.into_bytes() };
    }
    warn!("the decrypted view could not ask the provider: {e}");
    Reply { untagged: Vec::new(), status: format!("NO [UNAVAILABLE] {e}\r\n").into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_requests() {
        let r = FetchRequest::parse(b"UID FETCH 1:* (UID FLAGS BODY.PEEK[])\r\n").unwrap();
        assert!(r.uid && r.set == "1:*" && r.items.len() == 3 && r.items_text == "(UID FLAGS BODY.PEEK[])");
        let r = FetchRequest::parse(b"fetch 3,5 FAST\r\n").unwrap();
        assert!(!r.uid && !r.items.iter().all(Item::is_content));
        assert!(FetchRequest::parse(b"UID STORE 1 +FLAGS (\\Seen)\r\n").is_none());
        assert!(FetchRequest::parse(b"FETCH $ (FLAGS)\r\n").is_none(), "search results are the provider's");
    }

    #[test]
    fn extended_search_answers() {
        let parsed = command::parse(b"t UID SEARCH RETURN (MIN COUNT) BODY x\r\n").unwrap();
        let (options, rest) = search_return(&parsed.args).unwrap();
        assert_eq!((options.unwrap(), rest.len()), (vec!["MIN".to_string(), "COUNT".to_string()], 2));
        let parsed = command::parse(b"t SEARCH RETURN () ALL\r\n").unwrap();
        assert_eq!(search_return(&parsed.args).unwrap().0.unwrap(), ["ALL"]);
        let parsed = command::parse(b"t SEARCH RETURN (SAVE) ALL\r\n").unwrap();
        assert!(search_return(&parsed.args).is_none(), "the provider's");
        let parsed = command::parse(b"t SEARCH BODY x\r\n").unwrap();
        assert!(search_return(&parsed.args).unwrap().0.is_none());
        let all = ["MIN", "MAX", "COUNT", "ALL"].map(String::from);
        assert_eq!(
            esearch("t", true, &all, &[2, 3, 4, 9]),
            "* ESEARCH (TAG \"t\") UID MIN 2 MAX 9 COUNT 4 ALL 2:4,9\r\n"
        );
        assert_eq!(esearch("t", false, &all, &[]), "* ESEARCH (TAG \"t\") COUNT 0\r\n");
    }

    #[test]
    fn append_requests() {
        let a = AppendRequest::parse(b"APPEND Sent (\\Seen) {5}\r\nhello\r\n").unwrap();
        assert_eq!((a.mailbox.as_str(), a.messages), ("Sent", vec![(&b"APPEND Sent (\\Seen) "[..], &b"hello"[..])]));
        let a = AppendRequest::parse(b"APPEND \"inbox\" {2+}\r\nhi\r\n").unwrap();
        assert_eq!((a.mailbox.as_str(), a.messages[0].1), ("INBOX", &b"hi"[..]));
        let multi = AppendRequest::parse(b"APPEND Sent {5}\r\nhello (\\Seen) {2+}\r\nhi\r\n").unwrap();
        assert_eq!(multi.messages, vec![(&b"APPEND Sent "[..], &b"hello"[..]), (&b" (\\Seen) "[..], &b"hi"[..])]);
        assert!(AppendRequest::parse(b"APPEND Sent {5}\r\nhello {2}\r\nhi").is_none(), "short");
        assert!(AppendRequest::parse(b"APPEND Sent {5}\r\nhello junk\r\n").is_none());
        assert!(AppendRequest::parse(b"APPEND Sent {99999999}\r\nhello\r\n").is_none());
        assert!(AppendRequest::parse(b"APPEND Sent {5}\r\nhel").is_none(), "short");
        assert!(AppendRequest::parse(b"APPEND Sent ~{5}\r\nhello\r\n").is_none(), "binary literal");
        assert!(AppendRequest::parse(b"APPEND Sent CATENATE (TEXT {5}\r\nhello)\r\n").is_none());
        assert_eq!(AppendRequest::literal_len(b"t APPEND Drafts (\\Draft) {123}\r\n"), Some(123));
        assert_eq!(AppendRequest::literal_len(b"t APPEND Drafts {99999999999}\r\n"), None);
        assert_eq!(AppendRequest::literal_len(b"t APPEND Drafts\r\n"), None);
    }

    #[test]
    fn composed_answers_keep_the_order_asked() {
        let view = MessageView::new(b"Subject: hi\r\n\r\nclear\r\n".to_vec());
        let asked = fetch::parse_items(b"(FLAGS BODY[TEXT] RFC822.SIZE)").unwrap();
        let provider = vec![("UID".to_string(), b"9".to_vec()), ("FLAGS".to_string(), b"(\\Seen)".to_vec())];
        let out = compose(4, true, &asked, &provider, &view);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* 4 FETCH (UID 9 FLAGS (\\Seen) BODY[TEXT] {7}\r\nclear\r\n RFC822.SIZE 22)\r\n"
        );
    }
}
