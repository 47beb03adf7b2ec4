//! The proxy's own commands on a client's provider connection, as the policy sees them.
//!
//! An own command waits until the client commands already relayed are answered (so untagged
//! responses cannot be mistaken for each other; at most [`DRAIN_TIMEOUT`]), then goes out
//! under a tag of the proxy's that no relayed client command in flight carries, in pieces up
//! to each synchronizing literal (the next piece follows the provider's `+`). Responses are
//! routed by that exact tag, so a client is free to use any tag, `coip1` included. A command
//! whose requester gave up stays known until its tagged response, which is then dropped.

use std::time::{Duration, Instant};

use super::rescan::Next;
use super::{Answer, Event, Policy};
use crate::imap::session::quiet::Verdict;
use crate::imap::upstream::OWN_TAG_PREFIX;
use crate::imap::wire::framing::{Fragment, Framer};

/// How long an own command waits for relayed client commands to finish before going ahead.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Who asked for an own command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The interceptor, which gets the responses as [`Event`]s.
    Interceptor,
    /// The emulated IDLE's poll: the tagged status is dropped, untagged responses go to the
    /// client.
    Poll,
    /// The quiet INBOX asks for the EXPUNGEs of moved messages (a NOOP), as `Poll`.
    Settle,
    /// A held answer's command run again; its captured responses replace the answer.
    Rerun,
    /// A step of the emulated IDLE's look for mail NOOP missed (`rescan.rs`).
    Rescan,
}

#[derive(Debug)]
struct Queued {
    command: Vec<u8>,
    capture: &'static [&'static [u8]],
    origin: Origin,
    /// Goes out at the latest then, even with client commands unanswered.
    drain_deadline: Instant,
}

#[derive(Debug)]
struct Running {
    tag: Vec<u8>,
    capture: &'static [&'static [u8]],
    origin: Origin,
    /// What is still to be sent after the provider's `+`.
    rest: Vec<u8>,
    framer: Framer,
    /// Sent up to a synchronizing literal; waiting for `+`.
    waiting: bool,
}

/// The own command queued or on the wire, and those given up on.
#[derive(Debug, Default)]
pub(super) struct Own {
    next_tag: u64,
    queued: Option<Queued>,
    running: Option<Running>,
    /// Tags of commands whose requester gave up, until their tagged response.
    abandoned: Vec<Vec<u8>>,
}

/// Whose tagged response a line is.
pub(super) enum Tagged {
    /// The running own command's: it is complete.
    Running(Origin),
    /// One given up on.
    Abandoned,
    /// Not the proxy's: the client's.
    Client,
}

impl Own {
    /// An own command waits or runs; client commands wait meanwhile.
    pub fn busy(&self) -> bool {
        self.queued.is_some() || self.running.is_some()
    }

    pub fn request(&mut self, command: Vec<u8>, capture: &'static [&'static [u8]], origin: Origin, now: Instant) {
        // The requester works one command at a time: a new request means it gave up on the last.
        if self.running.as_ref().is_some_and(|r| r.origin == origin) {
            self.abandon_running();
        }
        self.queued = Some(Queued { command, capture, origin, drain_deadline: now + DRAIN_TIMEOUT });
    }

    /// The interceptor is done: whatever it still had pending is given up.
    pub fn abandon(&mut self) {
        if self.queued.as_ref().is_some_and(|q| q.origin == Origin::Interceptor) {
            self.queued = None;
        }
        if self.running.as_ref().is_some_and(|r| r.origin == Origin::Interceptor) {
            self.abandon_running();
        }
    }

    fn abandon_running(&mut self) {
        if let Some(running) = self.running.take() {
            self.abandoned.push(running.tag);
        }
    }

    /// When the queued command goes out at the latest (once none is running).
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.queued.as_ref().filter(|_| self.running.is_none()).map(|q| q.drain_deadline)
    }

    /// Who asked for the running command.
    pub fn running_origin(&self) -> Option<Origin> {
        self.running.as_ref().map(|r| r.origin)
    }

    /// Whether an untagged response starting with `line` belongs to the running command.
    pub fn captures(&self, line: &[u8]) -> bool {
        self.running.as_ref().is_some_and(|r| crate::imap::wire::provider::captures(r.capture, line))
    }

    /// Whether a tagged response with `tag` is the proxy's ([`Own::tagged`] without taking it).
    pub fn owns(&self, tag: &[u8]) -> bool {
        self.running.as_ref().is_some_and(|r| r.tag == tag) || self.abandoned.iter().any(|t| t == tag)
    }

    /// Whose tagged response carries `tag`; an own one is done with.
    pub fn tagged(&mut self, tag: &[u8]) -> Tagged {
        if let Some(running) = &self.running
            && running.tag == tag
        {
            let origin = running.origin;
            self.running = None;
            return Tagged::Running(origin);
        }
        if let Some(i) = self.abandoned.iter().position(|t| t == tag) {
            self.abandoned.swap_remove(i);
            return Tagged::Abandoned;
        }
        Tagged::Client
    }

    /// The provider sent `+`: whether it was for the running command (then the next piece,
    /// if it waited for one).
    pub fn continuation(&mut self) -> Option<Vec<u8>> {
        let running = self.running.as_mut()?;
        Some(if running.waiting { running.next_piece() } else { Vec::new() })
    }
}

impl Running {
    /// The bytes up to and including the next synchronizing literal announcement, or all.
    fn next_piece(&mut self) -> Vec<u8> {
        let mut n = 0;
        self.waiting = false;
        while let Some(fragment) = self.framer.next(&self.rest[n..]) {
            n += fragment.len();
            if let Fragment::Line { literal: Some(l), .. } = fragment
                && l.sync
            {
                self.waiting = true;
                break;
            }
        }
        if !self.waiting {
            n = self.rest.len();
        }
        self.rest.drain(..n).collect()
    }
}

impl Policy {
    /// Sends the queued own command if the client's relayed commands are answered, or have
    /// had long enough.
    pub(super) fn start_own(&mut self, now: Instant) {
        let Some(queued) = &self.own.queued else { return };
        if self.own.running.is_some() {
            return;
        }
        if !self.commands.in_flight.is_empty() {
            if now < queued.drain_deadline {
                return;
            }
            tracing::debug!("relayed commands still unanswered; sending the proxy's command anyway");
        }
        let Some(queued) = self.own.queued.take() else { return };
        let tag = loop {
            self.own.next_tag += 1;
            let tag = format!("{OWN_TAG_PREFIX}s{}", self.own.next_tag).into_bytes();
            if !self.commands.in_flight.contains_key(&tag) && !self.own.abandoned.contains(&tag) {
                break tag;
            }
        };
        let mut running = Running {
            tag,
            capture: queued.capture,
            origin: queued.origin,
            rest: queued.command,
            framer: Framer::new(usize::MAX / 2),
            waiting: false,
        };
        self.captured = 0;
        // Nothing of an earlier (abandoned) own command stays charged or refused.
        self.capture_refused = None;
        if let Some(charge) = self.capture_charge.as_mut() {
            charge.release();
        }
        self.to_provider.extend_from_slice(&running.tag);
        self.to_provider.push(b' ');
        self.to_provider.extend(running.next_piece());
        self.own.running = Some(running);
        self.activity = now;
    }

    /// Acts on what the rescan's step that ended comes to.
    fn rescan_next(&mut self, ok: bool, now: Instant) {
        match self.rescan.done(ok) {
            Next::Done => {}
            Next::Run(command, capture) => self.own.request(command, capture, Origin::Rescan, now),
            Next::Tell(lines) => {
                tracing::debug!("the provider's NOOP missed new mail; told after selecting the mailbox again");
                for line in lines {
                    self.tell_news(line, now);
                }
                self.settle_due = true;
            }
            Next::Lost => self.end_with_bye(
                b"* BYE [UNAVAILABLE] The provider would not select the mailbox again; please reconnect\r\n".to_vec(),
                "the provider would not select the mailbox again",
                now,
            ),
        }
    }

    /// Mailbox news the proxy found itself, on its way to the client as the provider's would
    /// go: the quiet INBOX may hold it.
    fn tell_news(&mut self, line: Vec<u8>, now: Instant) {
        let active = self.quiet_active();
        if let Some(quiet) = self.quiet.as_mut() {
            let c = &self.commands;
            let verdict = quiet.on_untagged(&line, c.inbox_selected && active, c.idle.is_some(), now);
            if quiet.take_growth() {
                self.events.push_back(Event::WakeWorker);
            }
            if verdict == Verdict::Drop {
                return;
            }
        }
        self.answers.push(Answer::Bytes(line));
    }

    /// An untagged response the running own command captures, whole.
    pub(super) fn own_untagged(&mut self, response: Vec<u8>) {
        match self.own.running_origin() {
            Some(Origin::Rerun) => {
                if let Some(look) = self.look.as_mut() {
                    look.rerun_untagged(&response);
                }
            }
            Some(Origin::Rescan) => self.rescan.untagged(&response),
            _ => self.events.push_back(Event::OwnUntagged(response)),
        }
    }

    /// The tagged status of an own command; `status` is the line after the tag.
    pub(super) fn own_done(&mut self, origin: Origin, status: &[u8], now: Instant) {
        match origin {
            Origin::Interceptor => self.events.push_back(Event::OwnStatus(status.to_vec())),
            Origin::Poll => {
                let interval = self.opts.emulate_idle.unwrap_or(Duration::from_secs(10));
                if let Some(idle) = self.emulated_idle.as_mut() {
                    idle.next_poll = now + interval;
                }
                self.settle_due = true;
                if self.opts.rescan
                    && self.emulated_idle.is_some()
                    && let Some((command, capture)) = self.rescan.start()
                {
                    self.own.request(command, capture, Origin::Rescan, now);
                }
            }
            Origin::Rescan => {
                let ok = status.len() >= 2 && status[..2].eq_ignore_ascii_case(b"OK");
                self.rescan_next(ok, now);
            }
            Origin::Settle => self.settle_due = true,
            Origin::Rerun => {
                if let Some(look) = self.look.as_mut() {
                    let next = look.rerun_done(status, now);
                    self.look_next(next, now);
                }
            }
        }
        self.client_clock = now;
        self.start_own(now);
    }
}
