//! The provider's side of the policy: what becomes of each response fragment.
//!
//! Most fragments are forwarded untouched (literal bytes always are, unless their response is
//! held or the proxy's own). Only the lines of a response are looked at, never its literals:
//! responses to the proxy's own commands are routed to it by their exact tag (or, untagged, by
//! what the command captures); the quiet INBOX may hold an untagged response back, a SELECT of
//! INBOX or a `STATUS INBOX` line until the worker has looked, and a client's tagged response
//! while either holds news; tagged responses complete the client's commands; FETCH lines that
//! report `\Seen` are news for read receipts; capability lists are rewritten.

use std::time::Instant;

use super::own::Tagged;
use super::settle::{Look, is_status_inbox};
use super::{CAPTURE_TOO_LARGE, CHARGE_STEP, Event, Keep, MAX_CAPTURE, Policy};
use crate::imap::session::quiet::{self, Quiet, Verdict};
use crate::imap::wire::capability;
use crate::imap::wire::framing::Fragment;

impl Policy {
    pub(super) fn provider_fragment(
        &mut self,
        fragment: Fragment,
        bytes: &[u8],
        now: Instant,
        before: &mut Vec<u8>,
    ) -> Keep {
        let complete = self.provider.at_message_start();
        if self.capture.is_some() {
            self.captured = self.captured.saturating_add(bytes.len());
            let fits = self.capture_fits();
            let captured = self.capture.as_mut().expect("checked above");
            if fits {
                captured.extend_from_slice(bytes);
            } else {
                // Too large to read whole (or no memory for it): dropped, and the command ends
                // as too large.
                *captured = Vec::new();
            }
            if complete {
                let response = self.capture.take().unwrap_or_default();
                if fits {
                    self.own_untagged(response);
                }
            }
            return Keep::Own;
        }
        if let Fragment::Line { first, .. } = fragment {
            if first {
                self.fetch_response = quiet::is_fetch(bytes);
            }
            if self.fetch_response && reports_seen(bytes) {
                self.seen_reported();
            }
        }
        if self.holding {
            self.holding = !complete;
            return Keep::Hold;
        }
        if self.collecting {
            // The rest of a held SELECT response (its literals, the lines after them).
            self.collecting = !complete;
            if let Some(look) = self.look.as_mut() {
                look.collect(bytes, false, now);
            }
            return Keep::Hold;
        }
        let Fragment::Line { first: true, .. } = fragment else { return Keep::Forward };
        // A response starts: what the proxy had to say meanwhile goes first.
        if !self.answers.is_empty() {
            before.extend(self.take_answers());
        }
        if let Some(keep) = self.route_own(bytes, complete, now) {
            return keep;
        }
        if self.opts.rescan {
            self.follow_selected(bytes);
        }
        if let Some(keep) = self.look_response(bytes, complete, now) {
            return keep;
        }
        if let Some(keep) = self.quiet_response(bytes, complete, now, before) {
            return keep;
        }
        if !bytes.starts_with(b"* ")
            && !bytes.starts_with(b"+")
            && let Some(keep) = self.client_tagged(bytes, complete, now)
        {
            return keep;
        }
        if bytes.starts_with(b"* BYE") {
            self.provider_said_bye = true;
        }
        match capability::rewrite_response(bytes, &self.opts.extra_capabilities) {
            Some(rewritten) => Keep::Replace(rewritten),
            None => Keep::Forward,
        }
    }

    /// How many of the provider's next bytes may go to the client unseen (the relay moves them
    /// socket to socket in the kernel): the rest of the literal in progress when it is
    /// forwarded as-is, else 0. Not while it is captured for an own command (decrypted views,
    /// the interceptor's reads: those are charged to the memory budget as they come), held or
    /// collected by the quiet INBOX, nor while the provider is not to be read. Literal bytes
    /// are otherwise never looked at (see `provider_fragment`), so passing them changes nothing
    /// else.
    pub fn provider_passthrough(&self) -> u64 {
        if self.capture.is_some() || self.holding || self.collecting || !self.reading_provider() {
            return 0;
        }
        self.provider.literal_left().unwrap_or(0)
    }

    /// Whether the provider is in the middle of a literal (else of a line, or between
    /// responses).
    pub fn provider_in_literal(&self) -> bool {
        self.provider.in_literal()
    }

    /// `n` bytes (at most [`Policy::provider_passthrough`]) went from the provider to the client
    /// unseen.
    pub fn provider_passed(&mut self, n: u64, now: Instant) {
        self.provider.pass_literal(n);
        self.activity = now;
    }

    /// Whether what the running own command captured so far (`captured`) may be kept: within
    /// [`MAX_CAPTURE`] and charged to the memory budget; once refused, the rest is dropped too.
    fn capture_fits(&mut self) -> bool {
        if self.captured > MAX_CAPTURE || self.capture_refused.is_some() {
            return false;
        }
        if let Some(charge) = self.capture_charge.as_mut()
            && let Err(e) = charge.cover(self.captured, CHARGE_STEP)
        {
            self.capture_refused = Some(e);
            return false;
        }
        true
    }

    /// Where a response starting with `line` goes if it is the proxy's own.
    fn route_own(&mut self, line: &[u8], complete: bool, now: Instant) -> Option<Keep> {
        if line.starts_with(b"+") {
            let piece = self.own.continuation()?;
            self.to_provider.extend(piece);
            return Some(Keep::Own);
        }
        if line.starts_with(b"* ") {
            if !self.own.captures(line) {
                return None;
            }
            self.captured = self.captured.saturating_add(line.len());
            let fits = self.capture_fits();
            if complete {
                if fits {
                    self.own_untagged(line.to_vec());
                }
            } else {
                self.capture = Some(if fits { line.to_vec() } else { Vec::new() });
            }
            return Some(Keep::Own);
        }
        let tag = first_word(line);
        match self.own.tagged(tag) {
            Tagged::Running(origin) => {
                let status = line.get(tag.len() + 1..).unwrap_or_default();
                let refused = self.capture_refused.take().map(|e| format!("NO [LIMIT] {e}; try again later\r\n"));
                let status = match &refused {
                    Some(text) => text.as_bytes(),
                    None if self.captured > MAX_CAPTURE => CAPTURE_TOO_LARGE,
                    None => status,
                };
                self.captured = 0;
                self.own_done(origin, status, now);
                if let Some(charge) = self.capture_charge.as_mut() {
                    charge.release();
                }
                Some(Keep::Own)
            }
            Tagged::Abandoned => Some(Keep::Own),
            Tagged::Client => None,
        }
    }

    /// A client's tagged response completes its command; it is held while the quiet INBOX
    /// holds news (the client's next command would see the held messages).
    fn client_tagged(&mut self, line: &[u8], complete: bool, now: Instant) -> Option<Keep> {
        let tag = first_word(line);
        let was_idle = self.commands.idle.as_deref() == Some(tag);
        self.completed(tag);
        if self.own.busy() {
            self.start_own(now);
        }
        let holds = self.quiet.as_ref().is_some_and(Quiet::holding) || self.look.is_some();
        if complete && (holds || !self.held_tagged.is_empty()) {
            self.held_tagged.extend_from_slice(line);
            self.settle_due = true;
            return Some(Keep::Hold);
        }
        if was_idle {
            // The end of IDLE: mailbox news deferred during it goes first.
            self.settle_due = true;
        }
        None
    }

    /// A SELECT of INBOX is held whole; a `STATUS INBOX` line until it is trusted.
    fn look_response(&mut self, line: &[u8], complete: bool, now: Instant) -> Option<Keep> {
        // A SELECT's response begins once the commands before it are answered.
        let in_flight = &self.commands.in_flight;
        if let Some(look) = self.look.as_mut()
            && look.collecting()
            && in_flight.len() == 1
            && look.tag_in(in_flight)
        {
            let tagged = look.ends_with(line);
            let next = look.collect(line, tagged, now);
            self.collecting = !complete;
            if tagged {
                self.completed(first_word(line));
            }
            if let Some(next) = next {
                self.look_next(next, now);
            }
            return Some(Keep::Hold);
        }
        if !complete || !is_status_inbox(line) || !self.quiet_active() {
            return None;
        }
        if let Some(look) = self.look.as_mut().filter(|l| l.is_status()) {
            look.add_status(line);
            return Some(Keep::Hold);
        }
        if self.look.is_some() {
            return None;
        }
        let verdicts = self.quiet.as_ref().map(Quiet::verdicts).unwrap_or_default();
        let sent = if self.commands.in_flight.is_empty() { verdicts } else { self.commands.sent };
        let look = Look::status(line, sent, now)?;
        self.look = Some(look);
        self.events.push_back(Event::WakeWorker);
        Some(Keep::Hold)
    }

    /// The quiet INBOX's say on a response starting with `line`: `Some` if it holds it back.
    /// The tagged end of the client's IDLE releases deferred mailbox news before it.
    fn quiet_response(&mut self, line: &[u8], complete: bool, now: Instant, before: &mut Vec<u8>) -> Option<Keep> {
        self.quiet.as_ref()?;
        if line.starts_with(b"* ") {
            // Asked only for untagged lines: it looks at the account's settings.
            let active = self.quiet_active();
            let quiet = self.quiet.as_mut()?;
            let c = &self.commands;
            let allowed = c.inbox_selected && active;
            let verdict = quiet.on_untagged(line, allowed, c.idle.is_some(), now);
            if quiet.take_growth() {
                self.events.push_back(Event::WakeWorker);
                self.settle_due = true;
            }
            if verdict == Verdict::Drop {
                self.holding = !complete;
                return Some(Keep::Hold);
            }
        } else if !line.starts_with(b"+")
            && self.commands.idle.as_deref() == Some(first_word(line))
            && let Some(quiet) = self.quiet.as_mut()
            && !quiet.holding()
            && let Some(news) = quiet.release()
        {
            before.extend(news);
        }
        None
    }

    /// What the provider tells the session of its selected mailbox (its count, the end of a
    /// SELECT), followed where its NOOP may miss mail.
    fn follow_selected(&mut self, line: &[u8]) {
        if line.starts_with(b"* ") {
            self.rescan.provider_untagged(line);
        } else if !line.starts_with(b"+") {
            let tag = first_word(line);
            let ok = line.get(tag.len() + 1..).is_some_and(|s| s.len() >= 2 && s[..2].eq_ignore_ascii_case(b"OK"));
            self.rescan.provider_tagged(tag, ok);
        }
    }

    /// Whether the quiet INBOX is in force now (the account's filter is `active`).
    pub(super) fn quiet_active(&self) -> bool {
        self.quiet.is_some() && self.opts.quiet.as_ref().is_some_and(|active| active())
    }
}

/// A tagged response's tag.
pub(super) fn first_word(line: &[u8]) -> &[u8] {
    &line[..line.iter().position(|&b| b == b' ').unwrap_or(line.len())]
}

/// Whether a line of a FETCH response reports FLAGS with `\Seen` and without `$MDNSent` (a
/// message handled for read receipts already is no news).
fn reports_seen(line: &[u8]) -> bool {
    let Some(at) = find_ci(line, b"FLAGS (") else { return false };
    let list = &line[at + 7..];
    let list = &list[..list.iter().position(|&b| b == b')').unwrap_or(list.len())];
    find_ci(list, b"\\Seen").is_some() && find_ci(list, b"$MDNSent").is_none()
}

fn find_ci(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_in_fetch_lines() {
        assert!(reports_seen(b"* 3 FETCH (FLAGS (\\Seen) BODY[] {12}\r\n"));
        assert!(reports_seen(b" FLAGS (\\Recent \\SEEN))\r\n"), "after a literal, any case");
        assert!(!reports_seen(b"* 3 FETCH (FLAGS (\\Seen $MDNSent))\r\n"), "handled already");
        assert!(!reports_seen(b"* 3 FETCH (FLAGS (\\Answered) UID 4)\r\n"));
        assert!(!reports_seen(b"* 3 FETCH (UID 4 BODY[] {5}\r\n"));
    }
}
