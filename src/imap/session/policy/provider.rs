//! The provider's side of the policy: what becomes of each response fragment.
//!
//! Most fragments are forwarded untouched (literal bytes always are, unless their response is
//! held or the proxy's own). Only the first line of a response is looked at: the quiet INBOX
//! may hold an untagged one back, responses to the proxy's own commands are routed to it by
//! their exact tag (or, untagged, by what the command captures), tagged responses complete
//! the client's commands, and capability lists are rewritten.

use std::time::Instant;

use super::own::Tagged;
use super::{Keep, Policy};
use crate::imap::session::quiet::Verdict;
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
        if let Some(captured) = self.capture.as_mut() {
            captured.extend_from_slice(bytes);
            if complete {
                let response = self.capture.take().unwrap_or_default();
                self.own_untagged(response);
            }
            return Keep::Own;
        }
        if self.holding {
            self.holding = !complete;
            return Keep::Hold;
        }
        let Fragment::Line { first: true, .. } = fragment else { return Keep::Forward };
        // A response starts: what the proxy had to say meanwhile goes first.
        if !self.answers.is_empty() {
            before.extend(self.take_answers());
        }
        if let Some(keep) = self.quiet_response(bytes, complete, now, before) {
            return keep;
        }
        if let Some(keep) = self.route(bytes, complete, now) {
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

    /// Where a response starting with `line` goes if it is the proxy's own; a client's tagged
    /// response completes its command.
    fn route(&mut self, line: &[u8], complete: bool, now: Instant) -> Option<Keep> {
        if line.starts_with(b"+") {
            let piece = self.own.continuation()?;
            self.to_provider.extend(piece);
            return Some(Keep::Own);
        }
        if line.starts_with(b"* ") {
            if !self.own.captures(line) {
                return None;
            }
            if complete {
                self.own_untagged(line.to_vec());
            } else {
                self.capture = Some(line.to_vec());
            }
            return Some(Keep::Own);
        }
        let tag = first_word(line);
        match self.own.tagged(tag) {
            Tagged::Running(origin) => {
                let status = line.get(tag.len() + 1..).unwrap_or_default();
                self.own_done(origin, status, now);
                Some(Keep::Own)
            }
            Tagged::Abandoned => Some(Keep::Own),
            Tagged::Client => {
                self.completed(tag);
                if self.own.busy() {
                    self.start_own(now);
                }
                None
            }
        }
    }

    /// The quiet INBOX's say on a response starting with `line`: `Some` if it holds it back.
    /// The tagged end of the client's IDLE releases what is held, before it.
    fn quiet_response(&mut self, line: &[u8], complete: bool, now: Instant, before: &mut Vec<u8>) -> Option<Keep> {
        let quiet = self.quiet.as_mut()?;
        if line.starts_with(b"* ") {
            let c = &self.commands;
            let allowed =
                c.idle.is_some() && c.inbox_selected && self.opts.quiet.as_ref().is_some_and(|active| active());
            if quiet.on_untagged(line, allowed, now) == Verdict::Drop {
                self.holding = !complete;
                return Some(Keep::Hold);
            }
        } else if !line.starts_with(b"+")
            && self.commands.idle.as_deref() == Some(first_word(line))
            && let Some(held) = quiet.release()
        {
            before.extend(held);
        }
        None
    }
}

/// A tagged response's tag.
fn first_word(line: &[u8]) -> &[u8] {
    &line[..line.iter().position(|&b| b == b' ').unwrap_or(line.len())]
}
