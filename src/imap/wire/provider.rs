//! The contract between the feature wings and whatever carries their commands to the provider.
//!
//! A wing (COI, WebPush, receipts) sometimes has to ask the provider something: create the chat
//! folders before answering a SETMETADATA, read a namespace, fetch the header of a new message.
//! It does so through [`ProviderCommands`], which a client session implements on the client's
//! own provider connection (with the proxy's own tag space) and an account worker on its own
//! connection. The wing never learns which one it talks to, and never imports either.

use std::future::Future;

use super::command::CommandName;

/// Capture every untagged response of a command.
pub const ALL: &[&[u8]] = &[b"* "];

/// What the provider answered to a command.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The untagged responses asked for, whole (literals inline).
    pub untagged: Vec<Vec<u8>>,
    /// The tagged status without the tag, e.g. `OK Create completed.\r\n`.
    pub status: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.status.starts_with(b"OK")
    }

    /// The status for the client: `tag` + the provider's status line.
    pub fn for_client(&self, tag: &str) -> Vec<u8> {
        [tag.as_bytes(), b" ", &self.status].concat()
    }

    /// The status as text without the line end, for logs and error messages.
    pub fn status_text(&self) -> String {
        String::from_utf8_lossy(&self.status).trim_end().to_string()
    }
}

/// Why a command got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("lost the connection to the provider: {0}")]
    Io(#[from] std::io::Error),
    #[error("the provider closed the connection")]
    Closed,
    #[error("the provider did not answer in time")]
    Timeout,
    /// The connection's own error (e.g. `imap::upstream::UpstreamError`), kept whole.
    #[error(transparent)]
    Connection(Box<dyn std::error::Error + Send + Sync>),
}

/// Runs commands on a provider connection on a wing's behalf.
pub trait ProviderCommands: Send {
    /// Runs `command` (everything after the tag, CRLF included; literals of either kind) and
    /// returns the tagged status with the untagged responses that start with one of `capture`
    /// (e.g. `b"* METADATA "`, or [`ALL`]); other untagged responses go wherever the connection
    /// sends them (a session's client, or nowhere).
    fn run(
        &mut self,
        command: &[u8],
        capture: &'static [&'static [u8]],
    ) -> impl Future<Output = Result<Reply, ProviderError>> + Send;
}

/// Commands a wing handles itself after login, on a client session.
pub trait Interceptor: Send {
    /// Whether the command `name` (never a `UID` command) is handled here; it is then read
    /// whole (the proxy answers `+` to its synchronizing literals) and given to `handle`.
    fn wants(&self, name: CommandName) -> bool;

    /// Handles one whole command; returns the complete response for the client.
    fn handle<P: ProviderCommands>(
        &mut self,
        command: Vec<u8>,
        provider: &mut P,
    ) -> impl Future<Output = Vec<u8>> + Send;
}

/// Intercepts nothing: a pure relay.
pub struct Relay;

impl Interceptor for Relay {
    fn wants(&self, _: CommandName) -> bool {
        false
    }

    async fn handle<P: ProviderCommands>(&mut self, _: Vec<u8>, _: &mut P) -> Vec<u8> {
        unreachable!("wants() is always false")
    }
}
