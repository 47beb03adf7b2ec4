//! Answers that count INBOX's messages, held until they are known to leave out chat messages
//! the worker has not moved yet (COI `active`: a plain client never sees one in INBOX).
//!
//! A SELECT or EXAMINE of INBOX is held whole, a `* STATUS INBOX` line (of STATUS, of LIST with
//! RETURN STATUS, or unsolicited) on its own. The answer is trusted at once when every UID it
//! counts was classified before the command went out (its UIDNEXT against the worker's position
//! then); else the worker is woken and, once it has looked at INBOX after the answer came, the
//! answer is trusted if the worker moved nothing since the command went out, and otherwise the
//! command runs again as the proxy's own and its answer replaces the first. At the latest
//! [`HOLD`] after the answer came, it is released as it is.
//!
//! Sans-I/O: the policy feeds it the held bytes, the worker's verdicts and the clock, runs the
//! command it asks for, and passes on what it releases.

use std::time::Instant;

use crate::imap::session::quiet::{HOLD, Verdicts};

/// What a look waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The SELECT's response is still coming.
    Collecting,
    /// For the worker's look at INBOX that begins after `since`.
    Waiting { since: Instant },
    /// For the answer of the command run again.
    Rerunning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Select,
    Status,
}

/// A held answer that counts INBOX's messages.
#[derive(Debug)]
pub(super) struct Look {
    kind: Kind,
    /// What is held: the SELECT's response (its tagged line last, once it came), or the STATUS
    /// INBOX lines.
    held: Vec<u8>,
    /// The command to run again, everything after the tag.
    rerun: Vec<u8>,
    /// The client's tag of a SELECT (its rerun's status is given to the client with it).
    tag: Vec<u8>,
    /// The worker's counts when the command (or its rerun) went out.
    snapshot: Verdicts,
    state: State,
    deadline: Instant,
}

/// What the policy is to do for a look.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Wait,
    /// Wake the worker: the answer waits for its look.
    Wake,
    /// Run this command (after the tag) as the proxy's own, capturing these untagged responses.
    Rerun(Vec<u8>, &'static [&'static [u8]]),
    /// Over: these bytes go to the client.
    Release(Vec<u8>),
}

const CAPTURE_ALL: &[&[u8]] = &[b"* "];
const CAPTURE_STATUS: &[&[u8]] = &[b"* STATUS "];

impl Look {
    /// A SELECT or EXAMINE of INBOX went out (`command`: its line after the tag).
    pub fn select(tag: &[u8], command: &[u8], snapshot: Verdicts, now: Instant) -> Look {
        Look {
            kind: Kind::Select,
            held: Vec::new(),
            rerun: command.to_vec(),
            tag: tag.to_vec(),
            snapshot,
            state: State::Collecting,
            deadline: now + HOLD,
        }
    }

    /// A `* STATUS INBOX (…)` line came for a command that went out when the worker's counts
    /// were `snapshot`. `None` if it can be trusted as it is.
    pub fn status(line: &[u8], snapshot: Verdicts, now: Instant) -> Option<Look> {
        let items = status_items(line)?;
        if trusted(&snapshot, item(&items, "UIDVALIDITY"), item(&items, "UIDNEXT")) {
            return None;
        }
        let names: Vec<&str> = items.iter().map(|(n, _)| n.as_str()).collect();
        Some(Look {
            kind: Kind::Status,
            held: line.to_vec(),
            rerun: format!("STATUS INBOX ({})\r\n", names.join(" ")).into_bytes(),
            tag: Vec::new(),
            snapshot,
            state: State::Waiting { since: now },
            deadline: now + HOLD,
        })
    }

    /// More of a SELECT's response; `tagged` when it is the first line of its tagged response.
    /// `Some` once the response is complete: what follows from it.
    pub fn collect(&mut self, bytes: &[u8], tagged: bool, now: Instant) -> Option<Next> {
        self.held.extend_from_slice(bytes);
        if !tagged {
            return None;
        }
        Some(self.answered(now))
    }

    /// Whether a SELECT's response is being collected.
    pub fn collecting(&self) -> bool {
        self.state == State::Collecting
    }

    /// Whether the tagged line starting with `line` ends the collected SELECT.
    pub fn ends_with(&self, line: &[u8]) -> bool {
        self.collecting() && line.starts_with(&self.tag) && line.get(self.tag.len()) == Some(&b' ')
    }

    /// Whether the SELECT's tag is among `tags`.
    pub fn tag_in<V: Default>(&self, tags: &super::tags::Tags<V>) -> bool {
        tags.contains_key(&self.tag)
    }

    /// Another STATUS INBOX line for the same command (LIST-STATUS may list INBOX twice).
    pub fn add_status(&mut self, line: &[u8]) {
        if self.kind == Kind::Status && self.state != State::Rerunning {
            self.held.extend_from_slice(line);
        }
    }

    pub fn is_status(&self) -> bool {
        self.kind == Kind::Status
    }

    /// An untagged response to the rerun.
    pub fn rerun_untagged(&mut self, response: &[u8]) {
        if self.state == State::Rerunning {
            self.held.extend_from_slice(response);
        }
    }

    /// The rerun's tagged status (without the tag).
    pub fn rerun_done(&mut self, status: &[u8], now: Instant) -> Next {
        if self.kind == Kind::Select {
            self.held.extend_from_slice(&self.tag);
            self.held.push(b' ');
            self.held.extend_from_slice(status);
        }
        if !status.starts_with(b"OK") && self.kind == Kind::Status {
            // The first answer is all there is.
            return self.release();
        }
        self.answered(now)
    }

    /// The answer is complete: trusted, or waiting for the worker.
    fn answered(&mut self, now: Instant) -> Next {
        let (uidvalidity, uidnext) = match self.kind {
            Kind::Select => {
                if !self.tagged_ok() {
                    return self.release();
                }
                (code(&self.held, "UIDVALIDITY"), code(&self.held, "UIDNEXT"))
            }
            Kind::Status => {
                let items = status_items(&self.held).unwrap_or_default();
                (item(&items, "UIDVALIDITY"), item(&items, "UIDNEXT"))
            }
        };
        if trusted(&self.snapshot, uidvalidity, uidnext) || now >= self.deadline {
            return self.release();
        }
        self.state = State::Waiting { since: now };
        Next::Wake
    }

    /// What follows from the worker's verdicts now.
    pub fn poll(&mut self, verdicts: &Verdicts, now: Instant) -> Next {
        let State::Waiting { since } = self.state else { return Next::Wait };
        if now >= self.deadline || !verdicts.watching {
            return self.release();
        }
        if verdicts.looked.is_none_or(|looked| looked <= since) {
            return Next::Wait;
        }
        if verdicts.moved == self.snapshot.moved {
            // Nothing moved since the command went out: what it counted is all kept.
            return self.release();
        }
        self.snapshot = *verdicts;
        self.state = State::Rerunning;
        self.held.clear();
        let capture = if self.kind == Kind::Select { CAPTURE_ALL } else { CAPTURE_STATUS };
        Next::Rerun(self.rerun.clone(), capture)
    }

    /// When `poll` must be called at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        matches!(self.state, State::Waiting { .. }).then_some(self.deadline)
    }

    fn release(&mut self) -> Next {
        Next::Release(std::mem::take(&mut self.held))
    }

    fn tagged_ok(&self) -> bool {
        let last = self.held.trim_ascii_end();
        let start = last.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = &last[start..];
        line.starts_with(&self.tag) && line.get(self.tag.len()..).is_some_and(|r| starts_with_ci(r, b" OK"))
    }
}

/// Whether an answer that counts UIDs below `uidnext` (of `uidvalidity`) can be trusted with
/// the worker's counts as they were when its command went out.
fn trusted(snapshot: &Verdicts, uidvalidity: Option<u32>, uidnext: Option<u32>) -> bool {
    if !snapshot.watching {
        return true;
    }
    match (snapshot.position, uidnext) {
        (Some((v, next)), Some(uidnext)) => uidvalidity.is_none_or(|u| u == v) && uidnext <= next,
        _ => false,
    }
}

/// Whether `line` is `* STATUS INBOX (…)`, any case, quoted or not.
pub(super) fn is_status_inbox(line: &[u8]) -> bool {
    let Some(rest) = strip_prefix_ci(line, b"* STATUS ") else { return false };
    let name = rest.strip_prefix(b"\"").map_or_else(
        || rest.split(|&b| b == b' ').next().unwrap_or_default(),
        |quoted| quoted.split(|&b| b == b'"').next().unwrap_or_default(),
    );
    name.eq_ignore_ascii_case(b"INBOX")
}

/// The `NAME value` pairs of a STATUS response's list.
fn status_items(line: &[u8]) -> Option<Vec<(String, u64)>> {
    let open = line.iter().rposition(|&b| b == b'(')?;
    let close = open + line[open..].iter().position(|&b| b == b')')?;
    let text = std::str::from_utf8(&line[open + 1..close]).ok()?;
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let mut items = Vec::new();
    for pair in words.chunks(2) {
        let [name, value] = pair else { return None };
        items.push((name.to_ascii_uppercase(), value.parse().ok()?));
    }
    (!items.is_empty()).then_some(items)
}

fn item(items: &[(String, u64)], name: &str) -> Option<u32> {
    items.iter().find(|(n, _)| n == name).and_then(|(_, v)| u32::try_from(*v).ok())
}

/// The number in a `[NAME n]` response code anywhere in `bytes`.
fn code(bytes: &[u8], name: &str) -> Option<u32> {
    let needle = format!("[{name} ");
    let at = memchr::memmem::find(bytes, needle.as_bytes())? + needle.len();
    let digits = &bytes[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

fn strip_prefix_ci<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    starts_with_ci(line, prefix).then(|| &line[prefix.len()..])
}

fn starts_with_ci(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(uidnext: u32, moved: u64) -> Verdicts {
        Verdicts { watching: true, moved, position: Some((7, uidnext)), ..Verdicts::default() }
    }

    const SELECTED: &[u8] =
        b"* FLAGS (\\Seen)\r\n* 9 EXISTS\r\n* OK [UIDVALIDITY 7] UIDs valid\r\n* OK [UIDNEXT 10] next\r\n";

    #[test]
    fn a_select_counting_only_classified_uids_is_trusted_at_once() {
        let t = Instant::now();
        let mut look = Look::select(b"s", b"SELECT INBOX\r\n", at(10, 0), t);
        assert_eq!(look.collect(SELECTED, false, t), None);
        assert!(look.ends_with(b"s OK [READ-WRITE] done\r\n") && !look.ends_with(b"st OK\r\n"));
        let done = look.collect(b"s OK [READ-WRITE] done\r\n", true, t);
        assert_eq!(done, Some(Next::Release([SELECTED, b"s OK [READ-WRITE] done\r\n"].concat())));
    }

    #[test]
    fn a_select_with_a_new_message_waits_for_the_worker_and_runs_again_if_it_moved_one() {
        let t = Instant::now();
        let mut look = Look::select(b"s", b"SELECT INBOX\r\n", at(9, 3), t);
        look.collect(SELECTED, false, t);
        assert_eq!(look.collect(b"s OK done\r\n", true, t), Some(Next::Wake));
        let early = Verdicts { looked: Some(t - Duration::from_millis(1)), ..at(10, 4) };
        assert_eq!(look.poll(&early, t), Next::Wait, "the look began before the answer");
        let moved = Verdicts { looked: Some(t + Duration::from_millis(1)), ..at(10, 4) };
        assert_eq!(look.poll(&moved, t), Next::Rerun(b"SELECT INBOX\r\n".to_vec(), CAPTURE_ALL));
        look.rerun_untagged(b"* 8 EXISTS\r\n");
        look.rerun_untagged(b"* OK [UIDNEXT 10] next\r\n");
        assert_eq!(
            look.rerun_done(b"OK done\r\n", t),
            Next::Release(b"* 8 EXISTS\r\n* OK [UIDNEXT 10] next\r\ns OK done\r\n".to_vec())
        );
    }

    #[test]
    fn a_select_is_released_when_nothing_moved_or_in_time() {
        let t = Instant::now();
        let mut look = Look::select(b"s", b"EXAMINE INBOX\r\n", at(9, 3), t);
        look.collect(SELECTED, false, t);
        look.collect(b"s OK done\r\n", true, t);
        let kept = Verdicts { looked: Some(t + Duration::from_millis(1)), ..at(10, 3) };
        assert!(matches!(look.poll(&kept, t), Next::Release(_)));
        let mut look = Look::select(b"s", b"EXAMINE INBOX\r\n", at(9, 3), t);
        look.collect(SELECTED, false, t);
        look.collect(b"s OK done\r\n", true, t);
        assert_eq!(look.deadline(), Some(t + HOLD));
        assert!(matches!(look.poll(&at(9, 3), t + HOLD), Next::Release(_)));
        let mut failed = Look::select(b"s", b"SELECT INBOX\r\n", at(1, 0), t);
        assert_eq!(failed.collect(b"s NO no such\r\n", true, t), Some(Next::Release(b"s NO no such\r\n".to_vec())));
    }

    #[test]
    fn status_lines() {
        let t = Instant::now();
        assert!(is_status_inbox(b"* STATUS INBOX (MESSAGES 3)\r\n"));
        assert!(is_status_inbox(b"* STATUS \"inbox\" (MESSAGES 3)\r\n"));
        assert!(!is_status_inbox(b"* STATUS INBOX.Sub (MESSAGES 3)\r\n"));
        assert!(Look::status(b"* STATUS INBOX (MESSAGES 3 UIDNEXT 10)\r\n", at(10, 0), t).is_none(), "trusted");
        let mut look = Look::status(b"* STATUS INBOX (MESSAGES 3)\r\n", at(10, 0), t).expect("no UIDNEXT");
        let later = t + Duration::from_millis(1);
        let moved = Verdicts { looked: Some(later), ..at(11, 1) };
        assert_eq!(look.poll(&moved, t), Next::Rerun(b"STATUS INBOX (MESSAGES)\r\n".to_vec(), CAPTURE_STATUS));
        look.rerun_untagged(b"* STATUS INBOX (MESSAGES 2)\r\n");
        assert_eq!(look.rerun_done(b"OK done\r\n", t), Next::Wake, "no UIDNEXT again: wait once more");
        let kept = Verdicts { looked: Some(later), ..at(11, 1) };
        assert_eq!(look.poll(&kept, t), Next::Release(b"* STATUS INBOX (MESSAGES 2)\r\n".to_vec()));
        let unwatched = Verdicts::default();
        assert!(Look::status(b"* STATUS INBOX (MESSAGES 3)\r\n", unwatched, t).is_none(), "no worker, no wait");
    }
}
