//! The authenticated phase: client and provider bytes relayed both ways, byte-exactly, as a
//! streaming copy.
//!
//! Each direction runs as its own future so that neither can block the other (a client sending
//! a large APPEND while the provider streams a large FETCH must not deadlock). Only the
//! response direction writes to the client; when the command direction must answer the client
//! itself (a refused command), it hands the response over a channel and the response direction
//! writes it between two provider responses, never inside one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

use super::own::{Link, OwnCommands, OwnEvent};
use super::quiet::{Quiet, Verdict, Verdicts};
use crate::imap::conn::{Conn, ReadSize};
use crate::imap::upstream::OWN_TAG_PREFIX;
use crate::imap::wire::capability;
use crate::imap::wire::command;
use crate::imap::wire::framing::{Fragment, Framer, Literal};
use crate::imap::wire::provider::{Interceptor, ProviderCommands};
use crate::net::Stream;

/// What the relay needs to know about its session.
pub struct RelayOptions {
    pub max_literal: u64,
    pub autologout: Duration,
    /// How long the provider may stay silent while it owes an answer.
    pub provider_timeout: Duration,
    /// Capabilities the proxy adds to the provider's.
    pub extra_capabilities: Vec<&'static str>,
    /// Called when a STORE that sets or clears `\Seen` has been answered (the COI worker
    /// moves chat messages once they are seen).
    pub seen_changed: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Keeps an IDLE-ing client asleep while messages that get moved away arrive.
    pub quiet: Option<QuietInbox>,
    /// The provider lacks IDLE: the proxy serves it, polling with NOOP at this interval.
    pub emulate_idle: Option<Duration>,
}

/// What the quiet INBOX needs: whether it applies now, and the worker's verdicts.
pub struct QuietInbox {
    pub active: Arc<dyn Fn() -> bool + Send + Sync>,
    pub verdicts: watch::Receiver<Verdicts>,
}

/// Why a relay ended, for the session's log line.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    ClientClosed,
    ProviderClosed,
    /// The proxy ended the session with a `* BYE` (reason given).
    Bye(&'static str),
    Shutdown,
    ClientError(String),
    ProviderError(String),
}

/// Byte counts for the session's log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub from_client: u64,
    pub from_provider: u64,
}

/// A message from the command direction to the response direction.
enum ToClient {
    /// A complete response the proxy makes itself.
    Response(Vec<u8>),
    /// A final `* BYE` line; the session ends after it.
    Bye(Vec<u8>, &'static str),
    /// The tagged end of an emulated IDLE: what the quiet INBOX held back goes first.
    IdleDone(Vec<u8>),
}

/// Largest command an interceptor is given (METADATA values included).
const MAX_INTERCEPTED: usize = 1024 * 1024;

/// Relays until either side closes, the proxy says BYE, or shutdown is signalled.
pub async fn run<I: Interceptor>(
    client: Conn,
    upstream: Conn,
    opts: RelayOptions,
    interceptor: &mut I,
    mut shutdown: watch::Receiver<bool>,
) -> (RelayEnd, Traffic) {
    let (client_read, client_write) = tokio::io::split(client.stream);
    let (up_read, up_write) = tokio::io::split(upstream.stream);
    let (tx, rx) = mpsc::channel(16);
    let link = Link::new(opts.seen_changed.clone());
    let activity = Activity::new();
    let (mut from_client, mut from_provider) = (0, 0);
    let end = {
        let commands = Commands {
            read: client_read,
            buf: client.buf,
            framer: client.framer,
            write: up_write,
            to_client: tx,
            opts: &opts,
            link: &link,
            activity: &activity,
            counted: &mut from_client,
            next_own_tag: 0,
            emulated_idle: None,
            read_size: ReadSize::default(),
        }
        .run(interceptor);
        let responses = Responses {
            read: up_read,
            buf: upstream.buf,
            framer: upstream.framer,
            write: client_write,
            from_commands: rx,
            opts: &opts,
            link: &link,
            activity: &activity,
            counted: &mut from_provider,
            quiet: opts.quiet.as_ref().map(|q| Quiet::new(q.verdicts.clone())),
            read_size: ReadSize::default(),
        }
        .run(&mut shutdown);
        tokio::pin!(commands, responses);
        tokio::select! {
            end = &mut commands => match end {
                // The response direction is still writing the BYE: give it a moment to finish.
                CommandsEnd::Handover => tokio::time::timeout(Duration::from_secs(5), &mut responses)
                    .await
                    .unwrap_or(RelayEnd::Bye("timed out while saying BYE")),
                CommandsEnd::Ended(end) => end,
            },
            end = &mut responses => end,
        }
    };
    (end, Traffic { from_client, from_provider })
}

enum CommandsEnd {
    Ended(RelayEnd),
    /// A BYE was handed to the response direction, which ends the session.
    Handover,
}

/// What happens to the rest of the current client command.
enum Mode {
    Relay,
    /// Refused: dropped up to its end.
    Discard,
    /// Read whole for the interceptor.
    Collect(Vec<u8>),
}

/// Client → provider.
struct Commands<'a> {
    read: ReadHalf<Stream>,
    buf: BytesMut,
    framer: Framer,
    write: WriteHalf<Stream>,
    to_client: mpsc::Sender<ToClient>,
    opts: &'a RelayOptions,
    link: &'a Link,
    activity: &'a Activity,
    counted: &'a mut u64,
    next_own_tag: u64,
    /// The tag of an IDLE the proxy serves itself, and when to poll the provider next.
    emulated_idle: Option<(Vec<u8>, tokio::time::Instant)>,
    read_size: ReadSize,
}

impl Commands<'_> {
    async fn run<I: Interceptor>(mut self, interceptor: &mut I) -> CommandsEnd {
        let mut out = Output::default();
        let mut mode = Mode::Relay;
        // Part of the current command has already gone to the provider.
        let mut forwarded = false;
        let mut tag: Vec<u8> = Vec::new();
        loop {
            let mut pos = 0;
            let mut collected = None;
            let mut replies: Vec<ToClient> = Vec::new();
            while let Some(fragment) = self.framer.next(&self.buf[pos..]) {
                let (start, len) = (pos, fragment_len(&fragment));
                pos += len;
                let bytes = &self.buf[start..pos];
                crate::imap::wire::trace::client_fragment(&fragment, bytes);
                match fragment {
                    Fragment::Line { first, literal, .. } => {
                        if first && let Some((idle_tag, _)) = self.emulated_idle.take() {
                            // Only DONE may come during IDLE (RFC 2177).
                            let done = bytes.trim_ascii().eq_ignore_ascii_case(b"DONE");
                            let text = if done { "OK Idle completed." } else { "BAD Expected DONE" };
                            replies.push(ToClient::IdleDone(tagged_or_untagged(&idle_tag, text)));
                            self.link.completed(&idle_tag);
                            mode = Mode::Discard;
                            if literal.is_some_and(|l| l.sync) {
                                self.framer.cancel_literal();
                            }
                            continue;
                        }
                        if first
                            && let Some(interval) = self.opts.emulate_idle
                            && let Some((idle_tag, name)) = command::head(bytes)
                            && name.eq_ignore_ascii_case(b"IDLE")
                            && literal.is_none()
                        {
                            self.link.idle_started(idle_tag);
                            self.emulated_idle = Some((idle_tag.to_vec(), tokio::time::Instant::now() + interval));
                            replies.push(ToClient::Response(b"+ idling\r\n".to_vec()));
                            mode = Mode::Discard;
                            continue;
                        }
                        if first {
                            mode = Mode::Relay;
                            forwarded = false;
                            let head = command::head(bytes);
                            tag = head.map(|(t, _)| t.to_vec()).unwrap_or_default();
                            if let Some((_, name)) = head {
                                self.note_state(name, bytes, interceptor.wants(name));
                            } else if bytes.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                                self.link.idle_done();
                            }
                            if let Some(reply) = refuse_command(bytes) {
                                mode = Mode::Discard;
                                replies.push(ToClient::Response(reply));
                            } else if head.is_some_and(|(_, name)| interceptor.wants(name)) {
                                mode = Mode::Collect(Vec::new());
                            }
                        }
                        match &mut mode {
                            Mode::Discard => {
                                if literal.is_some_and(|l| l.sync) {
                                    self.framer.cancel_literal();
                                }
                            }
                            Mode::Collect(command) => {
                                let too_big = literal.is_some_and(|l| l.len > MAX_INTERCEPTED as u64)
                                    || command.len() + len > MAX_INTERCEPTED;
                                if too_big {
                                    let lit = literal.unwrap_or(Literal { len: 0, sync: false, binary: false });
                                    if lit.sync {
                                        self.framer.cancel_literal();
                                    }
                                    mode = Mode::Discard;
                                    let text =
                                        format!("{} [TOOBIG] Command too large", if lit.sync { "NO" } else { "BAD" });
                                    replies.push(ToClient::Response(tagged_or_untagged(&tag, &text)));
                                    continue;
                                }
                                command.extend_from_slice(bytes);
                                match literal {
                                    None => {
                                        collected = Some(std::mem::take(command));
                                        mode = Mode::Relay;
                                        break;
                                    }
                                    Some(l) if l.sync => {
                                        replies.push(ToClient::Response(b"+ Ready for literal data\r\n".to_vec()))
                                    }
                                    Some(_) => {}
                                }
                            }
                            Mode::Relay => {
                                if let Some(lit) = literal.filter(|l| l.len > self.opts.max_literal) {
                                    if forwarded {
                                        let bye = format!(
                                            "* BYE [TOOBIG] Literal of {} bytes exceeds the limit of {} bytes\r\n",
                                            lit.len, self.opts.max_literal
                                        );
                                        let _ = self
                                            .to_client
                                            .send(ToClient::Bye(bye.into_bytes(), "literal too big"))
                                            .await;
                                        return CommandsEnd::Handover;
                                    }
                                    replies.push(ToClient::Response(too_big(&tag, lit, self.opts.max_literal)));
                                    if lit.sync {
                                        self.framer.cancel_literal();
                                    } else {
                                        mode = Mode::Discard;
                                    }
                                    continue;
                                }
                                if first && !tag.is_empty() {
                                    self.link.started(&tag, touches_seen(bytes));
                                    crate::metrics::COMMANDS_RELAYED.inc();
                                }
                                out.pass(&self.buf, start, pos);
                                forwarded = true;
                            }
                        }
                    }
                    Fragment::LiteralData { .. } => match &mut mode {
                        Mode::Discard => {}
                        Mode::Collect(command) => command.extend_from_slice(bytes),
                        Mode::Relay => out.pass(&self.buf, start, pos),
                    },
                    Fragment::Overlong { start: line_start, first, end, literal, .. } => {
                        if line_start && !first {
                            let bye = b"* BYE Command line too long\r\n".to_vec();
                            let _ = self.to_client.send(ToClient::Bye(bye, "command line too long")).await;
                            return CommandsEnd::Handover;
                        }
                        if line_start {
                            if first {
                                tag = command::head(bytes).map(|(t, _)| t.to_vec()).unwrap_or_default();
                            }
                            mode = Mode::Discard;
                            replies.push(ToClient::Response(tagged_or_untagged(&tag, "BAD Command line too long")));
                        }
                        if end && literal.is_some_and(|l| l.sync) {
                            self.framer.cancel_literal();
                        }
                    }
                }
            }
            if let Err(e) = out.write_to(&mut self.write, &self.buf[..pos]).await {
                return CommandsEnd::Ended(RelayEnd::ProviderError(e.to_string()));
            }
            if pos > 0 {
                self.activity.touch();
            }
            self.buf.advance(pos);
            for reply in replies {
                if self.to_client.send(reply).await.is_err() {
                    return CommandsEnd::Ended(RelayEnd::ClientClosed);
                }
            }
            if let Some(command) = collected {
                self.activity.touch();
                let mut own = OwnCommands { write: &mut self.write, link: self.link, next_tag: &mut self.next_own_tag };
                let reply = interceptor.handle(command, &mut own).await;
                if self.to_client.send(ToClient::Response(reply)).await.is_err() {
                    return CommandsEnd::Ended(RelayEnd::ClientClosed);
                }
                // More commands may be buffered already.
                continue;
            }
            self.read_size.prepare(&mut self.buf);
            if let Some((_, next_poll)) = self.emulated_idle {
                let read = tokio::select! {
                    read = self.read.read_buf(&mut self.buf) => Some(read),
                    _ = tokio::time::sleep_until(next_poll) => None,
                };
                match read {
                    Some(Ok(0)) => return CommandsEnd::Ended(RelayEnd::ClientClosed),
                    Some(Ok(n)) => {
                        *self.counted += n as u64;
                        self.read_size.after_read(n);
                    }
                    Some(Err(e)) => return CommandsEnd::Ended(RelayEnd::ClientError(e.to_string())),
                    None => {
                        // The provider's untagged answers to NOOP (EXISTS, EXPUNGE, FETCH) reach
                        // the idling client, as IDLE would have sent them.
                        self.activity.touch();
                        let mut own =
                            OwnCommands { write: &mut self.write, link: self.link, next_tag: &mut self.next_own_tag };
                        if let Err(e) = own.run(b"NOOP\r\n", &[]).await {
                            return CommandsEnd::Ended(RelayEnd::ProviderError(e.to_string()));
                        }
                        let interval = self.opts.emulate_idle.unwrap_or(Duration::from_secs(10));
                        if let Some((_, next)) = self.emulated_idle.as_mut() {
                            *next = tokio::time::Instant::now() + interval;
                        }
                    }
                }
                continue;
            }
            match tokio::time::timeout(self.opts.autologout, self.read.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => return CommandsEnd::Ended(RelayEnd::ClientClosed),
                Ok(Ok(n)) => {
                    *self.counted += n as u64;
                    self.read_size.after_read(n);
                }
                // Many clients close TLS without close_notify: that is a close, not a failure.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return CommandsEnd::Ended(RelayEnd::ClientClosed);
                }
                Ok(Err(e)) => return CommandsEnd::Ended(RelayEnd::ClientError(e.to_string())),
                Err(_) => {
                    let bye = b"* BYE Autologout; idle for too long\r\n".to_vec();
                    let _ = self.to_client.send(ToClient::Bye(bye, "autologout")).await;
                    return CommandsEnd::Handover;
                }
            }
        }
    }
}

impl Commands<'_> {
    /// Keeps track of what the quiet INBOX needs: IDLE running, INBOX selected.
    fn note_state(&self, name: &[u8], line: &[u8], intercepted: bool) {
        if name.eq_ignore_ascii_case(b"IDLE") {
            if let Some((tag, _)) = command::head(line) {
                self.link.idle_started(tag);
            }
        } else if name.eq_ignore_ascii_case(b"SELECT") || name.eq_ignore_ascii_case(b"EXAMINE") {
            let mailbox = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
            let mailbox = mailbox.split(|&b| b == b' ' || b == b'\r' || b == b'\n').next().unwrap_or_default();
            let inbox = mailbox.eq_ignore_ascii_case(b"INBOX") || mailbox.eq_ignore_ascii_case(b"\"INBOX\"");
            // An intercepted SELECT INBOX is a chat client's, which is shown Chats instead.
            self.link.set_inbox_selected(inbox && !intercepted);
        }
    }
}

/// Provider → client.
struct Responses<'a> {
    read: ReadHalf<Stream>,
    buf: BytesMut,
    framer: Framer,
    write: WriteHalf<Stream>,
    from_commands: mpsc::Receiver<ToClient>,
    opts: &'a RelayOptions,
    link: &'a Link,
    activity: &'a Activity,
    counted: &'a mut u64,
    quiet: Option<Quiet>,
    read_size: ReadSize,
}

impl Responses<'_> {
    async fn run(mut self, shutdown: &mut watch::Receiver<bool>) -> RelayEnd {
        let mut out = Output::default();
        let mut provider_said_bye = false;
        let mut shutting_down = *shutdown.borrow();
        // A response that belongs to an own command, being read whole.
        let mut capture: Option<Vec<u8>> = None;
        // The rest of a response that was held back is dropped too.
        let mut dropping = false;
        loop {
            if shutting_down && self.framer.at_message_start() {
                let _ = write_flush(&mut self.write, b"* BYE coi-proxy is shutting down\r\n").await;
                return RelayEnd::Shutdown;
            }
            self.read_size.prepare(&mut self.buf);
            let quiet_deadline = self.quiet.as_ref().and_then(Quiet::deadline);
            let timeout = self.opts.provider_timeout;
            let now = tokio::time::Instant::now();
            let silent_until = Some(self.activity.last() + timeout).filter(|&d| d > now).unwrap_or(now + timeout);
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(silent_until) => {
                    if self.link.waiting_for_provider() && self.activity.last().elapsed() >= timeout {
                        if self.framer.at_message_start() {
                            let bye = format!(
                                "* BYE [UNAVAILABLE] The provider did not answer for {} seconds; timed out\r\n",
                                timeout.as_secs()
                            );
                            let _ = write_flush(&mut self.write, bye.as_bytes()).await;
                        }
                        return RelayEnd::Bye("the provider timed out");
                    }
                }
                _ = async {
                    match (quiet_deadline, self.quiet.as_mut()) {
                        (Some(deadline), Some(quiet)) => {
                            let verdicts = quiet.verdicts();
                            tokio::select! {
                                _ = tokio::time::sleep_until(deadline.into()) => {}
                                _ = verdicts.changed() => {}
                            }
                        }
                        _ => std::future::pending().await,
                    }
                }, if self.framer.at_message_start() => {
                    let release = self.quiet.as_mut().and_then(|q| q.poll(std::time::Instant::now()));
                    if let Some(exists) = release
                        && let Err(e) = write_flush(&mut self.write, &exists).await
                    {
                        return RelayEnd::ClientError(e.to_string());
                    }
                }
                msg = self.from_commands.recv(), if self.framer.at_message_start() => match msg {
                    Some(ToClient::Response(bytes)) => {
                        if let Err(e) = write_flush(&mut self.write, &bytes).await {
                            return RelayEnd::ClientError(e.to_string());
                        }
                    }
                    Some(ToClient::IdleDone(bytes)) => {
                        let held = self.quiet.as_mut().and_then(Quiet::release).unwrap_or_default();
                        if let Err(e) = write_flush(&mut self.write, &[held, bytes].concat()).await {
                            return RelayEnd::ClientError(e.to_string());
                        }
                    }
                    Some(ToClient::Bye(bytes, why)) => {
                        let _ = write_flush(&mut self.write, &bytes).await;
                        return RelayEnd::Bye(why);
                    }
                    None => return RelayEnd::ClientClosed,
                },
                _ = shutdown.changed(), if !shutting_down => shutting_down = true,
                read = self.read.read_buf(&mut self.buf) => {
                    let n = match read {
                        Ok(0) => {
                            if !provider_said_bye && self.framer.at_message_start() {
                                let _ = write_flush(&mut self.write, b"* BYE [UNAVAILABLE] The provider closed the connection\r\n").await;
                            }
                            return RelayEnd::ProviderClosed;
                        }
                        Ok(n) => n,
                        Err(e) => {
                            if self.framer.at_message_start() {
                                let bye = format!("* BYE [UNAVAILABLE] Lost the connection to the provider: {e}\r\n");
                                let _ = write_flush(&mut self.write, bye.as_bytes()).await;
                            }
                            return RelayEnd::ProviderError(e.to_string());
                        }
                    };
                    *self.counted += n as u64;
                    self.read_size.after_read(n);
                    self.activity.touch();
                    let mut pos = 0;
                    while let Some(fragment) = self.framer.next(&self.buf[pos..]) {
                        let (start, len) = (pos, fragment_len(&fragment));
                        pos += len;
                        let bytes = &self.buf[start..pos];
                        crate::imap::wire::trace::provider_fragment(&fragment, bytes);
                        if let Some(captured) = capture.as_mut() {
                            captured.extend_from_slice(bytes);
                            if self.framer.at_message_start() {
                                self.link.deliver(OwnEvent::Untagged(capture.take().unwrap_or_default()), None);
                            }
                            continue;
                        }
                        if dropping {
                            dropping = !self.framer.at_message_start();
                            continue;
                        }
                        if let Fragment::Line { first: true, .. } = fragment {
                            if let Some(quiet) = self.quiet.as_mut() {
                                if bytes.starts_with(b"* ") {
                                    let allowed = self.link.idle_in_inbox() && self.opts.quiet.as_ref().is_some_and(|q| (q.active)());
                                    if quiet.on_untagged(bytes, allowed, std::time::Instant::now()) == Verdict::Drop {
                                        dropping = !self.framer.at_message_start();
                                        continue;
                                    }
                                } else if !bytes.starts_with(b"+") {
                                    let tag = &bytes[..bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len())];
                                    if self.link.is_idle_tag(tag) && let Some(exists) = quiet.release() {
                                        out.push(&self.buf, &exists);
                                    }
                                }
                            }
                            if let Some(routed) = self.route(bytes) {
                                match routed {
                                    Route::Drop => {}
                                    Route::Capture => {
                                        if self.framer.at_message_start() {
                                            self.link.deliver(OwnEvent::Untagged(bytes.to_vec()), None);
                                        } else {
                                            capture = Some(bytes.to_vec());
                                        }
                                    }
                                }
                                continue;
                            }
                            if bytes.starts_with(b"* BYE") {
                                provider_said_bye = true;
                            }
                            if let Some(rewritten) = capability::rewrite_response(bytes, &self.opts.extra_capabilities) {
                                out.push(&self.buf, &rewritten);
                                continue;
                            }
                        }
                        out.pass(&self.buf, start, pos);
                    }
                    if let Err(e) = out.write_to(&mut self.write, &self.buf[..pos]).await {
                        return RelayEnd::ClientError(e.to_string());
                    }
                    self.buf.advance(pos);
                }
            }
        }
    }

    /// Where the response starting with `line` goes if not to the client; keeps the count of
    /// client commands in flight.
    fn route(&self, line: &[u8]) -> Option<Route> {
        if line.starts_with(b"+") {
            if self.link.own_pending() {
                self.link.deliver(OwnEvent::Continuation, None);
                return Some(Route::Drop);
            }
            return None;
        }
        if line.starts_with(b"* ") {
            return self.link.captures(line).then_some(Route::Capture);
        }
        let tag = &line[..line.iter().position(|&b| b == b' ').unwrap_or(line.len())];
        if tag.starts_with(OWN_TAG_PREFIX.as_bytes()) {
            let status = line.get(tag.len() + 1..).unwrap_or_default().to_vec();
            self.link.deliver(OwnEvent::Status(status), Some(tag));
            return Some(Route::Drop);
        }
        self.link.completed(tag);
        None
    }
}

enum Route {
    Drop,
    Capture,
}

/// When bytes last went to or came from the provider. Sending counts too: a client uploading a
/// large literal slowly is not the provider's silence.
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: tokio::time::Instant::now(), last: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// Whether a command line is a STORE that changes `\Seen`.
fn touches_seen(line: &[u8]) -> bool {
    command::head_with_uid(line).is_some_and(|(_, name, _)| name.eq_ignore_ascii_case(b"STORE"))
        && line.windows(5).any(|w| w.eq_ignore_ascii_case(b"\\seen"))
}

fn fragment_len(f: &Fragment) -> usize {
    match *f {
        Fragment::Line { len, .. } | Fragment::LiteralData { len, .. } | Fragment::Overlong { len, .. } => len,
    }
}

/// Commands the proxy answers itself instead of relaying, with the answer.
fn refuse_command(line: &[u8]) -> Option<Vec<u8>> {
    let (tag, name) = command::head(line)?;
    let reply = if name.eq_ignore_ascii_case(b"COMPRESS") {
        "NO [CANNOT] COMPRESS is not available through coi-proxy"
    } else if name.eq_ignore_ascii_case(b"STARTTLS") {
        "BAD STARTTLS is only valid before login"
    } else {
        return None;
    };
    Some(tagged_or_untagged(tag, reply))
}

fn too_big(tag: &[u8], lit: Literal, max: u64) -> Vec<u8> {
    let status = if lit.sync { "NO" } else { "BAD" };
    tagged_or_untagged(tag, &format!("{status} [TOOBIG] Literal of {} bytes exceeds the limit of {max} bytes", lit.len))
}

fn tagged_or_untagged(tag: &[u8], text: &str) -> Vec<u8> {
    let tag: &[u8] = if tag.is_empty() { b"*" } else { tag };
    [tag, b" ", text.as_bytes(), b"\r\n"].concat()
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// What one pass over the read buffer sends on: a run of unchanged input is written straight
/// from the read buffer (no copy); only once something is rewritten or dropped is the output
/// assembled in a second buffer.
#[derive(Default)]
struct Output {
    assembled: Vec<u8>,
    /// Unchanged input bytes `start..end` of the read buffer, not yet copied anywhere.
    run: Option<(usize, usize)>,
}

impl Output {
    /// Sends `buf[start..end]` on unchanged.
    fn pass(&mut self, buf: &[u8], start: usize, end: usize) {
        match self.run {
            Some((s, e)) if e == start => self.run = Some((s, end)),
            Some((s, e)) => {
                // Something between the runs was dropped.
                self.assembled.extend_from_slice(&buf[s..e]);
                self.run = Some((start, end));
            }
            None => self.run = Some((start, end)),
        }
    }

    /// Sends `bytes` in place of the fragment just framed.
    fn push(&mut self, buf: &[u8], bytes: &[u8]) {
        if let Some((s, e)) = self.run.take() {
            self.assembled.extend_from_slice(&buf[s..e]);
        }
        self.assembled.extend_from_slice(bytes);
    }

    async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W, buf: &[u8]) -> std::io::Result<()> {
        let run = self.run.take();
        if self.assembled.is_empty() {
            return match run {
                Some((s, e)) => write_flush(w, &buf[s..e]).await,
                None => Ok(()),
            };
        }
        if let Some((s, e)) = run {
            self.assembled.extend_from_slice(&buf[s..e]);
        }
        let result = write_flush(w, &self.assembled).await;
        self.assembled.clear();
        result
    }
}
