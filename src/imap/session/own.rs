//! The proxy's own commands on a client's provider connection.
//!
//! Some client commands cannot simply be relayed: a SETMETADATA that enables COI must create
//! the chat folders before the client hears OK; a GETMETADATA must merge what the provider
//! stores with what the proxy computes. Such commands are handed to an `Interceptor` (`imap::wire::provider`),
//! which talks to the provider through [`OwnCommands`]. Own commands carry tags from the proxy's own
//! tag space, and the response direction routes everything tagged with them (and the untagged
//! responses asked for) back here, so nothing the proxy asks ever reaches the client.
//!
//! Before an own command goes out, the client commands already relayed are allowed to finish
//! (`drain`), so untagged responses cannot be mistaken for each other; later client commands
//! wait in the read buffer, keeping their order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{Notify, mpsc};

use crate::imap::upstream::OWN_TAG_PREFIX;
use crate::imap::wire::framing::{Fragment, Framer};
use crate::imap::wire::provider::{ProviderCommands, ProviderError, Reply};
use crate::net::Stream;

/// How long an own command waits for relayed client commands to finish before going ahead.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the provider gets to answer an own command.
const OWN_TIMEOUT: Duration = Duration::from_secs(60);

/// An event for a pending own command, from the response direction.
pub(crate) enum OwnEvent {
    Continuation,
    Untagged(Vec<u8>),
    Status(Vec<u8>),
}

pub(crate) struct OwnPending {
    pub tag: String,
    /// Prefixes of the untagged responses that belong to the own command (`* METADATA `).
    pub capture: &'static [&'static [u8]],
    pub events: mpsc::UnboundedSender<OwnEvent>,
}

/// What the two directions of one session share.
pub(crate) struct Link {
    state: Mutex<LinkState>,
    changed: Notify,
    /// Called when a watched command completes.
    on_watched: Option<Arc<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct LinkState {
    /// The tag of the client's IDLE while it runs.
    idle: Option<Vec<u8>>,
    /// The client sent DONE for that IDLE: from now on the provider owes its tagged response.
    idle_done: bool,
    /// The client has INBOX selected (as far as the relayed SELECT/EXAMINE said).
    inbox_selected: bool,
    /// Tags of relayed client commands whose tagged response has not come yet, with whether
    /// their completion is watched.
    in_flight: HashMap<Vec<u8>, (usize, bool)>,
    own: Option<OwnPending>,
}

impl Link {
    pub fn new(on_watched: Option<Arc<dyn Fn() + Send + Sync>>) -> Link {
        Link { state: Mutex::default(), changed: Notify::new(), on_watched }
    }

    /// A client command with `tag` went to the provider.
    pub fn started(&self, tag: &[u8], watched: bool) {
        let mut state = self.state.lock().expect("link");
        let entry = state.in_flight.entry(tag.to_vec()).or_default();
        entry.0 += 1;
        entry.1 |= watched;
    }

    /// The client started IDLE with `tag`.
    pub fn idle_started(&self, tag: &[u8]) {
        let mut state = self.state.lock().expect("link");
        state.idle = Some(tag.to_vec());
        state.idle_done = false;
    }

    /// The client ended its IDLE with DONE.
    pub fn idle_done(&self) {
        let mut state = self.state.lock().expect("link");
        state.idle_done = state.idle.is_some();
    }

    /// Whether `tag` is the client's running IDLE.
    pub fn is_idle_tag(&self, tag: &[u8]) -> bool {
        self.state.lock().expect("link").idle.as_deref() == Some(tag)
    }

    /// The client idles with INBOX selected.
    pub fn idle_in_inbox(&self) -> bool {
        let state = self.state.lock().expect("link");
        state.idle.is_some() && state.inbox_selected
    }

    pub fn set_inbox_selected(&self, selected: bool) {
        self.state.lock().expect("link").inbox_selected = selected;
    }

    /// The tagged response for `tag` passed.
    pub fn completed(&self, tag: &[u8]) {
        let mut watched = false;
        {
            let mut state = self.state.lock().expect("link");
            if state.idle.as_deref() == Some(tag) {
                state.idle = None;
                state.idle_done = false;
            }
            if let Some((n, w)) = state.in_flight.get_mut(tag) {
                *n -= 1;
                if *n == 0 {
                    watched = *w;
                    state.in_flight.remove(tag);
                }
            }
            if state.in_flight.is_empty() {
                self.changed.notify_waiters();
            }
        }
        if watched && let Some(callback) = &self.on_watched {
            callback();
        }
    }

    /// Whether the provider owes an answer: an own command, or a client command other than a
    /// running IDLE (which may rightly stay silent for as long as the client likes; after the
    /// client's DONE it owes the tagged response).
    pub fn waiting_for_provider(&self) -> bool {
        let state = self.state.lock().expect("link");
        state.own.is_some() || (!state.in_flight.is_empty() && (state.idle.is_none() || state.idle_done))
    }

    /// Whether an own command is waiting for responses.
    pub fn own_pending(&self) -> bool {
        self.state.lock().expect("link").own.is_some()
    }

    /// Whether an untagged response starting with `line` belongs to the pending own command.
    pub fn captures(&self, line: &[u8]) -> bool {
        let state = self.state.lock().expect("link");
        state.own.as_ref().is_some_and(|own| own.capture.iter().any(|p| starts_with_ci(line, p)))
    }

    /// Delivers an event to the pending own command. A status for `tag` ends it.
    pub fn deliver(&self, event: OwnEvent, status_tag: Option<&[u8]>) {
        let mut state = self.state.lock().expect("link");
        let Some(own) = state.own.as_ref() else { return };
        if let Some(tag) = status_tag
            && tag != own.tag.as_bytes()
        {
            return;
        }
        let _ = own.events.send(event);
        if status_tag.is_some() {
            state.own = None;
        }
    }

    async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if self.state.lock().expect("link").in_flight.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::debug!("relayed commands still unanswered; sending the proxy's command anyway");
                return;
            }
        }
    }
}

fn starts_with_ci(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Sends the proxy's own commands on the session's provider connection.
pub struct OwnCommands<'a> {
    pub(crate) write: &'a mut WriteHalf<Stream>,
    pub(crate) link: &'a Link,
    pub(crate) next_tag: &'a mut u64,
}

impl ProviderCommands for OwnCommands<'_> {
    /// Runs `command` on the client's provider connection; the untagged responses not captured
    /// reach the client as they would have anyway.
    async fn run(&mut self, command: &[u8], capture: &'static [&'static [u8]]) -> Result<Reply, ProviderError> {
        self.link.drain().await;
        *self.next_tag += 1;
        let tag = format!("{OWN_TAG_PREFIX}s{}", self.next_tag);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.link.state.lock().expect("link").own = Some(OwnPending { tag: tag.clone(), capture, events: tx });
        let result = tokio::time::timeout(OWN_TIMEOUT, async {
            let mut untagged = Vec::new();
            // Send up to and including each synchronizing literal announcement, then wait for "+".
            let mut pending_write = format!("{tag} ").into_bytes();
            let mut framer = Framer::new(usize::MAX / 2);
            let mut rest = command;
            while let Some(fragment) = framer.next(rest) {
                let (len, wait) = match fragment {
                    Fragment::Line { len, literal, .. } => (len, literal.is_some_and(|l| l.sync)),
                    Fragment::LiteralData { len, .. } | Fragment::Overlong { len, .. } => (len, false),
                };
                pending_write.extend_from_slice(&rest[..len]);
                rest = &rest[len..];
                if wait {
                    self.write.write_all(&pending_write).await?;
                    self.write.flush().await?;
                    pending_write.clear();
                    loop {
                        match rx.recv().await.ok_or(ProviderError::Closed)? {
                            OwnEvent::Continuation => break,
                            OwnEvent::Untagged(u) => untagged.push(u),
                            OwnEvent::Status(status) => return Ok(Reply { untagged, status }),
                        }
                    }
                }
            }
            pending_write.extend_from_slice(rest);
            self.write.write_all(&pending_write).await?;
            self.write.flush().await?;
            loop {
                match rx.recv().await.ok_or(ProviderError::Closed)? {
                    OwnEvent::Continuation => {}
                    OwnEvent::Untagged(u) => untagged.push(u),
                    OwnEvent::Status(status) => return Ok(Reply { untagged, status }),
                }
            }
        })
        .await
        .unwrap_or(Err(ProviderError::Timeout));
        self.link.state.lock().expect("link").own = None;
        result
    }
}
