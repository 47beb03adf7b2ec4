//! The COI server side of one client session: the commands the proxy intercepts after login.
//!
//! - GETMETADATA / SETMETADATA: the COI entries are answered and validated here; other entries
//!   go to the provider when it has METADATA, else to the local store.
//! - CREATE / DELETE / RENAME of `<root>/Chats` switch COI on and off, as the spec asks.
//! - ID and SELECT / EXAMINE / STATUS: a chat client that watches INBOX only (today's Delta
//!   Chat) is shown `<root>/Chats` in its place while the filter is `active`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

use super::folders::Namespace;
use super::metadata::{self, CoiChange, ENABLED, MESSAGE_FILTER, MetadataError};
use crate::account::{Account, CoiConfig, Filter};
use crate::context::Context;
use crate::imap::wire::command::client_name;
use crate::imap::wire::command::{self, Arg, Command, CommandName};
use crate::imap::wire::metadata::{
    Depth, EntryOwner, GetMetadata, LocalEntries, NoLocalEntries, Refusal, RequestOrder, SetMetadata, Status,
    format_entries, format_mailbox, in_subtree, parse_get, parse_response, parse_set, reaches, select, select_by,
};
use crate::imap::wire::provider::{Interceptor, ProviderCommands, ProviderError, Reply as OwnReply, ReplyOut};
use crate::store::{StoreError, TooManyEntries};

const CAPTURE_METADATA: &[&[u8]] = &[b"* METADATA "];
const CAPTURE_LIST: &[&[u8]] = &[b"* LIST "];
const CAPTURE_STATUS: &[&[u8]] = &[b"* STATUS "];

/// The COI side of one logged-in session; `E` answers the entries of another wing (WebPush),
/// `L` entries a wing answers by name on the server or a mailbox (Delta Chat's).
pub struct CoiSession<E, L = NoLocalEntries> {
    shared: Arc<Context>,
    account: Arc<Account>,
    /// The provider stores METADATA itself.
    provider_metadata: bool,
    namespace: Option<Namespace>,
    /// The client's ID name (`Delta Chat`), from before or after login; shared with the
    /// session's read-receipt hook.
    client_name: Arc<Mutex<Option<String>>>,
    /// The subtree of entries another wing answers (WebPush), plugged in by the session.
    entries: E,
    /// Entries answered locally on the server or a mailbox (Delta Chat), plugged in likewise.
    local: L,
}

/// A reply for the client, or the reason the provider failed us.
type Reply = Result<Vec<u8>, ProviderError>;

/// Capabilities the proxy adds for a session: IDLE where the provider lacks it (the proxy
/// serves it by polling), COI, those of the wings plugged in (`WEBPUSH`), and METADATA where
/// the provider lacks it.
pub fn capabilities(provider_metadata: bool, provider_idle: bool, wings: &[&'static str]) -> Vec<&'static str> {
    let mut caps = Vec::new();
    if !provider_idle {
        caps.push("IDLE");
    }
    caps.push("COI");
    caps.extend_from_slice(wings);
    if !provider_metadata {
        caps.push("METADATA");
    }
    caps
}

/// The tagged response text (after the tag) for a refused METADATA command.
fn refusal(e: &impl Refusal) -> String {
    match e.status() {
        Status::Bad => format!("BAD {e}"),
        Status::Cannot => format!("NO [CANNOT] {e}"),
        Status::Unavailable => format!("NO [UNAVAILABLE] {e}"),
        Status::MaxSize(max) => format!("NO [METADATA MAXSIZE {max}] {e}"),
        Status::TooMany => format!("NO [METADATA TOOMANY] {e}"),
    }
}

/// A COI folder the provider would not create.
#[derive(Debug, thiserror::Error)]
#[error("Cannot create {name}: {status}")]
struct FolderError {
    name: String,
    status: String,
}

impl<E: EntryOwner, L: LocalEntries> CoiSession<E, L> {
    pub fn new(
        shared: Arc<Context>,
        account: Arc<Account>,
        provider_metadata: bool,
        client_name: Arc<Mutex<Option<String>>>,
        entries: E,
        local: L,
    ) -> Self {
        let session = CoiSession { shared, account, provider_metadata, namespace: None, client_name, entries, local };
        session.note_chat_client();
        session
    }

    /// A chat client's chat mail in Junk is rescued by the account worker, which it may now need.
    fn note_chat_client(&self) {
        if self.is_chat_client() && !self.account.chat_client.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.shared.workers.want(&self.account.login);
        }
    }

    /// Whether a request may reach into a subtree the proxy answers.
    fn reaches_ours(&self, requested: &str, depth: Depth) -> bool {
        reaches_ours(requested, depth, self.entries.subtree())
    }

    fn is_chat_client(&self) -> bool {
        let name = self.client_name.lock().expect("client name");
        self.shared.config().coi.is_chat_client(name.as_deref())
    }

    fn root(&self) -> String {
        self.shared.config().coi.mailbox_root.clone()
    }

    async fn dispatch(
        &mut self,
        raw: &[u8],
        cmd: &Command,
        own: &mut impl ProviderCommands,
        out: &mut ReplyOut,
    ) -> Reply {
        match cmd.kind {
            CommandName::GetMetadata => match parse_get(cmd) {
                Ok(req) => self.get_metadata(raw, &cmd.tag, req, own, out).await,
                Err(e) => Ok(tagged(&cmd.tag, &refusal(&e))),
            },
            CommandName::SetMetadata => match parse_set(cmd) {
                Ok(req) => self.set_metadata(&cmd.tag, req, own).await,
                Err(e) => Ok(tagged(&cmd.tag, &refusal(&e))),
            },
            CommandName::Create | CommandName::Delete | CommandName::Rename => {
                self.mailbox_command(raw, cmd, own).await
            }
            CommandName::Id => {
                if let Some(name) = client_name(&cmd.args) {
                    let mut known = self.client_name.lock().expect("client name");
                    // Logged when it changes only: a client repeating ID does not grow the log.
                    if known.as_deref() != Some(name.as_str()) {
                        info!(client_name = %crate::logging::peer_text(&name), "client identified itself");
                    }
                    *known = Some(name);
                    drop(known);
                    self.note_chat_client();
                }
                Ok(forward(raw, own, &[]).await?.for_client(&cmd.tag))
            }
            CommandName::Select | CommandName::Examine | CommandName::Status => self.select_like(raw, cmd, own).await,
            _ => Ok(forward(raw, own, &[]).await?.for_client(&cmd.tag)),
        }
    }

    /// The provider's namespace, asked once per session.
    async fn namespace(&mut self, own: &mut impl ProviderCommands) -> Result<Namespace, ProviderError> {
        if let Some(ns) = &self.namespace {
            return Ok(ns.clone());
        }
        let ns = Namespace::discover(own).await?;
        self.namespace = Some(ns.clone());
        Ok(ns)
    }

    /// The account's COI configuration, from the provider or the local store.
    async fn read_config(&mut self, own: &mut impl ProviderCommands) -> Result<CoiConfig, ProviderError> {
        super::load_config(own, self.provider_metadata, &self.shared.store, &self.account).await
    }

    /// The entries the proxy keeps for `mailbox`, with their sizes (values are read as the
    /// response is written).
    fn local_sizes(&self, mailbox: &[u8]) -> BTreeMap<String, u64> {
        match self.shared.store.metadata_sizes(&self.account.login, mailbox) {
            Ok(entries) => entries,
            Err(e) => {
                warn!("cannot read METADATA from the store: {e}");
                BTreeMap::new()
            }
        }
    }

    /// Whether `mailbox` exists at the provider (for the METADATA the proxy keeps itself; a
    /// provider with METADATA says so on its own).
    async fn mailbox_exists(&mut self, mailbox: &[u8], own: &mut impl ProviderCommands) -> Result<bool, ProviderError> {
        let mut cmd = b"LIST \"\" ".to_vec();
        cmd.extend(command::astring(mailbox, false));
        cmd.extend_from_slice(b"\r\n");
        let reply = own.run(&cmd, CAPTURE_LIST).await?;
        Ok(reply.ok() && !reply.untagged.is_empty())
    }

    async fn get_metadata(
        &mut self,
        raw: &[u8],
        tag: &str,
        req: GetMetadata,
        own: &mut impl ProviderCommands,
        out: &mut ReplyOut,
    ) -> Reply {
        let server_level = req.mailbox.is_empty();
        let mailbox = req.mailbox.clone();
        let local = self.local.subtrees(&mailbox);
        // The subtrees asked for once, not per entry (tens of thousands of them, on the runtime).
        let reaches_local = req.entries.iter().any(|e| local.iter().any(|s| reaches(e, req.depth, s)));
        let reaches_ours =
            reaches_local || (server_level && req.entries.iter().any(|e| self.reaches_ours(e, req.depth)));
        if self.provider_metadata && !reaches_ours {
            // Nothing the proxy answers itself: the provider's responses reach the client as
            // they come, never held here.
            return Ok(forward(raw, own, &[]).await?.for_client(tag));
        }
        if !server_level && !self.mailbox_exists(&req.mailbox, own).await? {
            return Ok(tagged(tag, "NO [NONEXISTENT] Mailbox doesn't exist"));
        }
        let theirs = self.entries.subtree();
        let mut sources = Sources::default();
        if self.provider_metadata {
            let mine = |e: &str| (server_level && answers(e, theirs)) || local.iter().any(|s| in_subtree(e, s));
            let elsewhere: Vec<&String> = req.entries.iter().filter(|e| !mine(e)).collect();
            if !elsewhere.is_empty() {
                let reply = own.run(&get_command(&req, &elsewhere), CAPTURE_METADATA).await?;
                if !reply.ok() {
                    return Ok(reply.for_client(tag));
                }
                for resp in &reply.untagged {
                    if let Some((_, found)) = parse_response(resp) {
                        sources.provider.extend(found.into_iter().filter(|(e, _)| !mine(e)));
                    }
                }
                sources.provider_longest = long_entries(&reply.status);
            }
        } else {
            sources.stored = Some(self.local_sizes(&req.mailbox));
        }
        if reaches_ours {
            let reaches = |subtree| server_level && req.entries.iter().any(|e| reaches(e, req.depth, subtree));
            if reaches_local {
                sources.ours.extend(self.local.available(&mailbox).await);
            }
            if reaches(metadata::COI_SUBTREE) {
                let config = self.read_config(own).await?;
                let root = self.namespace(own).await?.root(&self.root());
                sources.ours.extend(metadata::coi_entries(&config, &root));
            }
            if reaches(theirs) {
                sources.ours.extend(self.entries.available().await);
            }
        }
        // Selecting and ordering tens of thousands of entries takes a while: not on the runtime.
        let (selected, longest) = if req.entries.len() > OFF_RUNTIME_ENTRIES {
            tokio::task::spawn_blocking(move || selection(&req, sources, theirs, &local))
                .await
                .map_err(|e| ProviderError::Connection(Box::new(e)))?
        } else {
            selection(&req, sources, theirs, &local)
        };
        let code = longest.map(|n| format!("[METADATA LONGENTRIES {n}] ")).unwrap_or_default();
        let status = tagged(tag, &format!("OK {code}Getmetadata completed."));
        Ok(self.write_out(&selected, status, out).await)
    }

    /// Writes a METADATA response in parts of about [`PART`] bytes, values the proxy keeps
    /// read one by one as the client takes the response; returns the last part, `status`
    /// included. `* METADATA <mailbox> (<entry> <value> ...)`, values as literals, as
    /// `format_response` writes it.
    async fn write_out(&mut self, selected: &Selected, status: Vec<u8>, out: &mut ReplyOut) -> Vec<u8> {
        if selected.entries.is_empty() {
            return status;
        }
        let mut buf = b"* METADATA ".to_vec();
        buf.extend(format_mailbox(&selected.mailbox));
        buf.extend_from_slice(b" (");
        for (i, (name, value)) in selected.entries.iter().enumerate() {
            if i > 0 {
                buf.push(b' ');
            }
            buf.extend_from_slice(name.as_bytes());
            let stored;
            let bytes = match value {
                Value::Nil => None,
                Value::Bytes(v) => Some(v.as_slice()),
                Value::Stored => {
                    stored = match self.shared.store.metadata_value(&self.account.login, &selected.mailbox, name) {
                        Ok(v) => v,
                        Err(e) => {
                            warn!("cannot read METADATA from the store: {e}");
                            None
                        }
                    };
                    stored.as_deref()
                }
            };
            match bytes {
                Some(v) => {
                    buf.extend_from_slice(format!(" {{{}}}\r\n", v.len()).as_bytes());
                    buf.extend_from_slice(v);
                }
                None => buf.extend_from_slice(b" NIL"),
            }
            if buf.len() >= PART {
                out.send(std::mem::take(&mut buf)).await;
            }
        }
        buf.extend_from_slice(b")\r\n");
        buf.extend(status);
        buf
    }

    async fn set_metadata(&mut self, tag: &str, mut req: SetMetadata, own: &mut impl ProviderCommands) -> Reply {
        // The COI entries exist on the server level only (the plugged-in wing says so for its
        // own, in its words).
        if !req.mailbox.is_empty() && req.entries.iter().any(|(e, _)| metadata::is_coi_entry(e)) {
            return Ok(tagged(tag, &refusal(&MetadataError::NotServerLevel)));
        }
        let change = match metadata::coi_change(&req) {
            Ok(change) => change,
            Err(e) => return Ok(tagged(tag, &refusal(&e))),
        };
        // The plugged-in wing's entries (WebPush) are the proxy's alone; the rest goes on.
        if let Err(e) = self.entries.set(&req).await {
            return Ok(tagged(tag, &refusal(&e)));
        }
        // So are the local ones (Delta Chat's device tokens).
        // (Their subtrees are looked up once, not per entry: there may be tens of thousands.)
        let subtrees = self.local.subtrees(&req.mailbox);
        let answered_locally = |entry: &str| subtrees.iter().any(|s| in_subtree(entry, s));
        let local: Vec<_> = req.entries.iter().filter(|(e, _)| answered_locally(e)).cloned().collect();
        if !local.is_empty() {
            if let Err(e) = self.local.set(&req.mailbox, &local).await {
                return Ok(tagged(tag, &refusal(&e)));
            }
            req.entries.retain(|(entry, _)| !answered_locally(entry));
        }
        let theirs = self.entries.subtree();
        req.entries.retain(|(entry, _)| !in_subtree(entry, theirs));
        if req.entries.is_empty() {
            return Ok(tagged(tag, "OK SETMETADATA complete"));
        }
        // Stored normalised: "" disables like NIL.
        for (entry, value) in &mut req.entries {
            if (entry == ENABLED || entry == MESSAGE_FILTER) && value.as_deref() == Some(b"") {
                *value = None;
            }
        }
        if change.enabled == Some(true)
            && let Err(e) = self.create_folders(own).await?
        {
            return Ok(tagged(tag, &format!("NO [SERVERBUG] {e}")));
        }
        if self.provider_metadata {
            let reply = own.run(&set_command(&req), &[]).await?;
            if !reply.ok() {
                return Ok(reply.for_client(tag));
            }
        } else {
            if !req.mailbox.is_empty() && !self.mailbox_exists(&req.mailbox, own).await? {
                return Ok(tagged(tag, "NO [NONEXISTENT] Mailbox doesn't exist"));
            }
            let max = self.shared.config().coi.max_metadata_size;
            if let Some((_, Some(v))) =
                req.entries.iter().find(|(_, v)| v.as_ref().is_some_and(|v| v.len() as u64 > max))
            {
                debug!(size = v.len(), "METADATA value over the limit");
                return Ok(tagged(tag, &refusal(&MetadataError::TooLarge(max))));
            }
            let max_entries = self.shared.config().coi.max_metadata_entries;
            match store_shared(&self.shared, &self.account.login, &req.mailbox, &req.entries, max_entries).await {
                Ok(Ok(())) => {}
                Ok(Err(TooManyEntries)) => return Ok(tagged(tag, &refusal(&MetadataError::TooMany))),
                Err(SharedStoreError::Store(e)) => {
                    warn!("cannot write METADATA to the store: {e}");
                    return Ok(tagged(
                        tag,
                        "NO [UNAVAILABLE] The proxy cannot store the entries now (its store is full or unwritable)",
                    ));
                }
                Err(SharedStoreError::Cluster(e)) => {
                    warn!("cannot write METADATA to the cluster: {e}");
                    return Ok(tagged(
                        tag,
                        "NO [UNAVAILABLE] The proxy cannot store the entries now (etcd is unreachable)",
                    ));
                }
            }
        }
        if change != CoiChange::default() {
            let mut config = self.account.current();
            if let Some(enabled) = change.enabled {
                config.enabled = enabled;
            }
            if let Some(filter) = change.filter {
                config.filter = filter;
            }
            self.publish(config);
        }
        Ok(tagged(tag, "OK SETMETADATA complete"))
    }

    fn publish(&self, config: CoiConfig) {
        info!(enabled = config.enabled, filter = config.filter.as_str(), "COI configuration changed");
        self.account.set_config(config);
        self.shared.workers.want(&self.account.login);
    }

    /// Creates `<root>/Chats` (subscribed) and `<root>/Contacts` where missing.
    async fn create_folders(
        &mut self,
        own: &mut impl ProviderCommands,
    ) -> Result<Result<(), FolderError>, ProviderError> {
        let ns = self.namespace(own).await?;
        let (chats, contacts) = (ns.chats(&self.root()), ns.contacts(&self.root()));
        for (name, subscribe) in [(chats, true), (contacts, false)] {
            let quoted = String::from_utf8_lossy(&command::astring(name.as_bytes(), false)).into_owned();
            let reply = own.run(format!("CREATE {quoted}\r\n").as_bytes(), &[]).await?;
            let exists = reply.status.windows(15).any(|w| w.eq_ignore_ascii_case(b"[ALREADYEXISTS]"));
            if !reply.ok() && !exists {
                let status = reply.status_text();
                warn!(mailbox = %name, "cannot create a COI folder: {status}");
                return Ok(Err(FolderError { name, status }));
            }
            if subscribe {
                own.run(format!("SUBSCRIBE {quoted}\r\n").as_bytes(), &[]).await?;
            }
        }
        Ok(Ok(()))
    }

    /// Stores `enabled` (COI switched on or off through its Chats folder).
    async fn set_enabled(&mut self, enabled: bool, own: &mut impl ProviderCommands) -> Result<(), ProviderError> {
        let value: Option<Vec<u8>> = enabled.then(|| b"yes".to_vec());
        if self.provider_metadata {
            let v = if enabled { "yes" } else { "NIL" };
            let reply = own.run(format!("SETMETADATA \"\" ({ENABLED} {v})\r\n").as_bytes(), &[]).await?;
            if !reply.ok() {
                warn!("provider refused to store the COI state: {}", String::from_utf8_lossy(&reply.status).trim_end());
            }
        } else if let Err(e) =
            store_shared(&self.shared, &self.account.login, b"", &[(ENABLED.to_string(), value)], usize::MAX).await
        {
            warn!("cannot store the COI state: {e}");
        }
        let current = self.read_config(own).await.unwrap_or_else(|_| self.account.current());
        self.publish(CoiConfig { enabled, ..current });
        Ok(())
    }

    /// CREATE, DELETE and RENAME: relayed, and when they touch `<root>/Chats`, COI follows
    /// (COI server spec §1.4). Names are compared as the provider resolves them. Renaming Chats
    /// or a parent of it (the root) into Trash disables COI, anywhere else is refused; a
    /// rename that makes Chats enables it.
    async fn mailbox_command(&mut self, raw: &[u8], cmd: &Command, own: &mut impl ProviderCommands) -> Reply {
        let names: Vec<&[u8]> = cmd.args.iter().filter_map(Arg::astring).collect();
        let ns = self.namespace(own).await?;
        let chats = ns.chats(&self.root());
        let first = names.first().copied().unwrap_or_default();
        let enable = match cmd.kind {
            CommandName::Create if ns.same(first, chats.as_bytes()) => Some(true),
            CommandName::Delete if ns.same(first, chats.as_bytes()) => Some(false),
            CommandName::Rename if ns.holds(first, chats.as_bytes()) => {
                let target = names.get(1).copied().unwrap_or_default();
                let trash = self.trash(own).await?;
                if !ns.in_trash(target, trash.as_bytes()) && !ns.in_trash(target, b"Trash") {
                    return Ok(tagged(&cmd.tag, "NO [CANNOT] COI mailbox can't be renamed"));
                }
                Some(false)
            }
            CommandName::Rename if names.get(1).is_some_and(|t| ns.holds(t, chats.as_bytes())) => {
                // Chats itself, or a parent whose rename may bring a Chats along.
                let reply = forward(raw, own, &[]).await?;
                if reply.ok() && (ns.same(names[1], chats.as_bytes()) || self.exists(&chats, own).await?) {
                    self.switched_on(own).await?;
                }
                return Ok(reply.for_client(&cmd.tag));
            }
            _ => None,
        };
        let reply = forward(raw, own, &[]).await?;
        if reply.ok()
            && let Some(enabled) = enable
        {
            if enabled {
                self.switched_on(own).await?;
            } else {
                self.set_enabled(false, own).await?;
            }
        }
        Ok(reply.for_client(&cmd.tag))
    }

    /// Chats came to be: Contacts belongs with it, and COI is on.
    async fn switched_on(&mut self, own: &mut impl ProviderCommands) -> Result<(), ProviderError> {
        if let Err(e) = self.create_folders(own).await? {
            warn!("{e}");
        }
        self.set_enabled(true, own).await
    }

    /// Whether `mailbox` exists at the provider.
    async fn exists(&mut self, mailbox: &str, own: &mut impl ProviderCommands) -> Result<bool, ProviderError> {
        let quoted = String::from_utf8_lossy(&command::astring(mailbox.as_bytes(), false)).into_owned();
        let reply = own.run(format!("LIST \"\" {quoted}\r\n").as_bytes(), CAPTURE_LIST).await?;
        Ok(reply.untagged.iter().any(|l| !String::from_utf8_lossy(l).to_ascii_lowercase().contains("\\nonexistent")))
    }

    /// The provider's `\Trash` special-use folder, else `Trash`.
    async fn trash(&mut self, own: &mut impl ProviderCommands) -> Result<String, ProviderError> {
        let reply = own.run(b"LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n", CAPTURE_LIST).await?;
        let found = reply.untagged.iter().find_map(|line| {
            let text = String::from_utf8_lossy(line);
            if !text.contains("\\Trash") {
                return None;
            }
            let body = line.strip_prefix(b"* ")?;
            let parsed = command::parse(&[b"x ", body].concat()).ok()?;
            parsed.args.get(2)?.astring().map(|n| String::from_utf8_lossy(n).into_owned())
        });
        Ok(found.unwrap_or_else(|| "Trash".into()))
    }

    /// SELECT, EXAMINE and STATUS of INBOX by a chat client while the filter is `active`: the
    /// Chats folder is used instead, and a STATUS answer keeps the name the client asked for.
    async fn select_like(&mut self, raw: &[u8], cmd: &Command, own: &mut impl ProviderCommands) -> Reply {
        let asks_inbox = cmd.args.first().and_then(Arg::astring).is_some_and(|m| m.eq_ignore_ascii_case(b"INBOX"));
        let active = self.account.current().effective_filter() == Filter::Active;
        if !(asks_inbox && active && self.is_chat_client()) {
            return Ok(forward(raw, own, &[]).await?.for_client(&cmd.tag));
        }
        let chats = self.namespace(own).await?.chats(&self.root());
        let rest = &raw[raw.iter().position(|&b| b == b' ').unwrap_or(0)..];
        let after_name = skip_first_arg(rest, cmd.name.len());
        let mut rewritten = format!("{} ", cmd.name).into_bytes();
        rewritten.extend(command::astring(chats.as_bytes(), false));
        rewritten.extend_from_slice(after_name);
        debug!(mailbox = %chats, "chat client: INBOX shown as the Chats folder");
        let reply = own.run(&rewritten, CAPTURE_STATUS).await?;
        let mut out = Vec::new();
        for status in &reply.untagged {
            out.extend(rename_status(status, b"INBOX"));
        }
        out.extend(reply.for_client(&cmd.tag));
        Ok(out)
    }
}

impl<E: EntryOwner, L: LocalEntries> Interceptor for CoiSession<E, L> {
    fn wants(&self, name: CommandName) -> bool {
        use CommandName::*;
        match name {
            GetMetadata | SetMetadata | Create | Delete | Rename | Id => true,
            Select | Examine | Status => self.is_chat_client(),
            _ => false,
        }
    }

    /// Whatever the client turns out to be (a chat client is known only after its ID).
    fn watches(&self, name: CommandName, uid: bool) -> bool {
        use CommandName::*;
        !uid && matches!(name, GetMetadata | SetMetadata | Create | Delete | Rename | Id | Select | Examine | Status)
    }

    async fn handle<P: ProviderCommands>(&mut self, raw: Vec<u8>, own: &mut P, out: &mut ReplyOut) -> Vec<u8> {
        // A command of up to a MiB (tens of thousands of entries) is parsed off the runtime.
        let (raw, parsed) = if raw.len() > OFF_RUNTIME_BYTES {
            match tokio::task::spawn_blocking(move || {
                let parsed = command::parse(&raw);
                (raw, parsed)
            })
            .await
            {
                Ok(done) => done,
                Err(_) => return b"* BAD the proxy failed to read the command\r\n".to_vec(),
            }
        } else {
            let parsed = command::parse(&raw);
            (raw, parsed)
        };
        let cmd = match parsed {
            Ok(cmd) => cmd,
            Err(e) => {
                let tag = command::head(&raw).map(|(t, _)| String::from_utf8_lossy(t).into_owned());
                return tagged(tag.as_deref().unwrap_or("*"), &format!("BAD {e}"));
            }
        };
        match self.dispatch(&raw, &cmd, own, out).await {
            Ok(reply) => reply,
            Err(e) => {
                warn!(command = %cmd.name, "provider failed: {e}");
                tagged(&cmd.tag, &format!("NO [UNAVAILABLE] {e}"))
            }
        }
    }
}

/// Commands larger than this are parsed off the runtime.
const OFF_RUNTIME_BYTES: usize = 64 * 1024;
/// GETMETADATA requests for more entries than this are selected and ordered off the runtime.
const OFF_RUNTIME_ENTRIES: usize = 1024;
/// A long METADATA response goes to the client in parts of about this size.
const PART: usize = 64 * 1024;

/// Where a selected entry's value comes from.
enum Value {
    Nil,
    /// In hand: the provider's, or one the proxy answers itself.
    Bytes(Vec<u8>),
    /// In the proxy's store: read when the response gets to it.
    Stored,
}

/// What a GETMETADATA selects from.
#[derive(Default)]
struct Sources {
    /// Entries the provider answered (a provider with METADATA).
    provider: Vec<(String, Option<Vec<u8>>)>,
    provider_longest: Option<u64>,
    /// Entries the proxy keeps itself (a provider without), with their sizes.
    stored: Option<BTreeMap<String, u64>>,
    /// Entries the proxy answers itself (COI, and `theirs`, the plugged-in wing's).
    ours: BTreeMap<String, Vec<u8>>,
}

/// The entries of a response, in the order a provider answers.
struct Selected {
    mailbox: Vec<u8>,
    entries: Vec<(String, Value)>,
}

/// Whether the proxy answers `entry` itself: COI, or the plugged-in wing's subtree `theirs`.
fn answers(entry: &str, theirs: &str) -> bool {
    metadata::is_coi_entry(entry) || in_subtree(entry, theirs)
}

/// Whether a request may reach into a subtree the proxy answers.
fn reaches_ours(requested: &str, depth: Depth, theirs: &str) -> bool {
    metadata::reaches_coi(requested, depth) || reaches(requested, depth, theirs)
}

/// Selects from `sources` what `req` returns, in the order asked for, and the LONGENTRIES
/// value. Linear in the entries asked for and found.
fn selection(req: &GetMetadata, sources: Sources, theirs: &str, local: &[&str]) -> (Selected, Option<u64>) {
    let server_level = req.mailbox.is_empty();
    // Answered by the proxy on this mailbox: COI and `theirs` on the server level, and the
    // subtrees answered locally (Delta Chat's) wherever they are.
    let mine = |e: &str| (server_level && answers(e, theirs)) || local.iter().any(|s| in_subtree(e, s));
    let reaches_mine = |e: &str| {
        (server_level && reaches_ours(e, req.depth, theirs)) || local.iter().any(|s| reaches(e, req.depth, s))
    };
    let mut entries: Vec<(String, Value)> =
        sources.provider.into_iter().map(|(e, v)| (e, v.map_or(Value::Nil, Value::Bytes))).collect();
    let mut longest = sources.provider_longest;
    if let Some(mut stored) = sources.stored {
        stored.retain(|e, _| !mine(e));
        let plain = GetMetadata { entries: req.entries.iter().filter(|e| !mine(e)).cloned().collect(), ..req.clone() };
        let (found, long) = select_by(&plain, &stored, |size| *size);
        entries.extend(found.into_iter().map(|(e, v)| (e, if v.is_some() { Value::Stored } else { Value::Nil })));
        longest = long;
    }
    if req.entries.iter().any(|e| reaches_mine(e)) {
        let ours =
            GetMetadata { entries: req.entries.iter().filter(|e| reaches_mine(e)).cloned().collect(), ..req.clone() };
        let (found, long) = select(&ours, &sources.ours);
        let known: HashSet<String> = entries.iter().map(|(e, _)| e.clone()).collect();
        entries.extend(
            found.into_iter().filter(|(e, _)| !known.contains(e)).map(|(e, v)| (e, v.map_or(Value::Nil, Value::Bytes))),
        );
        longest = longest.max(long);
    }
    let order = RequestOrder::new(req);
    entries.sort_by_cached_key(|(e, _)| (order.position(e), e.clone()));
    (Selected { mailbox: req.mailbox.clone(), entries }, longest)
}

/// Relays a client command as an own command (the client's tag replaced).
async fn forward(
    raw: &[u8],
    own: &mut impl ProviderCommands,
    capture: &'static [&'static [u8]],
) -> Result<OwnReply, ProviderError> {
    let after_tag = raw.iter().position(|&b| b == b' ').map_or(raw, |i| &raw[i + 1..]);
    own.run(after_tag, capture).await
}

/// `tag text CRLF`: one line, whatever the text holds (an error may quote what the client
/// sent; a CR or LF in it would start a line of the client's choosing).
fn tagged(tag: &str, text: &str) -> Vec<u8> {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("{tag} {text}\r\n").into_bytes()
}

fn get_command(req: &GetMetadata, entries: &[&String]) -> Vec<u8> {
    let mut options = Vec::new();
    if let Some(n) = req.max_size {
        options.push(format!("MAXSIZE {n}"));
    }
    match req.depth {
        Depth::Zero => {}
        Depth::One => options.push("DEPTH 1".into()),
        Depth::Infinity => options.push("DEPTH infinity".into()),
    }
    let mut cmd = b"GETMETADATA ".to_vec();
    if !options.is_empty() {
        cmd.extend(format!("({}) ", options.join(" ")).into_bytes());
    }
    cmd.extend(command::astring(&req.mailbox, true));
    let list: Vec<&str> = entries.iter().map(|e| e.as_str()).collect();
    cmd.extend(format!(" ({})\r\n", list.join(" ")).into_bytes());
    cmd
}

fn set_command(req: &SetMetadata) -> Vec<u8> {
    let mut cmd = b"SETMETADATA ".to_vec();
    cmd.extend(command::astring(&req.mailbox, true));
    cmd.push(b' ');
    cmd.extend(format_entries(&req.entries));
    cmd.extend_from_slice(b"\r\n");
    cmd
}

/// The `n` of `OK [METADATA LONGENTRIES n] ...`.
fn long_entries(status: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(status);
    let rest = text.split("[METADATA LONGENTRIES ").nth(1)?;
    rest.split(']').next()?.trim().parse().ok()
}

/// The bytes after the first argument (the mailbox) of `SELECT x …`; `rest` starts at the space
/// before the command name.
fn skip_first_arg(rest: &[u8], name_len: usize) -> &[u8] {
    let args = rest.get(1 + name_len + 1..).unwrap_or_default();
    let end = match args.first() {
        Some(b'"') => {
            let mut i = 1;
            while i < args.len() && args[i] != b'"' {
                i += if args[i] == b'\\' { 2 } else { 1 };
            }
            (i + 1).min(args.len())
        }
        _ => args.iter().position(|&b| b == b' ' || b == b'\r' || b == b'\n').unwrap_or(args.len()),
    };
    &args[end..]
}

/// `* STATUS <any> (...)` with the mailbox name replaced.
fn rename_status(resp: &[u8], name: &[u8]) -> Vec<u8> {
    let Some(paren) = resp.iter().position(|&b| b == b'(') else { return resp.to_vec() };
    [b"* STATUS ", name, b" ", &resp[paren..]].concat()
}

/// Why entries the proxy keeps could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum SharedStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::context::ClusterError),
}

/// Stores METADATA entries the proxy keeps: in the store (which checks the limit), then, with
/// `[cluster]`, in etcd, whose watch brings them to every instance. If etcd refuses, the store
/// gets its old values back and nothing counts.
async fn store_shared(
    shared: &Context,
    login: &str,
    mailbox: &[u8],
    entries: &[(String, Option<Vec<u8>>)],
    max_entries: usize,
) -> Result<Result<(), TooManyEntries>, SharedStoreError> {
    let store = &shared.store;
    let Some(cluster) = &shared.cluster else {
        return Ok(store.metadata_apply(login, mailbox, entries, max_entries).await?);
    };
    let mut before = Vec::new();
    for (entry, _) in entries {
        before.push((entry.clone(), store.metadata_value(login, mailbox, entry)?));
    }
    if let Err(refused) = store.metadata_apply(login, mailbox, entries, max_entries).await? {
        return Ok(Err(refused));
    }
    for (entry, value) in entries {
        let change = crate::context::SharedChange::Metadata {
            login: login.to_string(),
            mailbox: mailbox.to_vec(),
            entry: entry.clone(),
            value: value.clone(),
        };
        if let Err(e) = cluster.publish(change).await {
            store.metadata_apply(login, mailbox, &before, usize::MAX).await?.ok();
            return Err(e.into());
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_for_the_provider() {
        let req = GetMetadata { mailbox: vec![], entries: vec![], depth: Depth::One, max_size: Some(10) };
        let entries = ["/private/a".to_string(), "/shared/b".to_string()];
        let refs: Vec<&String> = entries.iter().collect();
        assert_eq!(get_command(&req, &refs), b"GETMETADATA (MAXSIZE 10 DEPTH 1) \"\" (/private/a /shared/b)\r\n");
        let set = SetMetadata {
            mailbox: b"INBOX".to_vec(),
            entries: vec![("/private/a".into(), Some(b"x y".to_vec())), ("/private/b".into(), None)],
        };
        assert_eq!(set_command(&set), b"SETMETADATA \"INBOX\" (/private/a {3}\r\nx y /private/b NIL)\r\n");
    }

    #[test]
    fn status_and_select_rewriting() {
        assert_eq!(
            rename_status(b"* STATUS \"COI.Chats\" (MESSAGES 2)\r\n", b"INBOX"),
            b"* STATUS INBOX (MESSAGES 2)\r\n"
        );
        let raw = b"a1 SELECT \"INBOX\" (CONDSTORE)\r\n";
        let rest = &raw[2..];
        assert_eq!(skip_first_arg(rest, 6), b" (CONDSTORE)\r\n");
        assert_eq!(skip_first_arg(&b"a1 STATUS INBOX (UIDNEXT)\r\n"[2..], 6), b" (UIDNEXT)\r\n");
        assert_eq!(long_entries(b"OK [METADATA LONGENTRIES 42] done\r\n"), Some(42));
    }
}
