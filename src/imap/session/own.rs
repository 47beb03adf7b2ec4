//! The proxy's own commands on a client's provider connection, as a wing sees them.
//!
//! Some client commands cannot simply be relayed: a SETMETADATA that enables COI must create
//! the chat folders before the client hears OK; a GETMETADATA must merge what the provider
//! stores with what the proxy computes. Such commands are handed to an `Interceptor`
//! (`imap::wire::provider`), which talks to the provider through [`OwnCommands`]: each
//! command goes to the relay's I/O loop as a request, the policy sends it under a tag of its
//! own when the client's relayed commands are answered (`policy/own.rs`), and routes the
//! responses back here, so nothing the proxy asks ever reaches the client.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::imap::wire::provider::{ProviderCommands, ProviderError, Reply};

/// How long the provider gets to answer an own command.
const OWN_TIMEOUT: Duration = Duration::from_secs(60);

/// A command for the provider, from the interceptor to the relay.
pub(crate) struct OwnRequest {
    /// Everything after the tag, CRLF included.
    pub command: Vec<u8>,
    /// Prefixes of the untagged responses that belong to the command (`* METADATA `).
    pub capture: &'static [&'static [u8]],
    pub replies: mpsc::UnboundedSender<OwnReply>,
}

/// A response to a pending own command, from the relay.
pub(crate) enum OwnReply {
    Untagged(Vec<u8>),
    /// The tagged status without the tag; it completes the command.
    Status(Vec<u8>),
}

/// Sends the proxy's own commands on the session's provider connection.
pub struct OwnCommands {
    requests: mpsc::UnboundedSender<OwnRequest>,
}

impl OwnCommands {
    pub(crate) fn new(requests: mpsc::UnboundedSender<OwnRequest>) -> OwnCommands {
        OwnCommands { requests }
    }
}

impl ProviderCommands for OwnCommands {
    /// Runs `command` on the client's provider connection; the untagged responses not captured
    /// reach the client as they would have anyway.
    async fn run(&mut self, command: &[u8], capture: &'static [&'static [u8]]) -> Result<Reply, ProviderError> {
        let (replies, mut rx) = mpsc::unbounded_channel();
        self.requests
            .send(OwnRequest { command: command.to_vec(), capture, replies })
            .map_err(|_| ProviderError::Closed)?;
        tokio::time::timeout(OWN_TIMEOUT, async {
            let mut untagged = Vec::new();
            loop {
                match rx.recv().await.ok_or(ProviderError::Closed)? {
                    OwnReply::Untagged(u) => untagged.push(u),
                    OwnReply::Status(status) => return Ok(Reply { untagged, status }),
                }
            }
        })
        .await
        .unwrap_or(Err(ProviderError::Timeout))
    }
}
