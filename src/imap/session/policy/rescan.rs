//! New mail a provider's NOOP does not report, found and told anyway by the IDLE the proxy
//! serves.
//!
//! GNU imap4d (mailutils 3.15) rescans a Maildir for a session only when the directory's mtime
//! changed, in whole seconds, since that session's last scan (`amd_is_updated`); a message
//! delivered in the same second as the scan is never reported by NOOP, until some later change
//! in another second. STATUS opens the mailbox afresh and counts it right. So where the
//! profile says NOOP may miss mail, each poll of the emulated IDLE also asks
//! `STATUS <mailbox> (MESSAGES)`; when the provider holds another number of messages than it
//! told the session (more: mail NOOP missed; fewer: another session's EXPUNGE it missed), the
//! session selects the mailbox again (the way the client did: SELECT or EXAMINE)
//! between two `UID SEARCH ALL`, and the client hears the difference as IDLE would have told
//! it: an EXPUNGE for each message gone, then EXISTS and RECENT. Nothing else of the
//! re-selection reaches the client (no FLAGS, no UIDVALIDITY: imap4d renews that one on a
//! rescan while the UIDs stay), and what the session changed persists (imap4d writes a
//! mailbox's flags when it is closed, `\Deleted` included; measured). The NOOP just before it
//! took whatever the session had to say. What is not told: flags other sessions changed
//! (imap4d reports them only at a rescan of its own, comparing with what it last told; a
//! re-selection starts that comparison afresh, so such a change made before it is never
//! reported to this session; a client sees it at its next SELECT).
//!
//! Sans-I/O: the policy tells it the client's SELECT/EXAMINE, CLOSE and UNSELECT and the
//! provider's responses; it says which command to run next and what to tell the client.

use super::CommandName;
use crate::imap::session::quiet::{Kind, numbered};
use crate::imap::wire::command::{self, Arg};

/// The untagged responses each step reads.
const CAPTURE_STATUS: &[&[u8]] = &[b"* STATUS"];
const CAPTURE_SEARCH: &[&[u8]] = &[b"* SEARCH"];
/// A re-selection's responses are all the proxy's (none of them reaches the client as is).
const CAPTURE_ALL: &[&[u8]] = &[b"* "];

/// The mailbox the client has selected, as the provider's session knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selected {
    /// `SELECT "name"` or `EXAMINE "name"` (the mailbox encoded for the provider).
    select: Vec<u8>,
    /// The mailbox as a STATUS argument.
    mailbox: Vec<u8>,
    /// The message count the provider told the session (EXISTS, less the EXPUNGEs since).
    exists: Option<u32>,
}

/// Where a rescan is.
#[derive(Debug)]
enum Step {
    /// `STATUS (MESSAGES)` is running.
    Status { messages: Option<u32> },
    /// The session's view before: `UID SEARCH ALL`.
    Before { uids: Option<Vec<u32>> },
    /// The mailbox selected again.
    Reselect { before: Vec<u32>, recent: Option<u32> },
    /// The view after: `UID SEARCH ALL` again.
    After { before: Vec<u32>, recent: Option<u32>, uids: Option<Vec<u32>> },
}

/// What the policy does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing (more) to do.
    Done,
    /// Run this command (with its CRLF) as the proxy's own, capturing these responses.
    Run(Vec<u8>, &'static [&'static [u8]]),
    /// The rescan is over: tell the client these untagged responses, in order.
    Tell(Vec<Vec<u8>>),
    /// The provider refused to select the mailbox again: its session has none selected while
    /// the client thinks it has; the session cannot go on.
    Lost,
}

/// One session's rescan state.
#[derive(Debug, Default)]
pub(super) struct Rescan {
    selected: Option<Selected>,
    /// A relayed SELECT/EXAMINE and its tag, until its tagged response.
    pending: Option<(Vec<u8>, Selected)>,
    step: Option<Step>,
}

impl Rescan {
    /// A client command starts with `line` (its first line; `literal`: a literal follows it).
    /// `intercepted`: a wing handles it (a chat client's SELECT INBOX is shown Chats).
    pub fn client_command(&mut self, tag: &[u8], name: CommandName, line: &[u8], literal: bool, intercepted: bool) {
        let word = line.split(|&b| b == b' ').nth(1).unwrap_or_default().trim_ascii_end();
        match name {
            CommandName::Select | CommandName::Examine => {
                self.selected = None;
                self.pending = None;
                if !literal && !intercepted {
                    self.pending = selected(name, line).map(|s| (tag.to_vec(), s));
                }
            }
            CommandName::Close => self.deselect(),
            CommandName::Other if word.eq_ignore_ascii_case(b"UNSELECT") => self.deselect(),
            _ => {}
        }
    }

    fn deselect(&mut self) {
        self.selected = None;
        self.pending = None;
    }

    /// An untagged response the provider sent the session (not one of the proxy's own).
    pub fn provider_untagged(&mut self, line: &[u8]) {
        let target = match (&mut self.pending, &mut self.selected) {
            (Some((_, s)), _) | (None, Some(s)) => s,
            (None, None) => return,
        };
        match numbered(line) {
            Some((n, Kind::Exists)) => target.exists = Some(n),
            Some((_, Kind::Expunge)) => target.exists = target.exists.map(|e| e.saturating_sub(1)),
            _ => {}
        }
    }

    /// The tagged response of a client command: a SELECT/EXAMINE that succeeded selects.
    pub fn provider_tagged(&mut self, tag: &[u8], ok: bool) {
        if self.pending.as_ref().is_some_and(|(t, _)| t == tag) {
            let pending = self.pending.take().map(|(_, s)| s);
            self.selected = if ok { pending } else { None };
        }
    }

    /// After a poll's NOOP: the STATUS that tells whether the provider missed mail, if a
    /// mailbox is selected (and its count known) and no rescan runs.
    pub fn start(&mut self) -> Option<(Vec<u8>, &'static [&'static [u8]])> {
        if self.step.is_some() || self.pending.is_some() {
            return None;
        }
        let selected = self.selected.as_ref().filter(|s| s.exists.is_some())?;
        self.step = Some(Step::Status { messages: None });
        Some(([b"STATUS ", &selected.mailbox[..], b" (MESSAGES)\r\n"].concat(), CAPTURE_STATUS))
    }

    /// An untagged response the running step captured.
    pub fn untagged(&mut self, response: &[u8]) {
        match &mut self.step {
            Some(Step::Status { messages }) => *messages = messages.or_else(|| status_messages(response)),
            Some(Step::Before { uids }) | Some(Step::After { uids, .. }) => {
                if let Some(found) = search_uids(response) {
                    uids.get_or_insert_with(Vec::new).extend(found);
                }
            }
            Some(Step::Reselect { recent, .. }) => {
                if let Some((n, Kind::Recent)) = numbered(response) {
                    *recent = Some(n);
                }
            }
            None => {}
        }
    }

    /// The running step's command ended (`ok`: with OK).
    pub fn done(&mut self, ok: bool) -> Next {
        let Some(step) = self.step.take() else { return Next::Done };
        let Some(selected) = self.selected.as_mut() else {
            // The client left the mailbox meanwhile (a command of its went first).
            return if matches!(step, Step::Reselect { .. } | Step::After { .. }) { Next::Lost } else { Next::Done };
        };
        let known = selected.exists.unwrap_or(0);
        match step {
            Step::Status { messages } => match messages {
                // More: mail NOOP missed; fewer: EXPUNGEs it missed (imap4d does not see another
                // session's expunge either until the directory's mtime moves on).
                Some(m) if ok && m != known => {
                    self.step = Some(Step::Before { uids: None });
                    Next::Run(b"UID SEARCH ALL\r\n".to_vec(), CAPTURE_SEARCH)
                }
                _ => Next::Done,
            },
            Step::Before { uids } => {
                let uids = uids.unwrap_or_default();
                if !ok || uids.len() != known as usize {
                    // The count the session was told is not what it holds: a response the
                    // proxy could not follow. It knows better from now on; no guess is told.
                    if ok {
                        tracing::debug!(known, holds = uids.len(), "selected mailbox count corrected");
                        selected.exists = u32::try_from(uids.len()).ok();
                    }
                    return Next::Done;
                }
                self.step = Some(Step::Reselect { before: uids, recent: None });
                Next::Run([&selected.select[..], b"\r\n"].concat(), CAPTURE_ALL)
            }
            Step::Reselect { before, recent } => {
                if !ok {
                    self.selected = None;
                    return Next::Lost;
                }
                self.step = Some(Step::After { before, recent, uids: None });
                Next::Run(b"UID SEARCH ALL\r\n".to_vec(), CAPTURE_SEARCH)
            }
            Step::After { before, recent, uids } => {
                if !ok {
                    self.selected = None;
                    return Next::Lost;
                }
                let mut after = uids.unwrap_or_default();
                after.sort_unstable();
                let tell = difference(&before, &after, recent);
                selected.exists = u32::try_from(after.len()).ok();
                Next::Tell(tell)
            }
        }
    }
}

/// What a client that saw `before` (UIDs by sequence number) must hear to see `after`: the
/// EXPUNGEs of the messages gone (highest first, so each number is right when it is read),
/// then EXISTS if the count changed, and RECENT.
fn difference(before: &[u32], after: &[u32], recent: Option<u32>) -> Vec<Vec<u8>> {
    let mut tell = Vec::new();
    let mut left = before.len();
    for (i, uid) in before.iter().enumerate().rev() {
        if after.binary_search(uid).is_err() {
            tell.push(format!("* {} EXPUNGE\r\n", i + 1).into_bytes());
            left -= 1;
        }
    }
    if after.len() != left {
        tell.push(format!("* {} EXISTS\r\n", after.len()).into_bytes());
        if let Some(recent) = recent {
            tell.push(format!("* {recent} RECENT\r\n").into_bytes());
        }
    }
    tell
}

/// The client's SELECT/EXAMINE line as the commands that select its mailbox again and ask
/// for its STATUS; `None` if the mailbox cannot be read from the line.
fn selected(name: CommandName, line: &[u8]) -> Option<Selected> {
    let parsed = command::parse(line).ok()?;
    let mailbox = command::astring(parsed.args.first().and_then(Arg::astring)?, false);
    // A literal would need the provider's `+` between two pieces: the name is quoted or nothing.
    if !mailbox.starts_with(b"\"") {
        return None;
    }
    let verb: &[u8] = if name == CommandName::Examine { b"EXAMINE " } else { b"SELECT " };
    Some(Selected { select: [verb, &mailbox[..]].concat(), mailbox, exists: None })
}

/// MESSAGES of a `* STATUS mailbox (MESSAGES n ...)` line.
fn status_messages(line: &[u8]) -> Option<u32> {
    let upper = line.to_ascii_uppercase();
    let at = memchr::memmem::rfind(&upper, b"MESSAGES ")? + b"MESSAGES ".len();
    let digits = upper[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&upper[at..at + digits]).ok()?.parse().ok()
}

/// The numbers of a `* SEARCH n n ...` line.
fn search_uids(line: &[u8]) -> Option<Vec<u32>> {
    let rest = line.get(b"* SEARCH".len()..)?;
    let rest = std::str::from_utf8(rest).ok()?;
    rest.split_ascii_whitespace().map(|n| n.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session with INBOX selected and 3 messages told.
    fn selected_inbox() -> Rescan {
        let mut r = Rescan::default();
        r.client_command(b"s", CommandName::Select, b"s SELECT INBOX\r\n", false, false);
        r.provider_untagged(b"* 3 EXISTS\r\n");
        r.provider_untagged(b"* 0 RECENT\r\n");
        r.provider_tagged(b"s", true);
        r
    }

    fn run(next: Next) -> Vec<u8> {
        match next {
            Next::Run(command, _) => command,
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn nothing_missed_nothing_done() {
        let mut r = selected_inbox();
        assert_eq!(r.start(), Some((b"STATUS \"INBOX\" (MESSAGES)\r\n".to_vec(), CAPTURE_STATUS)));
        assert_eq!(r.start(), None, "one at a time");
        r.untagged(b"* STATUS \"INBOX\" (MESSAGES 3)\r\n");
        assert_eq!(r.done(true), Next::Done);
        assert!(r.start().is_some(), "the next poll asks again");
    }

    #[test]
    fn a_missed_message_is_told_as_idle_would() {
        let mut r = selected_inbox();
        r.start();
        r.untagged(b"* STATUS INBOX (MESSAGES 4)\r\n");
        assert_eq!(run(r.done(true)), b"UID SEARCH ALL\r\n");
        r.untagged(b"* SEARCH 1 5 6\r\n");
        assert_eq!(run(r.done(true)), b"SELECT \"INBOX\"\r\n");
        for line in ["* 4 EXISTS", "* 1 RECENT", "* OK [UIDVALIDITY 17] x", "* FLAGS (\\Seen)"] {
            r.untagged(format!("{line}\r\n").as_bytes());
        }
        assert_eq!(run(r.done(true)), b"UID SEARCH ALL\r\n");
        r.untagged(b"* SEARCH 1 5 6 7\r\n");
        assert_eq!(r.done(true), Next::Tell(vec![b"* 4 EXISTS\r\n".to_vec(), b"* 1 RECENT\r\n".to_vec()]));
        // and the count is the new one
        r.start();
        r.untagged(b"* STATUS INBOX (MESSAGES 4)\r\n");
        assert_eq!(r.done(true), Next::Done);
    }

    #[test]
    fn an_expunge_noop_missed_is_told_too() {
        let mut r = selected_inbox();
        r.start();
        r.untagged(b"* STATUS INBOX (MESSAGES 2)\r\n");
        assert_eq!(run(r.done(true)), b"UID SEARCH ALL\r\n");
        r.untagged(b"* SEARCH 1 5 6\r\n");
        r.done(true);
        r.done(true);
        r.untagged(b"* SEARCH 1 6\r\n");
        assert_eq!(r.done(true), Next::Tell(vec![b"* 2 EXPUNGE\r\n".to_vec()]), "no EXISTS: the count is as told");
    }

    #[test]
    fn messages_gone_meanwhile_are_expunged_first_highest_first() {
        let mut r = selected_inbox();
        r.start();
        r.untagged(b"* STATUS INBOX (MESSAGES 4)\r\n");
        r.done(true);
        r.untagged(b"* SEARCH 1 5 6\r\n");
        r.done(true);
        r.untagged(b"* 2 EXISTS\r\n");
        r.done(true);
        // 1 and 6 gone, 8 and 9 new (sequence numbers 1 and 3 in the client's view)
        r.untagged(b"* SEARCH 5 8 9\r\n");
        assert_eq!(
            r.done(true),
            Next::Tell(vec![b"* 3 EXPUNGE\r\n".to_vec(), b"* 1 EXPUNGE\r\n".to_vec(), b"* 3 EXISTS\r\n".to_vec()])
        );
    }

    #[test]
    fn examined_mailboxes_are_examined_again_and_odd_names_quoted() {
        let mut r = Rescan::default();
        r.client_command(b"e", CommandName::Examine, b"e EXAMINE \"a \\\"b\\\"\"\r\n", false, false);
        r.provider_untagged(b"* 1 EXISTS\r\n");
        r.provider_tagged(b"e", true);
        assert_eq!(r.start().unwrap().0, b"STATUS \"a \\\"b\\\"\" (MESSAGES)\r\n");
        r.untagged(b"* STATUS \"a \\\"b\\\"\" (MESSAGES 2)\r\n");
        r.done(true);
        r.untagged(b"* SEARCH 3\r\n");
        assert_eq!(run(r.done(true)), b"EXAMINE \"a \\\"b\\\"\"\r\n");
    }

    #[test]
    fn no_rescan_without_a_mailbox_selected() {
        let mut r = selected_inbox();
        r.client_command(b"c", CommandName::Close, b"c CLOSE\r\n", false, false);
        assert_eq!(r.start(), None);
        let mut r = selected_inbox();
        r.client_command(b"u", CommandName::Other, b"u UNSELECT\r\n", false, false);
        assert_eq!(r.start(), None);
        let mut r = selected_inbox();
        r.client_command(b"s", CommandName::Select, b"s SELECT nope\r\n", false, false);
        r.provider_tagged(b"s", false);
        assert_eq!(r.start(), None, "a failed SELECT leaves none selected");
        let mut r = Rescan::default();
        r.client_command(b"s", CommandName::Select, b"s SELECT INBOX\r\n", false, true);
        r.provider_untagged(b"* 1 EXISTS\r\n");
        r.provider_tagged(b"s", true);
        assert_eq!(r.start(), None, "a chat client's SELECT INBOX selects Chats: not followed");
        let mut r = Rescan::default();
        r.client_command(b"s", CommandName::Select, b"s SELECT {5}\r\n", true, false);
        r.provider_tagged(b"s", true);
        assert_eq!(r.start(), None, "the name in a literal is not read");
    }

    #[test]
    fn a_count_the_proxy_lost_track_of_is_corrected_not_told() {
        let mut r = selected_inbox();
        r.provider_untagged(b"* 1 EXPUNGE\r\n");
        r.start();
        r.untagged(b"* STATUS INBOX (MESSAGES 4)\r\n");
        r.done(true);
        r.untagged(b"* SEARCH 1 5 6\r\n");
        assert_eq!(r.done(true), Next::Done, "the session holds 3, not the 2 followed");
        r.start();
        r.untagged(b"* STATUS INBOX (MESSAGES 4)\r\n");
        assert_eq!(run(r.done(true)), b"UID SEARCH ALL\r\n", "and the next poll goes on from 3");
    }

    #[test]
    fn a_refused_reselection_loses_the_session() {
        let mut r = selected_inbox();
        r.start();
        r.untagged(b"* STATUS INBOX (MESSAGES 4)\r\n");
        r.done(true);
        r.untagged(b"* SEARCH 1 2 3\r\n");
        r.done(true);
        assert_eq!(r.done(false), Next::Lost);
        assert_eq!(r.start(), None);
    }

    #[test]
    fn response_parsers() {
        assert_eq!(status_messages(b"* STATUS \"MESSAGES 9\" (UIDNEXT 4 MESSAGES 12)\r\n"), Some(12));
        assert_eq!(status_messages(b"* STATUS INBOX (UIDNEXT 4)\r\n"), None);
        assert_eq!(search_uids(b"* SEARCH\r\n"), Some(vec![]));
        assert_eq!(search_uids(b"* SEARCH 2 10\r\n"), Some(vec![2, 10]));
        assert_eq!(search_uids(b"* SEARCH 2 x\r\n"), None);
    }
}
