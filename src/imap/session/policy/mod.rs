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
//! where the provider lacks it (polling with NOOP, and with STATUS where NOOP misses mail,
//! `rescan.rs`); under the COI `active` filter a plain client
//! is told of no message in INBOX before the account worker has looked at it (the quiet INBOX,
//! `settle.rs`), and such a session relays one command at a time; a message that becomes
//! `\Seen` is reported for read receipts; capability lists are rewritten; the proxy's own
//! commands get their own tags and their responses never reach the client; a provider that
//! owes an answer and stays silent, a client silent too long, and shutdown end the session
//! with a BYE. Whatever the proxy says itself goes to the client between two provider
//! responses, never inside one.

mod client;
mod express;
pub use express::ClientExpress;
mod own;
mod provider;
mod rescan;
mod settle;
mod tags;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::quiet::{Poll, Quiet, SyncAbility, Verdicts};
use crate::imap::wire::command::{CommandName, Head};
use crate::imap::wire::framing::{Fragment, Framer};
use own::Own;
use settle::{Look, Next};

use crate::limits::budget::{Charge, Exceeded, Share};
/// Charges to the memory budget grow in steps of this many bytes.
const CHARGE_STEP: usize = 64 * 1024;
/// How long the BYE that ends a session may wait for the provider's response in progress.
const BYE_WAIT: Duration = Duration::from_secs(5);
/// What the proxy reads whole of the provider's responses to one of its own commands (bytes).
const MAX_CAPTURE: usize = 4 * 1024 * 1024;
/// The status an own command ends with when its responses were larger than that.
const CAPTURE_TOO_LARGE: &[u8] =
    b"NO [LIMIT] The provider's answer is larger than coi-proxy reads for this command (4 MiB); ask for less\r\n";
/// The proxy's own words waiting for the client, at most (bytes): beyond it, client commands
/// are not read until the client has read what it was told (a client that pipelines commands
/// the proxy answers itself, and never reads, must not make it buffer without end).
const MAX_PENDING_ANSWERS: usize = 64 * 1024;

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
    /// The provider's NOOP may miss new mail (imap4d): each poll of the emulated IDLE also
    /// counts the selected mailbox with STATUS, and has the provider report what it missed
    /// ([`rescan`]).
    pub rescan: bool,
    /// The quiet INBOX applies to this session; the function says whether it is on now (the
    /// account's COI filter is `active`).
    pub quiet: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// The proxy serves `COMPRESS DEFLATE` (RFC 4978) itself; else it refuses it.
    pub compress: bool,
    /// The account's share of the memory budget: commands collected for the interceptor and
    /// responses captured for own commands are charged to it (`None`: not charged).
    pub memory: Option<Share>,
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

/// What [`Policy::client_input_lane`] made of the client's next bytes.
#[derive(Debug)]
pub enum LaneInput {
    Step(Step),
    /// More bytes are needed, or client commands must wait.
    More,
    /// The next command is one the interceptor may watch: nothing of it was framed.
    Watched,
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
    /// A message may have become `\Seen`: a STORE that sets or clears it has been answered, or
    /// the provider reported `\Seen` in the FLAGS of a message read by a body FETCH or changed
    /// elsewhere.
    SeenChanged,
    /// The client's `COMPRESS DEFLATE` was answered `OK` in what `poll_to_client` gave last:
    /// once that is written, both directions of the client's connection are compressed, the
    /// client bytes not framed yet included.
    Compress,
    /// New messages wait for the account worker's look at INBOX: wake it.
    WakeWorker,
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
    /// The `OK` to `COMPRESS DEFLATE`: the last uncompressed bytes for the client.
    Compress(Vec<u8>),
}

/// COMPRESS=DEFLATE towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Compression {
    #[default]
    Off,
    /// The `OK` waits to be written; nothing more is read or written until then.
    Answering,
    On,
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
    /// Read whole for the interceptor, up to the limit it gave (bytes; it may raise it for each
    /// further literal of the command).
    Collect {
        command: Vec<u8>,
        limit: usize,
        uid: bool,
    },
}

/// The client command being framed.
#[derive(Debug)]
struct Current {
    mode: Mode,
    /// Part of it has already gone to the provider.
    forwarded: bool,
    tag: Vec<u8>,
    /// Its name, read once from its first line (`None`: no valid head).
    name: Option<CommandName>,
}

/// A relayed client command whose tagged response has not come yet.
#[derive(Debug, Default)]
struct InFlight {
    /// How many commands carry the tag.
    count: usize,
    /// A STORE of `\Seen`: its completion is reported.
    stores_seen: bool,
    /// A FETCH that reads no body without PEEK: the `\Seen` in its FLAGS is no news.
    fetches_flags: bool,
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
    /// Tags of relayed client commands whose tagged response has not come yet.
    in_flight: tags::Tags<InFlight>,
    /// The quiet INBOX is in force for the commands in flight: the next waits for their end.
    serial: bool,
    /// The worker's counts when the first of the commands in flight went out.
    sent: Verdicts,
}

/// The relay's policy for one session.
pub struct Policy {
    opts: PolicyOptions,
    client: Framer,
    provider: Framer,
    current: Current,
    commands: Commands,
    emulated_idle: Option<EmulatedIdle>,
    /// The selected mailbox as the provider told the session, and mail its NOOP missed.
    rescan: rescan::Rescan,
    /// A collected command is with the interceptor.
    intercepting: bool,
    /// A part of the interceptor's response has come: from the next message start on, the
    /// provider is not framed (nor read) until the response's last part is out.
    streaming: bool,
    own: Own,
    /// When the client last sent anything (or reading it resumed): the autologout clock.
    client_clock: Instant,
    /// When bytes last went to or came from the provider. Sending counts too: a client
    /// uploading a large literal slowly is not the provider's silence.
    activity: Instant,
    quiet: Option<Quiet>,
    /// A held answer that counts INBOX's messages (SELECT, STATUS).
    look: Option<Look>,
    /// Tagged responses of client commands held back while the quiet INBOX holds their news.
    held_tagged: Vec<u8>,
    /// New verdicts came (or a hold may end) while a provider response was in progress.
    settle_due: bool,
    /// The provider's response in progress is an untagged FETCH.
    fetch_response: bool,
    /// The provider reported `\Seen` on a message: told when the command in flight ends.
    seen_news: bool,
    /// A response to the own command, being read whole.
    capture: Option<Vec<u8>>,
    /// Bytes captured for the running own command so far; beyond [`MAX_CAPTURE`] the rest is
    /// dropped and the command ends with [`CAPTURE_TOO_LARGE`].
    captured: usize,
    /// The budget's charge for what the running own command captured.
    capture_charge: Option<Charge>,
    /// The budget refused more for the running own command: the rest is dropped and it ends
    /// with `NO [LIMIT]`.
    capture_refused: Option<Exceeded>,
    /// The budget's charge for the command collected for the interceptor, held until its reply.
    collect_charge: Option<Charge>,
    /// The rest of a response that was held back is dropped too.
    holding: bool,
    /// The rest of a response goes to the held SELECT answer.
    collecting: bool,
    provider_said_bye: bool,
    compression: Compression,
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
        let capture_charge = opts.memory.as_ref().map(Share::empty);
        let collect_charge = opts.memory.as_ref().map(Share::empty);
        Policy {
            opts,
            client,
            provider,
            current: Current { mode: Mode::Relay, forwarded: false, tag: Vec::new(), name: None },
            commands: Commands::default(),
            emulated_idle: None,
            rescan: rescan::Rescan::default(),
            intercepting: false,
            streaming: false,
            own: Own::default(),
            client_clock: now,
            activity: now,
            quiet,
            look: None,
            held_tagged: Vec::new(),
            settle_due: false,
            fetch_response: false,
            seen_news: false,
            capture: None,
            captured: 0,
            capture_charge,
            capture_refused: None,
            collect_charge,
            holding: false,
            collecting: false,
            provider_said_bye: false,
            compression: Compression::Off,
            answers: Vec::new(),
            to_provider: Vec::new(),
            events: VecDeque::new(),
            ending: None,
            ended: None,
        }
    }

    /// Frames the next client fragment at the front of `buf` and decides its fate; `None` when
    /// more bytes are needed or client commands must wait (see [`Policy::reading_client`]).
    /// `wants` says whether the interceptor handles a command (name, `UID`, first line): the
    /// most bytes it takes it whole (`None`: relayed).
    pub fn client_input(
        &mut self,
        buf: &[u8],
        now: Instant,
        wants: impl Fn(CommandName, bool, &[u8]) -> Option<usize>,
    ) -> Option<Step> {
        if !self.reading_client() || (self.waiting_for_done() && !starts_with_done(buf)) {
            return None;
        }
        let fragment = self.client.next(buf)?;
        let len = fragment.len();
        self.activity = now;
        let keep = self.client_fragment(fragment, &buf[..len], None, now, &wants);
        Some(Step { fragment, len, before: Vec::new(), keep })
    }

    /// [`Policy::client_input`] for a lane (`session/lane.rs`), which cannot ask the
    /// interceptor: a command whose name and `UID` `watched` names is left unframed
    /// ([`LaneInput::Watched`]; the task frames it), every other one is relayed.
    pub fn client_input_lane(
        &mut self,
        buf: &[u8],
        now: Instant,
        watched: impl Fn(CommandName, bool) -> bool,
    ) -> LaneInput {
        if !self.reading_client() || (self.waiting_for_done() && !starts_with_done(buf)) {
            return LaneInput::More;
        }
        let before = self.client.at_message_start().then(|| self.client.clone());
        let Some(fragment) = self.client.next(buf) else { return LaneInput::More };
        let len = fragment.len();
        let head = match (&before, fragment) {
            (Some(_), Fragment::Line { first: true, .. }) => Head::parse(&buf[..len]),
            _ => None,
        };
        if let (Some(before), Some(head)) = (before, head)
            && watched(head.name, head.uid)
        {
            self.client = before;
            return LaneInput::Watched;
        }
        self.activity = now;
        let keep = self.client_fragment(fragment, &buf[..len], head, now, &|_, _, _| None);
        LaneInput::Step(Step { fragment, len, before: Vec::new(), keep })
    }

    /// Frames the next provider fragment at the front of `buf` and decides its fate; `None`
    /// when more bytes are needed.
    pub fn provider_input(&mut self, buf: &[u8], now: Instant) -> Option<Step> {
        if !self.reading_provider() {
            return None;
        }
        if self.compression == Compression::Answering && self.provider.at_message_start() {
            // The next response is compressed: it waits for the OK (`poll_to_client`).
            return None;
        }
        let fragment = self.provider.next(buf)?;
        let len = fragment.len();
        let (before, keep) = self.provider_step(fragment, &buf[..len], now);
        Some(Step { fragment, len, before, keep })
    }

    /// A framed provider fragment's fate, and what goes to the client before it.
    fn provider_step(&mut self, fragment: Fragment, bytes: &[u8], now: Instant) -> (Vec<u8>, Keep) {
        let mut before = Vec::new();
        let keep = self.provider_fragment(fragment, bytes, now, &mut before);
        if self.settle_due && self.provider.at_message_start() {
            self.settle(now);
        }
        (before, keep)
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
    /// works (later commands wait in the read buffer, keeping their order), nor while the
    /// quiet INBOX holds news or a command it serialises is in flight (a client in IDLE may
    /// still send its DONE), nor once the session is ending.
    pub fn reading_client(&self) -> bool {
        !self.intercepting
            && !self.own.busy()
            && self.ending.is_none()
            && self.ended.is_none()
            && self.compression != Compression::Answering
            && self.pending_answers() < MAX_PENDING_ANSWERS
            && (!self.client.at_message_start() || !self.settling() || self.idle_open())
    }

    /// The quiet INBOX keeps the next client command waiting: it holds news or an answer, or a
    /// command it serialises is in flight. A command already begun goes on.
    fn settling(&self) -> bool {
        let quiet = self.quiet.as_ref().is_some_and(Quiet::holding);
        quiet || self.look.is_some() || !self.held_tagged.is_empty() || self.serial_in_flight()
    }

    fn serial_in_flight(&self) -> bool {
        self.commands.serial && !self.commands.in_flight.is_empty()
    }

    /// The client is in IDLE (at the provider or served by the proxy) and has yet to send DONE.
    fn idle_open(&self) -> bool {
        self.emulated_idle.is_some() || (self.commands.idle.is_some() && !self.commands.idle_done)
    }

    /// Client input waits, except the DONE of an IDLE that is open.
    fn waiting_for_done(&self) -> bool {
        self.client.at_message_start() && self.settling() && self.idle_open()
    }

    /// Whether provider bytes are wanted now: not between two parts of the interceptor's
    /// response once it has begun (they would land inside it).
    pub fn reading_provider(&self) -> bool {
        !(self.streaming && self.provider.at_message_start())
    }

    /// Whether the session is in the plain state a lane relays (`session/lane.rs`): both
    /// sides read and framed the ordinary way, nothing of the proxy's own waiting or in
    /// progress (answers, own commands, the interceptor, a held or collected response, an
    /// emulated IDLE, COMPRESS being set up, the end), so that every fragment is forwarded or
    /// rewritten and nothing else happens. Anything else, and the lane hands the session back.
    pub fn lane_ready(&self) -> bool {
        self.events.is_empty()
            && self.answers.is_empty()
            && self.to_provider.is_empty()
            && !self.intercepting
            && !self.streaming
            && !self.own.busy()
            && self.ending.is_none()
            && self.ended.is_none()
            && self.compression == Compression::Off
            && self.emulated_idle.is_none()
            && self.capture.is_none()
            && !self.holding
            && !self.collecting
            && self.look.is_none()
            && self.held_tagged.is_empty()
            && !self.settle_due
            && !self.quiet.as_ref().is_some_and(Quiet::holding)
            && matches!(self.current.mode, Mode::Relay)
            && self.reading_client()
    }

    /// The client's next bytes start a command.
    pub fn client_at_message_start(&self) -> bool {
        self.client.at_message_start()
    }

    /// Whether the interceptor's next part is wanted now: it is at work and what it wrote
    /// before has been handed out (the I/O loop takes it once that is written, too).
    pub fn wants_part(&self) -> bool {
        self.intercepting && self.answers.is_empty()
    }

    /// Whether a part of the interceptor's response is out or waiting (it then runs no more
    /// own commands: the provider is not read until its response ends).
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// A part of the interceptor's response; more follows, and
    /// [`Policy::interceptor_reply`] ends it.
    pub fn interceptor_part(&mut self, part: Vec<u8>, now: Instant) {
        if !self.intercepting {
            return;
        }
        self.streaming = true;
        self.answers.push(Answer::Bytes(part));
        self.client_clock = now;
    }

    /// The interceptor answered the command it was given (the last part of its response). An
    /// own command of its still pending is abandoned (it timed out): its responses are dropped
    /// when they come.
    pub fn interceptor_reply(&mut self, reply: Vec<u8>, now: Instant) {
        self.intercepting = false;
        if let Some(charge) = self.collect_charge.as_mut() {
            charge.release();
        }
        self.own.abandon();
        self.answers.push(Answer::Bytes(reply));
        self.client_clock = now;
    }

    /// Bytes of the proxy's own words waiting for the client.
    fn pending_answers(&self) -> usize {
        self.answers
            .iter()
            .map(|a| match a {
                Answer::Bytes(b) | Answer::IdleEnd(b) | Answer::Compress(b) => b.len(),
            })
            .sum()
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
        self.settle(now);
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
            consider(self.look.as_ref().and_then(Look::deadline));
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
        let due = |d: Option<Instant>| d.is_some_and(|d| now >= d);
        if due(self.quiet.as_ref().and_then(Quiet::deadline)) || due(self.look.as_ref().and_then(Look::deadline)) {
            self.settle(now);
        }
    }

    /// Bytes the proxy writes to the client now: its answers, held responses released, a
    /// final BYE. Only between two provider responses.
    pub fn poll_to_client(&mut self) -> Option<Vec<u8>> {
        if !self.provider.at_message_start() {
            return None;
        }
        let mut out = self.take_answers();
        // Not inside the interceptor's response: the BYE waits for its end.
        if !self.streaming
            && let Some(ending) = self.ending.take()
        {
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
        if self.provider.at_message_start() && !self.streaming {
            if let Some(bye) = bye {
                self.answers.push(Answer::Bytes(bye.into_bytes()));
            }
        } else {
            self.answers.clear();
        }
        self.ended = Some(end);
    }

    fn take_answers(&mut self) -> Vec<u8> {
        if !self.intercepting {
            // The interceptor's last part is among them: the provider may be read again.
            self.streaming = false;
        }
        let mut out = Vec::new();
        for answer in self.answers.drain(..) {
            match answer {
                Answer::Bytes(bytes) => out.extend(bytes),
                Answer::IdleEnd(bytes) => {
                    // Mailbox news deferred during IDLE goes first; held messages stay held.
                    if let Some(quiet) = self.quiet.as_mut().filter(|q| !q.holding())
                        && let Some(news) = quiet.release()
                    {
                        out.extend(news);
                    }
                    out.extend(bytes);
                }
                Answer::Compress(bytes) => {
                    // Nothing is framed while it waits, so it is the last answer.
                    out.extend(bytes);
                    self.compression = Compression::On;
                    self.events.push_back(Event::Compress);
                }
            }
        }
        out
    }

    /// Lets the quiet INBOX and a held answer act on the verdicts and the time: release what
    /// may go to the client, ask the provider for news or run a command again, wake the
    /// worker. Only between two provider responses (else once the one in progress is over).
    fn settle(&mut self, now: Instant) {
        if !self.provider.at_message_start() {
            self.settle_due = true;
            return;
        }
        self.settle_due = false;
        let Some(quiet) = self.quiet.as_mut() else { return };
        if quiet.take_growth() {
            self.events.push_back(Event::WakeWorker);
        }
        let verdicts = quiet.verdicts();
        if quiet.holding() {
            let sync = if self.commands.idle.is_some() && self.emulated_idle.is_none() {
                SyncAbility::Idle
            } else if self.own.busy() || !self.commands.in_flight.is_empty() {
                SyncAbility::Later
            } else {
                SyncAbility::Now
            };
            match quiet.poll(now, sync) {
                Poll::Wait => {}
                Poll::Sync => {
                    self.own.request(b"NOOP\r\n".to_vec(), &[], own::Origin::Settle, now);
                    self.start_own(now);
                }
                Poll::Release(bytes) => {
                    if !bytes.is_empty() {
                        self.answers.push(Answer::Bytes(bytes));
                    }
                }
            }
        }
        if let Some(look) = self.look.as_mut() {
            let next = look.poll(&verdicts, now);
            self.look_next(next, now);
        }
        let quiet_holds = self.quiet.as_ref().is_some_and(Quiet::holding);
        if !quiet_holds && self.look.is_none() && !self.held_tagged.is_empty() {
            if self.commands.idle.is_none()
                && let Some(news) = self.quiet.as_mut().and_then(Quiet::release)
            {
                self.answers.push(Answer::Bytes(news));
            }
            let tagged = std::mem::take(&mut self.held_tagged);
            self.answers.push(Answer::Bytes(tagged));
        }
    }

    /// Acts on what a held answer comes to.
    fn look_next(&mut self, next: Next, now: Instant) {
        match next {
            Next::Wait => {}
            Next::Wake => self.events.push_back(Event::WakeWorker),
            Next::Rerun(command, capture) => {
                self.own.request(command, capture, own::Origin::Rerun, now);
                self.start_own(now);
            }
            Next::Release(bytes) => {
                let select = self.look.take().is_some_and(|l| !l.is_status());
                if select && let Some(quiet) = self.quiet.as_mut() {
                    quiet.reset();
                    quiet.learn(&bytes);
                }
                if !bytes.is_empty() {
                    self.answers.push(Answer::Bytes(bytes));
                }
                self.settle(now);
            }
        }
    }

    /// The tagged response for the client command `tag` came.
    fn completed(&mut self, tag: &[u8]) {
        let c = &mut self.commands;
        if c.idle.as_deref() == Some(tag) {
            c.idle = None;
            c.idle_done = false;
        }
        if let Some(entry) = c.in_flight.get_mut(tag) {
            entry.count -= 1;
            if entry.count == 0 {
                if entry.stores_seen || self.seen_news {
                    self.seen_news = false;
                    self.events.push_back(Event::SeenChanged);
                }
                c.in_flight.remove(tag);
            }
        }
    }

    /// A FETCH response line reported FLAGS with `\Seen` (and no `$MDNSent`): news for read
    /// receipts unless a FETCH of flags only is in flight; told when the command in flight
    /// ends, at once if none is (IDLE, unsolicited).
    fn seen_reported(&mut self) {
        let c = &self.commands;
        if c.in_flight.values().any(|f| f.fetches_flags) {
            return;
        }
        let idle = c.idle.as_ref().is_some_and(|t| c.in_flight.contains_key(t)) && !c.idle_done;
        if c.in_flight.is_empty() || idle {
            self.events.push_back(Event::SeenChanged);
        } else {
            self.seen_news = true;
        }
    }
}

/// Whether `buf` begins with the line `DONE`.
fn starts_with_done(buf: &[u8]) -> bool {
    buf.len() > 4 && buf[..4].eq_ignore_ascii_case(b"DONE") && matches!(buf[4], b'\r' | b'\n')
}

/// `tag text CRLF`, or untagged where the command had no usable tag.
fn tagged_or_untagged(tag: &[u8], text: &str) -> Vec<u8> {
    let tag: &[u8] = if tag.is_empty() { b"*" } else { tag };
    [tag, b" ", text.as_bytes(), b"\r\n"].concat()
}
