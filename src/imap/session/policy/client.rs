//! The client's side of the policy: what becomes of each command fragment.
//!
//! A command is relayed as it is framed, unless it is refused (STARTTLS, limits), answered by
//! the proxy (an IDLE the provider cannot serve, COMPRESS) or collected for the interceptor. Refusing a synchronizing literal goes through the framer
//! ([`Framer::refuse_literal`](crate::imap::wire::framing::Framer::refuse_literal)): the
//! client then sends neither it nor the rest of the command.

use std::time::Instant;

use super::settle::Look;
use super::{Answer, CHARGE_STEP, Compression, EmulatedIdle, Event, Keep, Mode, Policy, tagged_or_untagged};
use crate::imap::wire::command::{self, CommandName, Head};
use crate::imap::wire::framing::{Fragment, Literal};

/// Whether the interceptor takes a command (name, `UID`, a line of it) and up to how many bytes.
type Wants<'a> = dyn Fn(CommandName, bool, &[u8]) -> Option<usize> + 'a;

impl Policy {
    /// `head`: the command's head when the caller parsed it already (a lane does, to see whether
    /// the interceptor watches the command).
    pub(super) fn client_fragment(
        &mut self,
        fragment: Fragment,
        bytes: &[u8],
        head: Option<Head<'_>>,
        now: Instant,
        wants: &Wants<'_>,
    ) -> Keep {
        match fragment {
            Fragment::Line { first, literal, .. } => self.client_line(first, literal, bytes, head, now, wants),
            Fragment::LiteralData { .. } => match &mut self.current.mode {
                Mode::Discard => Keep::Discard,
                Mode::Collect { command, .. } => {
                    command.extend_from_slice(bytes);
                    Keep::Collect
                }
                Mode::Relay => Keep::Forward,
            },
            Fragment::Overlong { start, first, end, literal, .. } => {
                if start && !first {
                    self.end_with_bye(b"* BYE Command line too long\r\n".to_vec(), "command line too long", now);
                    return Keep::Discard;
                }
                if start {
                    self.current.tag = command::head(bytes).map(|(t, _)| t.to_vec()).unwrap_or_default();
                    self.current.name = None;
                    self.current.mode = Mode::Discard;
                    self.answer(&self.current.tag.clone(), "BAD Command line too long");
                }
                if end && literal.is_some_and(|l| l.sync) {
                    self.client.refuse_literal();
                }
                Keep::Discard
            }
        }
    }

    fn client_line(
        &mut self,
        first: bool,
        literal: Option<Literal>,
        bytes: &[u8],
        head: Option<Head<'_>>,
        now: Instant,
        wants: &Wants<'_>,
    ) -> Keep {
        if first {
            if let Some(keep) = self.emulated_idle_line(literal, bytes, now) {
                return keep;
            }
            self.command_start(bytes, head, literal, now, wants);
        }
        match self.current.mode {
            Mode::Discard => {
                if literal.is_some_and(|l| l.sync) {
                    self.client.refuse_literal();
                }
                Keep::Discard
            }
            Mode::Collect { .. } => self.collect_line(first, literal, bytes, wants),
            Mode::Relay => self.relay_line(first, literal, bytes, now),
        }
    }

    /// A line of a command for the interceptor: kept until the command is whole, within the
    /// interceptor's limit for it
    /// ([`MAX_INTERCEPTED`](crate::imap::wire::provider::MAX_INTERCEPTED) unless it said more)
    /// and within the memory budget.
    fn collect_line(&mut self, first: bool, literal: Option<Literal>, bytes: &[u8], wants: &Wants<'_>) -> Keep {
        let name = self.current.name;
        let Mode::Collect { command, limit, uid } = &mut self.current.mode else { return Keep::Discard };
        // A further literal (MULTIAPPEND): the interceptor may take more.
        if !first
            && literal.is_some()
            && let Some(more) = name.and_then(|name| wants(name, *uid, bytes))
        {
            *limit = (*limit).max(more);
        }
        let limit = *limit;
        let too_big = literal.is_some_and(|l| l.len > limit as u64) || command.len() + bytes.len() > limit;
        // The command so far and the literal it announces are charged before they are read.
        let needed = command.len() + bytes.len() + literal.map_or(0, |l| l.len as usize);
        let refused = match self.collect_charge.as_mut() {
            Some(charge) if !too_big => charge.cover(needed, CHARGE_STEP).err(),
            _ => None,
        };
        if too_big || refused.is_some() {
            let sync = literal.is_some_and(|l| l.sync);
            if sync {
                self.client.refuse_literal();
            }
            self.current.mode = Mode::Discard;
            if let Some(charge) = self.collect_charge.as_mut() {
                charge.release();
            }
            let status = if sync { "NO" } else { "BAD" };
            let text = match refused {
                Some(e) => format!("{status} [LIMIT] {e}; try again later"),
                None => format!("{status} [TOOBIG] Command too large"),
            };
            self.answer(&self.current.tag.clone(), &text);
            return Keep::Discard;
        }
        let Mode::Collect { command, .. } = &mut self.current.mode else { return Keep::Discard };
        command.extend_from_slice(bytes);
        match literal {
            None => {
                let command = std::mem::take(command);
                self.current.mode = Mode::Relay;
                self.intercepting = true;
                self.events.push_back(Event::Intercept(command));
            }
            Some(l) if l.sync => self.answers.push(Answer::Bytes(b"+ Ready for literal data\r\n".to_vec())),
            Some(_) => {}
        }
        Keep::Collect
    }

    /// A line of a relayed command: forwarded, unless it announces a literal over the limit.
    fn relay_line(&mut self, first: bool, literal: Option<Literal>, bytes: &[u8], now: Instant) -> Keep {
        let max = self.opts.max_literal;
        if let Some(lit) = literal.filter(|l| l.len > max) {
            if self.current.forwarded {
                // Part of the command is with the provider already: it cannot be taken back.
                let bye = format!("* BYE [TOOBIG] Literal of {} bytes exceeds the limit of {max} bytes\r\n", lit.len);
                self.end_with_bye(bye.into_bytes(), "literal too big", now);
                return Keep::Discard;
            }
            let status = if lit.sync { "NO" } else { "BAD" };
            let text = format!("{status} [TOOBIG] Literal of {} bytes exceeds the limit of {max} bytes", lit.len);
            self.answer(&self.current.tag.clone(), &text);
            if lit.sync {
                self.client.refuse_literal();
            } else {
                self.current.mode = Mode::Discard;
            }
            return Keep::Discard;
        }
        if first && !self.current.tag.is_empty() {
            if self.commands.in_flight.is_empty() {
                self.commands.sent = self.quiet.as_ref().map(|q| q.verdicts()).unwrap_or_default();
            }
            let entry = self.commands.in_flight.entry(&self.current.tag);
            entry.count += 1;
            let name = self.current.name;
            entry.stores_seen |= name == Some(CommandName::Store) && touches_seen(bytes);
            entry.fetches_flags |= name == Some(CommandName::Fetch) && fetches_flags_only(bytes);
            crate::metrics::COMMANDS_RELAYED.inc();
        }
        self.current.forwarded = true;
        Keep::Forward
    }

    /// The first line of a message while the proxy serves IDLE ends it, and the start of an
    /// IDLE it must serve. `None` for any other line.
    fn emulated_idle_line(&mut self, literal: Option<Literal>, bytes: &[u8], now: Instant) -> Option<Keep> {
        if let Some(idle) = self.emulated_idle.take() {
            // Only DONE may come during IDLE (RFC 2177).
            let done = bytes.trim_ascii().eq_ignore_ascii_case(b"DONE");
            let text = if done { "OK Idle completed." } else { "BAD Expected DONE" };
            let end = tagged_or_untagged(&idle.tag, text);
            self.completed(&idle.tag);
            if self.settling() {
                // News is held: the end of IDLE waits for it.
                self.held_tagged.extend(end);
                self.settle(now);
            } else {
                self.answers.push(Answer::IdleEnd(end));
            }
            self.current.mode = Mode::Discard;
            self.client_clock = now;
            if literal.is_some_and(|l| l.sync) {
                self.client.refuse_literal();
            }
            return Some(Keep::Discard);
        }
        let interval = self.opts.emulate_idle?;
        let head = Head::parse(bytes).filter(|h| h.is(CommandName::Idle) && literal.is_none())?;
        self.commands.idle = Some(head.tag.to_vec());
        self.commands.idle_done = false;
        self.emulated_idle = Some(EmulatedIdle { tag: head.tag.to_vec(), next_poll: now + interval });
        self.answers.push(Answer::Bytes(b"+ idling\r\n".to_vec()));
        self.current.mode = Mode::Discard;
        Some(Keep::Discard)
    }

    /// A new command starts with `line`: what is to become of it, and what it tells about
    /// the session (IDLE running, INBOX selected, the quiet INBOX in force).
    fn command_start(
        &mut self,
        line: &[u8],
        head: Option<Head<'_>>,
        literal: Option<Literal>,
        now: Instant,
        wants: &Wants<'_>,
    ) {
        self.current.mode = Mode::Relay;
        self.current.forwarded = false;
        // The head is read once per command; later steps use what `current` keeps of it.
        let head = head.or_else(|| Head::parse(line));
        self.current.tag.clear();
        self.current.tag.extend_from_slice(head.map(|h| h.tag).unwrap_or_default());
        self.current.name = head.map(|h| h.name);
        let Some(head) = head else {
            if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                self.commands.idle_done = self.commands.idle.is_some();
            }
            return;
        };
        let collect = wants(head.name, head.uid, line);
        let intercepted = collect.is_some();
        if head.is(CommandName::Idle) {
            self.commands.idle = Some(head.tag.to_vec());
            self.commands.idle_done = false;
        } else if head.is(CommandName::Select) || head.is(CommandName::Examine) {
            // An intercepted SELECT INBOX is a chat client's, which is shown Chats instead.
            self.commands.inbox_selected = selects_inbox(line) && !intercepted;
            // The counts the client knows are of the mailbox it leaves: the new one's EXISTS
            // and RECENT are news however they compare (imaptest's `select`: EXAMINE, CLOSE,
            // SELECT of the same mailbox must show `* n RECENT` both times).
            if let Some(quiet) = self.quiet.as_mut() {
                quiet.reset();
            }
        }
        if head.is(CommandName::Compress) && self.opts.compress {
            self.current.mode = Mode::Discard;
            self.compress(head.tag, line);
        } else if let Some(refusal) = refusal(head) {
            self.current.mode = Mode::Discard;
            self.answer(head.tag, refusal);
            return;
        }
        if self.opts.rescan {
            let name = if head.uid { CommandName::Other } else { head.name };
            self.rescan.client_command(head.tag, name, line, literal.is_some(), intercepted);
        }
        if let Some(limit) = collect {
            self.current.mode = Mode::Collect { command: Vec::new(), limit, uid: head.uid };
            return;
        }
        // Under `active`, a plain client's commands in INBOX, and those that count INBOX's
        // messages from elsewhere, go one at a time: their answers may wait for the worker.
        let quiet = self.quiet.as_ref().filter(|_| self.opts.quiet.as_ref().is_some_and(|active| active()));
        let Some(verdicts) = quiet.map(|q| q.verdicts()) else {
            self.commands.serial = false;
            return;
        };
        let selects_inbox = (head.is(CommandName::Select) || head.is(CommandName::Examine)) && selects_inbox(line);
        let counts = head.is(CommandName::Status) || (head.is(CommandName::List) && contains_ci(line, b"STATUS"));
        self.commands.serial = self.commands.inbox_selected || counts;
        if selects_inbox && literal.is_none() && verdicts.watching {
            let command = &line[head.tag.len() + 1..];
            self.look = Some(Look::select(head.tag, command, verdicts, now));
        }
    }

    /// `COMPRESS <mechanism>` (RFC 4978), which the proxy serves itself: DEFLATE once.
    fn compress(&mut self, tag: &[u8], line: &[u8]) {
        let mechanism = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default().trim_ascii();
        if self.compression != Compression::Off {
            self.answer(tag, "NO [COMPRESSIONACTIVE] DEFLATE is already active");
        } else if !mechanism.eq_ignore_ascii_case(b"DEFLATE") {
            self.answer(tag, "BAD Only COMPRESS DEFLATE is supported");
        } else {
            self.compression = Compression::Answering;
            self.answers.push(Answer::Compress(tagged_or_untagged(tag, "OK DEFLATE active")));
        }
    }

    /// A response the proxy makes itself, tagged with `tag`.
    fn answer(&mut self, tag: &[u8], text: &str) {
        self.answers.push(Answer::Bytes(tagged_or_untagged(tag, text)));
    }
}

/// Commands the proxy answers itself instead of relaying, with the answer.
fn refusal(head: Head) -> Option<&'static str> {
    if head.is(CommandName::Compress) {
        Some("NO [CANNOT] COMPRESS is not available through coi-proxy")
    } else if head.is(CommandName::Starttls) {
        Some("BAD STARTTLS is only valid before login")
    } else {
        None
    }
}

/// Whether a SELECT or EXAMINE line names INBOX.
fn selects_inbox(line: &[u8]) -> bool {
    let mailbox = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
    let mailbox = mailbox.split(|&b| b == b' ' || b == b'\r' || b == b'\n').next().unwrap_or_default();
    mailbox.eq_ignore_ascii_case(b"INBOX") || mailbox.eq_ignore_ascii_case(b"\"INBOX\"")
}

/// Whether a STORE (or UID STORE) command line changes `\Seen`.
fn touches_seen(line: &[u8]) -> bool {
    contains_ci(line, b"\\seen")
}

/// Whether a FETCH (or UID FETCH) command line reads no body without PEEK: the `\Seen` in the
/// FLAGS it returns is the client's old news. A FETCH of `BODY[…]`, `BINARY[…]`, `RFC822` or
/// `RFC822.TEXT` sets `\Seen`.
fn fetches_flags_only(line: &[u8]) -> bool {
    let upper = line.to_ascii_uppercase();
    // (item, whether what follows it must not continue a name: `RFC822` is not `RFC822.SIZE`)
    let items: [(&[u8], bool); 4] = [(b"BODY[", false), (b"BINARY[", false), (b"RFC822.TEXT", true), (b"RFC822", true)];
    let sets_seen = items.iter().any(|&(item, whole)| {
        memchr::memmem::find_iter(&upper, item).any(|at| {
            let before = if at == 0 { b' ' } else { upper[at - 1] };
            let after = upper.get(at + item.len()).copied().unwrap_or(b' ');
            let starts = !before.is_ascii_alphanumeric() && before != b'.';
            starts && (!whole || !(after.is_ascii_alphanumeric() || after == b'.'))
        })
    });
    !sets_seen
}

fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}
