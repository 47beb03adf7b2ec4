//! The contract between the feature wings and whatever carries their commands to the provider.
//!
//! A wing (COI, WebPush, receipts) sometimes has to ask the provider something: create the chat
//! folders before answering a SETMETADATA, read a namespace, fetch the header of a new message.
//! It does so through [`ProviderCommands`], which a client session implements on the client's
//! own provider connection (with the proxy's own tag space) and an account worker on its own
//! connection. The wing never learns which one it talks to, and never imports either.

use std::future::Future;

use super::command::CommandName;

/// Largest command a session gives an interceptor (METADATA values, an appended message
/// included): an interceptor that wants a command with a literal takes it only up to this.
pub const MAX_INTERCEPTED: usize = 1024 * 1024;

/// Capture every untagged response of a command.
pub const ALL: &[&[u8]] = &[b"* "];

/// Capture the FETCH responses only (`* <number> FETCH`), so that EXISTS, EXPUNGE and the
/// like still reach the client in their order.
pub const FETCHES: &[&[u8]] = &[FETCH_PATTERN];

/// The capture entry that stands for `* <number> FETCH`.
const FETCH_PATTERN: &[u8] = b"* <n> FETCH";

/// Whether the untagged response `resp` is one that `capture` asks for: a prefix (any case),
/// or [`FETCHES`]'s pattern.
pub fn captures(capture: &[&[u8]], resp: &[u8]) -> bool {
    capture.iter().any(|p| {
        if *p == FETCH_PATTERN {
            let Some(rest) = resp.strip_prefix(b"* ") else { return false };
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            digits > 0 && rest[digits..].len() >= 6 && rest[digits..digits + 6].eq_ignore_ascii_case(b" FETCH")
        } else {
            resp.len() >= p.len() && resp[..p.len()].eq_ignore_ascii_case(p)
        }
    })
}

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

    /// Whether the command starting with `line` (its first line, literals not yet read) is
    /// handled here; `uid` for a `UID` command. By default the non-UID commands [`wants`]
    /// names; an interceptor that looks at more than the name (the decrypted view takes a
    /// FETCH only when it asks for content) says so here.
    ///
    /// [`wants`]: Interceptor::wants
    fn wants_command(&self, name: CommandName, uid: bool, _line: &[u8]) -> bool {
        !uid && self.wants(name)
    }

    /// Whether this interceptor may take, or look at, a command named `name` (`uid` for a `UID`
    /// command) in any form and in any state: commands it never watches are relayed without
    /// asking it (a session in a lane, `imap::session::lane`). Yes wherever
    /// [`wants_command`](Interceptor::wants_command) could say yes.
    fn watches(&self, name: CommandName, uid: bool) -> bool {
        !uid && self.wants(name)
    }

    /// The most bytes of the command starting with `line` (one this interceptor wants) that it
    /// takes whole; a larger one is refused (`NO [TOOBIG]`). [`MAX_INTERCEPTED`] unless it says
    /// more (the decrypted view takes appended messages up to its own bound).
    fn collect_limit(&self, _name: CommandName, _uid: bool, _line: &[u8]) -> usize {
        MAX_INTERCEPTED
    }

    /// Handles one whole command; returns the response for the client, or its last part when
    /// the earlier parts went to `out` (a long response, written as the client reads it).
    fn handle<P: ProviderCommands>(
        &mut self,
        command: Vec<u8>,
        provider: &mut P,
        out: &mut ReplyOut,
    ) -> impl Future<Output = Vec<u8>> + Send;
}

/// Where an interceptor writes a long response in parts (many METADATA entries). A part is
/// taken only once the client has taken the one before, so memory stays bounded whatever the
/// response's size, and a client that does not read stops the interceptor instead of making the
/// proxy buffer. Once a part is out, the response is the only thing the client hears until its
/// end: no more commands go to the provider on the interceptor's behalf.
pub struct ReplyOut(Sink);

enum Sink {
    Channel(Option<tokio::sync::mpsc::Sender<Vec<u8>>>),
    Collect(Vec<u8>),
}

impl ReplyOut {
    /// Parts go into `parts` (a channel of capacity 1 that the session's relay reads when the
    /// client has taken the last part).
    pub fn channel(parts: tokio::sync::mpsc::Sender<Vec<u8>>) -> ReplyOut {
        ReplyOut(Sink::Channel(Some(parts)))
    }

    /// Parts are kept in memory (tests, and callers that want the whole response).
    pub fn collect() -> ReplyOut {
        ReplyOut(Sink::Collect(Vec::new()))
    }

    /// Writes one part; waits until there is room. A client that is gone takes the rest
    /// without a word.
    pub async fn send(&mut self, part: Vec<u8>) {
        match &mut self.0 {
            Sink::Channel(tx) => {
                if let Some(sender) = tx
                    && sender.send(part).await.is_err()
                {
                    *tx = None;
                }
            }
            Sink::Collect(all) => all.extend(part),
        }
    }

    /// What [`ReplyOut::collect`] collected.
    pub fn collected(self) -> Vec<u8> {
        match self.0 {
            Sink::Collect(all) => all,
            Sink::Channel(_) => Vec::new(),
        }
    }
}

/// Intercepts nothing: a pure relay.
pub struct Relay;

impl Interceptor for Relay {
    fn wants(&self, _: CommandName) -> bool {
        false
    }

    async fn handle<P: ProviderCommands>(&mut self, _: Vec<u8>, _: &mut P, _: &mut ReplyOut) -> Vec<u8> {
        unreachable!("wants() is always false")
    }
}

/// Two interceptors on one session: a command goes to the first that wants it.
pub struct Both<A, B>(pub A, pub B);

impl<A: Interceptor, B: Interceptor> Interceptor for Both<A, B> {
    fn wants(&self, name: CommandName) -> bool {
        self.0.wants(name) || self.1.wants(name)
    }

    fn wants_command(&self, name: CommandName, uid: bool, line: &[u8]) -> bool {
        self.0.wants_command(name, uid, line) || self.1.wants_command(name, uid, line)
    }

    fn watches(&self, name: CommandName, uid: bool) -> bool {
        self.0.watches(name, uid) || self.1.watches(name, uid)
    }

    fn collect_limit(&self, name: CommandName, uid: bool, line: &[u8]) -> usize {
        if self.0.wants_command(name, uid, line) {
            self.0.collect_limit(name, uid, line)
        } else {
            self.1.collect_limit(name, uid, line)
        }
    }

    async fn handle<P: ProviderCommands>(&mut self, command: Vec<u8>, provider: &mut P, out: &mut ReplyOut) -> Vec<u8> {
        let (name, uid, first_line) = {
            let line_end = command.iter().position(|&b| b == b'\n').map_or(command.len(), |i| i + 1);
            let head = super::command::Head::parse(&command[..line_end]);
            (head.map_or(CommandName::Other, |h| h.name), head.is_some_and(|h| h.uid), command[..line_end].to_vec())
        };
        if self.0.wants_command(name, uid, &first_line) {
            self.0.handle(command, provider, out).await
        } else {
            self.1.handle(command, provider, out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_patterns() {
        assert!(captures(FETCHES, b"* 12 FETCH (UID 4)\r\n") && captures(FETCHES, b"* 1 fetch (FLAGS ())\r\n"));
        assert!(!captures(FETCHES, b"* 12 EXPUNGE\r\n") && !captures(FETCHES, b"* FETCH\r\n"));
        assert!(!captures(FETCHES, b"* 3 EXISTS\r\n") && !captures(FETCHES, b"* 3 FETC"));
        assert!(captures(ALL, b"* 3 EXISTS\r\n") && captures(&[b"* search"], b"* SEARCH 1\r\n"));
    }
}
