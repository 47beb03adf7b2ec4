//! The relay's policy: a sans-I/O state machine that decides what becomes of every piece of
//! the client's commands and the provider's responses once a session is logged in.
//!
//! The I/O loop (`relay.rs`) reads, hands the bytes to the policy, and performs what it is
//! told; the policy never touches a socket or a timer, so every rule below is tested by
//! feeding it byte strings and instants (`tests.rs`).
//!
//! - Inputs: client bytes ([`Policy::client_input`], framed here, one [`Step`] per fragment),
//!   provider bytes ([`Policy::provider_input`]), the clock ([`Policy::tick`] at
//!   [`Policy::deadline`]), the account worker's verdicts ([`Policy::set_verdicts`]), the
//!   interceptor's replies and its own commands ([`Policy::interceptor_reply`],
//!   [`Policy::own_request`]), shutdown and the provider's end.
//! - Outputs: per fragment, a [`Keep`]: forward it unchanged (the zero-copy path: a FETCH
//!   literal goes from the provider's read buffer to the client socket untouched), replace it,
//!   or keep it back and say why (discarded, collected, held, the proxy's own). Besides, bytes
//!   the proxy writes itself ([`Policy::poll_to_client`], [`Policy::poll_to_provider`]) and
//!   [`Event`]s (a command for the interceptor, responses for its own command, a `\Seen`
//!   change, the end).
//!
//! What it decides: commands the proxy cannot carry are refused; commands a wing handles are
//! collected whole for the interceptor; literals and lines over the limits are refused
//! without losing the connection where the protocol allows it; IDLE is served by the proxy
//! where the provider lacks it (polling with NOOP); the quiet INBOX keeps an IDLE-ing client
//! asleep while chat messages come and go; capability lists are rewritten; the proxy's own
//! commands get their own tags and their responses never reach the client; a provider that
//! owes an answer and stays silent, a client silent too long, and shutdown end the session
//! with a BYE. Whatever the proxy says itself goes to the client between two provider
//! responses, never inside one.

mod client;
mod own;
mod provider;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::quiet::{Quiet, Verdicts};
use crate::imap::wire::command::CommandName;
use crate::imap::wire::framing::{Fragment, Framer};
use own::Own;

/// Largest command an interceptor is given (METADATA values included).
const MAX_INTERCEPTED: usize = 1024 * 1024;
/// How long the BYE that ends a session may wait for the provider's response in progress.
const BYE_WAIT: Duration = Duration::from_secs(5);

/// What the policy needs to know about its session.
#[derive(Clone)]
pub struct PolicyOptions {
    pub max_literal: u64,
    /// Client silence after which the session is logged out.
    pub autologout: Duration,
    /// How long the provider may stay silent while it owes an answer.
    pub provider_timeout: Duration,
    /// Capabilities the proxy adds to the provider's.
    pub extra_capabilities: Vec<&'static str>,
    /// The provider lacks IDLE: the proxy serves it, polling with NOOP at this interval.
    pub emulate_idle: Option<Duration>,
    /// The quiet INBOX applies to this session; the function says whether it is on now (the
    /// account's COI filter is `active`).
    pub quiet: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

/// What becomes of one framed fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Sent on unchanged, straight from the read buffer.
    Forward,
    /// Sent as these bytes instead.
    Replace(Vec<u8>),
    /// Not sent on: refused or answered by the proxy, or the rest of such a command.
    Discard,
    /// Not sent on: read whole for the interceptor.
    Collect,
    /// Not sent on: held back by the quiet INBOX (told later, or never needed).
    Hold,
    /// Not sent on: part of a response to the proxy's own command.
    Own,
}

/// One fragment and what to do with it: `before` first (bytes of the proxy's own, to the same
/// side), then the fragment's `len` bytes as `keep` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub fragment: Fragment,
    pub len: usize,
    pub before: Vec<u8>,
    pub keep: Keep,
}

/// Something for the I/O loop to do besides writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole command for the interceptor. Client commands wait until its reply
    /// ([`Policy::interceptor_reply`]).
    Intercept(Vec<u8>),
    /// An untagged response to the interceptor's pending own command.
    OwnUntagged(Vec<u8>),
    /// The tagged status (without the tag) that completes it.
    OwnStatus(Vec<u8>),
    /// A STORE that sets or clears `\Seen` has been answered.
    SeenChanged,
    /// The session is over; what `poll_to_client` gave before is its last word.
    End(RelayEnd),
}

/// Why a relay ended, for the session's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    ClientClosed,
    ProviderClosed,
    /// The proxy ended the session with a `* BYE` (reason given).
    Bye(&'static str),
    Shutdown,
    /// Shutdown came in the middle of a provider response that did not end within
    /// [`SHUTDOWN_CUT`]: the session was cut off mid-response, without a BYE.
    ShutdownCut,
    ClientError(String),
    ProviderError(String),
}

impl std::fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayEnd::ClientClosed => f.write_str("the client closed the connection"),
            RelayEnd::ProviderClosed => f.write_str("the provider closed the connection"),
            RelayEnd::Bye(why) => write!(f, "coi-proxy said BYE: {why}"),
            RelayEnd::Shutdown => f.write_str("coi-proxy said BYE at shutdown"),
            RelayEnd::ShutdownCut => write!(
                f,
                "cut off at shutdown mid-response: the response in progress did not end within {} s",
                SHUTDOWN_CUT.as_secs()
            ),
            RelayEnd::ClientError(e) => write!(f, "the client connection failed: {e}"),
            RelayEnd::ProviderError(e) => write!(f, "the provider connection failed: {e}"),
        }
    }
}

/// How long a shutdown waits for the provider's response in progress before it cuts the
/// session off; below the daemon's grace period, so that every session ends (and says so in
/// the log) before the process exits.
pub const SHUTDOWN_CUT: Duration = Duration::from_secs(7);

/// Something the proxy tells the client, waiting for the provider's response in progress to
/// end.
#[derive(Debug)]
enum Answer {
    Bytes(Vec<u8>),
    /// The tagged end of an emulated IDLE: what the quiet INBOX held back goes first.
    IdleEnd(Vec<u8>),
}

/// The BYE that ends the session once the provider's response in progress is complete.
#[derive(Debug)]
struct Ending {
    bye: Vec<u8>,
    end: RelayEnd,
    /// Unless this passes first; `None` waits as long as it takes.
    deadline: Option<Instant>,
}

/// An IDLE the proxy serves itself.
#[derive(Debug)]
struct EmulatedIdle {
    tag: Vec<u8>,
    next_poll: Instant,
}

/// What happens to the rest of the current client command.
#[derive(Debug)]
enum Mode {
    Relay,
    /// Refused: dropped up to its end.
    Discard,
    /// Read whole for the interceptor.
    Collect(Vec<u8>),
}

/// The client command being framed.
#[derive(Debug)]
struct Current {
    mode: Mode,
    /// Part of it has already gone to the provider.
    forwarded: bool,
    tag: Vec<u8>,
}

/// What both directions know about the client's commands.
#[derive(Debug, Default)]
struct Commands {
    /// The tag of the client's IDLE while it runs.
    idle: Option<Vec<u8>>,
    /// The client sent DONE for that IDLE: from now on the provider owes its tagged response.
    idle_done: bool,
    /// The client has INBOX selected (as far as the relayed SELECT/EXAMINE said).
    inbox_selected: bool,
    /// Tags of relayed client commands whose tagged response has not come yet, with how many
    /// and whether their completion is watched (a STORE of `\Seen`).
    in_flight: HashMap<Vec<u8>, (usize, bool)>,
}

/// The relay's policy for one session.
pub struct Policy {
    opts: PolicyOptions,
    client: Framer,
    provider: Framer,
    current: Current,
    commands: Commands,
    emulated_idle: Option<EmulatedIdle>,
    /// A collected command is with the interceptor.
    intercepting: bool,
    own: Own,
    /// When the client last sent anything (or reading it resumed): the autologout clock.
    client_clock: Instant,
    /// When bytes last went to or came from the provider. Sending counts too: a client
    /// uploading a large literal slowly is not the provider's silence.
    activity: Instant,
    quiet: Option<Quiet>,
    /// New verdicts came while a provider response was in progress.
    quiet_poll_due: bool,
    /// A response to the own command, being read whole.
    capture: Option<Vec<u8>>,
    /// The rest of a response that was held back is dropped too.
    holding: bool,
    provider_said_bye: bool,
    answers: Vec<Answer>,
    to_provider: Vec<u8>,
    events: VecDeque<Event>,
    ending: Option<Ending>,
    ended: Option<RelayEnd>,
}

impl Policy {
    /// A policy taking over both framers where login left them; `verdicts` are the worker's
    /// counts as they are now.
    pub fn new(opts: PolicyOptions, client: Framer, provider: Framer, verdicts: Verdicts, now: Instant) -> Policy {
        let quiet = opts.quiet.is_some().then(|| Quiet::new(verdicts));
        Policy {
            opts,
            client,
            provider,
            current: Current { mode: Mode::Relay, forwarded: false, tag: Vec::new() },
            commands: Commands::default(),
            emulated_idle: None,
            intercepting: false,
            own: Own::default(),
            client_clock: now,
            activity: now,
            quiet,
            quiet_poll_due: false,
            capture: None,
            holding: false,
            provider_said_bye: false,
            answers: Vec::new(),
            to_provider: Vec::new(),
            events: VecDeque::new(),
            ending: None,
            ended: None,
        }
    }

    /// Frames the next client fragment at the front of `buf` and decides its fate; `None` when
    /// more bytes are needed or client commands must wait (see [`Policy::reading_client`]).
    /// `wants` says whether the interceptor handles a command.
    pub fn client_input(&mut self, buf: &[u8], now: Instant, wants: impl Fn(CommandName) -> bool) -> Option<Step> {
        if !self.reading_client() {
            return None;
        }
        let fragment = self.client.next(buf)?;
        let len = fragment.len();
        self.activity = now;
        let keep = self.client_fragment(fragment, &buf[..len], now, &wants);
        Some(Step { fragment, len, before: Vec::new(), keep })
    }

    /// Frames the next provider fragment at the front of `buf` and decides its fate; `None`
    /// when more bytes are needed.
    pub fn provider_input(&mut self, buf: &[u8], now: Instant) -> Option<Step> {
        let fragment = self.provider.next(buf)?;
        let len = fragment.len();
        let mut before = Vec::new();
        let keep = self.provider_fragment(fragment, &buf[..len], now, &mut before);
        if self.quiet_poll_due && self.provider.at_message_start() {
            self.quiet_poll(now);
        }
        Some(Step { fragment, len, before, keep })
    }

    /// Bytes came from the client.
    pub fn client_read(&mut self, now: Instant) {
        self.client_clock = now;
    }

    /// Bytes came from the provider.
    pub fn provider_read(&mut self, now: Instant) {
        self.activity = now;
    }

    /// Whether client bytes are wanted now: not while the interceptor or an own command
    /// works (later commands wait in the read buffer, keeping their order), nor once the
    /// session is ending.
    pub fn reading_client(&self) -> bool {
        !self.intercepting && !self.own.busy() && self.ending.is_none() && self.ended.is_none()
    }

    /// The interceptor answered the command it was given. An own command of its still
    /// pending is abandoned (it timed out): its responses are dropped when they come.
    pub fn interceptor_reply(&mut self, reply: Vec<u8>, now: Instant) {
        self.intercepting = false;
        self.own.abandon();
        self.answers.push(Answer::Bytes(reply));
        self.client_clock = now;
    }

    /// The interceptor wants `command` (everything after the tag, CRLF included) run on the
    /// provider; untagged responses starting with one of `capture` go to it, not the client.
    pub fn own_request(&mut self, command: Vec<u8>, capture: &'static [&'static [u8]], now: Instant) {
        self.own.request(command, capture, own::Origin::Interceptor, now);
        self.start_own(now);
    }

    /// The worker's verdicts changed.
    pub fn set_verdicts(&mut self, verdicts: Verdicts, now: Instant) {
        let Some(quiet) = self.quiet.as_mut() else { return };
        quiet.set_verdicts(verdicts);
        if self.provider.at_message_start() {
            self.quiet_poll(now);
        } else {
            self.quiet_poll_due = true;
        }
    }

    /// The proxy is shutting down: BYE once the provider's response in progress is complete,
    /// or the session is cut off if that takes longer than [`SHUTDOWN_CUT`].
    pub fn shutdown(&mut self, now: Instant) {
        if self.ending.is_none() && self.ended.is_none() {
            self.ending = Some(Ending {
                bye: b"* BYE coi-proxy is shutting down\r\n".to_vec(),
                end: RelayEnd::Shutdown,
                deadline: Some(now + SHUTDOWN_CUT),
            });
        }
    }

    /// The provider closed the connection.
    pub fn provider_closed(&mut self) {
        let bye =
            (!self.provider_said_bye).then(|| "* BYE [UNAVAILABLE] The provider closed the connection\r\n".into());
        self.end_now(RelayEnd::ProviderClosed, bye);
    }

    /// Reading from the provider failed.
    pub fn provider_failed(&mut self, error: String) {
        let bye = format!("* BYE [UNAVAILABLE] Lost the connection to the provider: {error}\r\n");
        self.end_now(RelayEnd::ProviderError(error), Some(bye));
    }

    /// When [`Policy::tick`] must be called next.
    pub fn deadline(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let mut deadline = self.ending.as_ref().and_then(|e| e.deadline);
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                deadline = Some(deadline.map_or(d, |cur| cur.min(d)));
            }
        };
        if self.waiting_for_provider() {
            consider(Some(self.activity + self.opts.provider_timeout));
        }
        if self.autologout_applies() {
            consider(Some(self.client_clock + self.opts.autologout));
        }
        consider(self.next_poll());
        consider(self.own.drain_deadline());
        if self.provider.at_message_start() {
            consider(self.quiet.as_ref().and_then(Quiet::deadline));
        }
        deadline
    }

    /// Time passed: timeouts, the emulated IDLE's poll, the quiet INBOX's holds.
    pub fn tick(&mut self, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        if let Some(ending) = &self.ending
            && ending.deadline.is_some_and(|d| now >= d)
        {
            self.ended = Some(match ending.end {
                RelayEnd::Shutdown => RelayEnd::ShutdownCut,
                _ => RelayEnd::Bye("timed out while saying BYE"),
            });
            self.ending = None;
            self.answers.clear();
            return;
        }
        let timeout = self.opts.provider_timeout;
        if self.waiting_for_provider() && now >= self.activity + timeout {
            let bye = format!(
                "* BYE [UNAVAILABLE] The provider did not answer for {} seconds; timed out\r\n",
                timeout.as_secs()
            );
            self.end_now(RelayEnd::Bye("the provider timed out"), Some(bye));
            return;
        }
        if self.autologout_applies() && now >= self.client_clock + self.opts.autologout {
            self.end_with_bye(b"* BYE Autologout; idle for too long\r\n".to_vec(), "autologout", now);
            return;
        }
        if self.next_poll().is_some_and(|at| now >= at) {
            // The provider's untagged answers to NOOP (EXISTS, EXPUNGE, FETCH) reach the idling
            // client, as IDLE would have sent them.
            self.activity = now;
            self.own.request(b"NOOP\r\n".to_vec(), &[], own::Origin::Poll, now);
        }
        self.start_own(now);
        if self.provider.at_message_start() && self.quiet.as_ref().and_then(Quiet::deadline).is_some_and(|d| now >= d) {
            self.quiet_poll(now);
        }
    }

    /// Bytes the proxy writes to the client now: its answers, held responses released, a
    /// final BYE. Only between two provider responses.
    pub fn poll_to_client(&mut self) -> Option<Vec<u8>> {
        if !self.provider.at_message_start() {
            return None;
        }
        let mut out = self.take_answers();
        if let Some(ending) = self.ending.take() {
            out.extend_from_slice(&ending.bye);
            self.ended = Some(ending.end);
        }
        (!out.is_empty()).then_some(out)
    }

    /// Bytes the proxy writes to the provider now (its own commands).
    pub fn poll_to_provider(&mut self) -> Option<Vec<u8>> {
        (!self.to_provider.is_empty()).then(|| std::mem::take(&mut self.to_provider))
    }

    /// The next thing to do besides writing. [`Event::End`] comes once everything the client
    /// must still hear has been handed out by [`Policy::poll_to_client`].
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if self.answers.is_empty() {
            return self.ended.take().map(Event::End);
        }
        None
    }

    /// Whether the provider owes an answer: an own command, or a client command other than a
    /// running IDLE (which may rightly stay silent for as long as the client likes; after the
    /// client's DONE it owes the tagged response).
    fn waiting_for_provider(&self) -> bool {
        let c = &self.commands;
        self.own.busy() || (!c.in_flight.is_empty() && (c.idle.is_none() || c.idle_done))
    }

    /// When the emulated IDLE polls the provider next.
    fn next_poll(&self) -> Option<Instant> {
        let idle = self.emulated_idle.as_ref()?;
        (!self.own.busy() && self.ending.is_none()).then_some(idle.next_poll)
    }

    /// The client is being read and may stay silent only so long (not while the proxy serves
    /// its IDLE).
    fn autologout_applies(&self) -> bool {
        self.reading_client() && self.emulated_idle.is_none()
    }

    /// Ends the session with `bye` once the provider's response in progress is complete.
    fn end_with_bye(&mut self, bye: Vec<u8>, why: &'static str, now: Instant) {
        if self.ending.is_none() && self.ended.is_none() {
            self.ending = Some(Ending { bye, end: RelayEnd::Bye(why), deadline: Some(now + BYE_WAIT) });
        }
    }

    /// Ends the session now; `bye` is said only if no provider response is in progress.
    fn end_now(&mut self, end: RelayEnd, bye: Option<String>) {
        self.ending = None;
        if self.provider.at_message_start() {
            if let Some(bye) = bye {
                self.answers.push(Answer::Bytes(bye.into_bytes()));
            }
        } else {
            self.answers.clear();
        }
        self.ended = Some(end);
    }

    fn take_answers(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for answer in self.answers.drain(..) {
            match answer {
                Answer::Bytes(bytes) => out.extend(bytes),
                Answer::IdleEnd(bytes) => {
                    if let Some(held) = self.quiet.as_mut().and_then(Quiet::release) {
                        out.extend(held);
                    }
                    out.extend(bytes);
                }
            }
        }
        out
    }

    /// Asks the quiet INBOX whether a hold ends now.
    fn quiet_poll(&mut self, now: Instant) {
        self.quiet_poll_due = false;
        if let Some(exists) = self.quiet.as_mut().and_then(|q| q.poll(now)) {
            self.answers.push(Answer::Bytes(exists));
        }
    }

    /// The tagged response for the client command `tag` came.
    fn completed(&mut self, tag: &[u8]) {
        let c = &mut self.commands;
        if c.idle.as_deref() == Some(tag) {
            c.idle = None;
            c.idle_done = false;
        }
        if let Some((n, watched)) = c.in_flight.get_mut(tag) {
            *n -= 1;
            if *n == 0 {
                if *watched {
                    self.events.push_back(Event::SeenChanged);
                }
                c.in_flight.remove(tag);
            }
        }
    }
}

/// `tag text CRLF`, or untagged where the command had no usable tag.
fn tagged_or_untagged(tag: &[u8], text: &str) -> Vec<u8> {
    let tag: &[u8] = if tag.is_empty() { b"*" } else { tag };
    [tag, b" ", text.as_bytes(), b"\r\n"].concat()
}
