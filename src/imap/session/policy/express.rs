//! Express input: what a relay lane may send on before the policy has framed and judged it.
//!
//! A lane (`session/lane.rs`) holds a session only in its plain state
//! ([`Policy::lane_ready`]), where most input is one ordinary line that the policy forwards
//! unchanged and only records (a command's tag in flight, a tagged response completing it).
//! For such a line the decision is known from a glance, and the lane writes the line at once;
//! the policy then frames and records it the usual way (`*_expressed`), after the peer has the
//! bytes instead of before (a NOOP's round trip through the proxy is shorter by that much).
//!
//! Each glance answers "the policy forwards all of `buf` unchanged, as one fragment, with
//! nothing before it", and must never say so wrongly: `*_expressed` report whether the policy
//! did (the lane closes the session if not), and the `relay_policy` fuzz target checks every
//! glance against the policy's steps. So each glance is conservative: a line it is unsure of
//! is framed first, as any other input.

use std::time::Instant;

use super::provider::first_word;
use super::{Keep, Policy};
use crate::imap::wire::command::{CommandName, Head};
use crate::imap::wire::framing::Fragment;

/// A client line a lane may send ahead, with its command head (parsed once for both steps).
pub struct ClientExpress<'a>(Option<Head<'a>>);

impl Policy {
    /// Whether a lane may send the client's `buf` to the provider before framing it: one
    /// whole command line without a literal, of a command the interceptor does not watch and
    /// the policy relays as it is (it answers IDLE, COMPRESS and STARTTLS itself at times).
    /// For a lane-ready session only.
    pub fn client_express<'a>(
        &self,
        buf: &'a [u8],
        watched: impl Fn(CommandName, bool) -> bool,
    ) -> Option<ClientExpress<'a>> {
        debug_assert!(self.lane_ready());
        // An IDLE in flight changes what DONE and the next command mean.
        if self.commands.idle.is_some() || !self.client.whole_line(buf) {
            return None;
        }
        // A line without a command head (garbage, a stray DONE) is relayed for the provider
        // to refuse, as the policy does.
        let head = Head::parse(buf);
        let relayed = head.is_none_or(|head| {
            !watched(head.name, head.uid)
                && !matches!(head.name, CommandName::Idle | CommandName::Compress | CommandName::Starttls)
        });
        relayed.then_some(ClientExpress(head))
    }

    /// The client's `line`, sent ahead, framed and recorded as [`Policy::client_input_lane`]
    /// would. Whether the policy forwarded it unchanged (if not, what went out was wrong).
    pub fn client_expressed(&mut self, line: &[u8], express: ClientExpress<'_>, now: Instant) -> bool {
        let fragment = self.client.next(line);
        if fragment != Some(whole(line)) {
            return false;
        }
        self.activity = now;
        self.client_fragment(whole(line), line, express.0, now, &|_, _, _| None) == Keep::Forward
    }

    /// Whether a lane may send the provider's `buf` to the client before framing it: one
    /// whole tagged line without a literal or a response code (where capabilities are
    /// rewritten), completing a command of the client's, not of the proxy's own. For a
    /// lane-ready session only.
    pub fn provider_express(&self, buf: &[u8]) -> bool {
        debug_assert!(self.lane_ready());
        // The tagged end of an IDLE may release news held back before it.
        if self.commands.idle.is_some()
            || !self.reading_provider()
            || matches!(buf.first(), Some(b'*' | b'+'))
            || !self.provider.whole_line(buf)
        {
            return false;
        }
        let tag = first_word(buf);
        !has_response_code(&buf[tag.len()..]) && !self.own.owns(tag)
    }

    /// The provider's `line`, sent ahead, framed and recorded as [`Policy::provider_input`]
    /// would. Whether the policy forwarded it unchanged with nothing before it.
    pub fn provider_expressed(&mut self, line: &[u8], now: Instant) -> bool {
        let fragment = self.provider.next(line);
        if fragment != Some(whole(line)) {
            return false;
        }
        let (before, keep) = self.provider_step(whole(line), line, now);
        keep == Keep::Forward && before.is_empty()
    }
}

/// `line` as one fragment: a whole first line announcing no literal.
fn whole(line: &[u8]) -> Fragment {
    Fragment::Line { len: line.len(), first: true, literal: None }
}

/// Whether the rest of a tagged line after its tag (` OK [CODE] text`) has a response code:
/// the only place a status line's capabilities are (`capability::find_in_response`).
fn has_response_code(rest: &[u8]) -> bool {
    let Some(status) = rest.strip_prefix(b" ") else { return false };
    let Some(sp) = status.iter().position(|&b| b == b' ') else { return false };
    status.get(sp + 1) == Some(&b'[')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_code_is_after_the_status_word() {
        assert!(has_response_code(b" OK [CAPABILITY IMAP4rev1] Logged in\r\n"));
        assert!(has_response_code(b" NO [TRYCREATE] No such mailbox\r\n"));
        assert!(!has_response_code(b" OK NOOP completed [sic]\r\n"));
        assert!(!has_response_code(b" OK\r\n"));
        assert!(!has_response_code(b""));
    }
}
