//! The quiet INBOX: a client IDLE-ing on INBOX is not woken by a message that the account
//! worker is about to move away (COI `active` filter), as it would not be on a real COI server,
//! where chat messages never reach INBOX.
//!
//! The provider announces a new message (`* N EXISTS`) to every IDLE session at about the same
//! time as to the worker; the worker moves a chat message within milliseconds, and the provider
//! reports the removal (`* N EXPUNGE`) to the session about half a second later (Dovecot
//! batches notifications). So while the client idles on INBOX, an EXISTS that grows the
//! mailbox is held back: if the EXPUNGEs bring the count back, the client never hears of the
//! message; if the worker reports an ordinary message, or the hold times out, or the client
//! ends IDLE, the EXISTS is passed on. Sequence numbers stay consistent: the client is only
//! ever told about messages it can address.
//!
//! A sans-I/O state machine: the relay policy feeds it responses, the worker's verdicts and
//! the clock.

use std::time::{Duration, Instant};

pub use crate::account::Verdicts;

/// How long an EXISTS is held when the worker says nothing.
const HOLD: Duration = Duration::from_millis(1200);
/// How long to wait for the EXPUNGE after the worker moved a message.
const AFTER_MOVE: Duration = Duration::from_millis(1500);

#[derive(Debug)]
struct Hold {
    /// The provider's message count, which the client has not been told.
    provider_exists: u32,
    deadline: Instant,
    base: Verdicts,
}

/// The hold state of one session.
pub struct Quiet {
    /// The worker's latest counts.
    verdicts: Verdicts,
    /// The message count the client knows, once an EXISTS has passed.
    client_exists: Option<u32>,
    /// The RECENT count the client knows.
    client_recent: Option<u32>,
    hold: Option<Hold>,
    /// Mailbox-wide news that arrived during a hold (a new keyword such as `$Chat` makes the
    /// provider announce FLAGS and PERMANENTFLAGS): told when the client next hears anything.
    deferred: Vec<u8>,
}

/// What to do with an untagged response.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

impl Quiet {
    /// Starts with the worker's counts as they are now.
    pub fn new(verdicts: Verdicts) -> Quiet {
        Quiet { verdicts, client_exists: None, client_recent: None, hold: None, deferred: Vec::new() }
    }

    /// Looks at an untagged response on its way to the client. `holding_allowed` is true while
    /// the client idles on INBOX with the `active` filter on.
    pub fn on_untagged(&mut self, line: &[u8], holding_allowed: bool, now: Instant) -> Verdict {
        // The worker's first `$Chat` makes the provider announce new FLAGS, even when it moved
        // the message before the provider told this session about it.
        let mailbox_news = line.starts_with(b"* FLAGS ") || line.starts_with(b"* OK [PERMANENTFLAGS ");
        if mailbox_news && (self.hold.is_some() || holding_allowed) {
            self.deferred.extend_from_slice(line);
            return Verdict::Drop;
        }
        let Some((n, kind)) = numbered(line) else { return Verdict::Forward };
        match kind {
            Kind::Exists => {
                let grows = self.client_exists.is_some_and(|c| n > c);
                if holding_allowed && grows {
                    let base = self.verdicts;
                    let hold = self.hold.get_or_insert(Hold { provider_exists: n, deadline: now + HOLD, base });
                    hold.provider_exists = n;
                    return Verdict::Drop;
                }
                // Passed on: whatever was held is covered by this count.
                self.hold = None;
                self.client_exists = Some(n);
                Verdict::Forward
            }
            Kind::Expunge => match (&mut self.hold, self.client_exists) {
                (Some(hold), Some(client)) if n > client => {
                    hold.provider_exists = hold.provider_exists.saturating_sub(1);
                    if hold.provider_exists <= client {
                        self.hold = None;
                    }
                    Verdict::Drop
                }
                (hold, client) => {
                    if let Some(hold) = hold {
                        hold.provider_exists = hold.provider_exists.saturating_sub(1);
                    }
                    self.client_exists = client.map(|c| c.saturating_sub(1));
                    Verdict::Forward
                }
            },
            // Responses about held messages would give them away.
            Kind::Recent if self.hold.is_some() => Verdict::Drop,
            // A RECENT count back where the client knows it (the held message left) is no news.
            Kind::Recent if self.client_recent == Some(n) => Verdict::Drop,
            Kind::Recent => {
                self.client_recent = Some(n);
                Verdict::Forward
            }
            Kind::Fetch if self.hold.is_some() && self.client_exists.is_none_or(|c| n > c) => Verdict::Drop,
            Kind::Fetch => Verdict::Forward,
        }
    }

    /// The EXISTS to send now, if the hold should end: the worker kept an ordinary message, or
    /// time is up. A move by the worker extends the wait for its EXPUNGE.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        let current = self.verdicts;
        let hold = self.hold.as_mut()?;
        if current.moved > hold.base.moved {
            hold.deadline = hold.deadline.max(now + AFTER_MOVE);
            hold.base.moved = current.moved;
        }
        if current.kept > hold.base.kept || now >= hold.deadline { self.release() } else { None }
    }

    /// Ends the hold (e.g. the client leaves IDLE): what the client must now hear, deferred
    /// mailbox news first, then the EXISTS.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        let mut out = std::mem::take(&mut self.deferred);
        if let Some(hold) = self.hold.take() {
            self.client_exists = Some(hold.provider_exists);
            out.extend_from_slice(format!("* {} EXISTS\r\n", hold.provider_exists).as_bytes());
        }
        (!out.is_empty()).then_some(out)
    }

    /// When `poll` must be called next.
    pub fn deadline(&self) -> Option<Instant> {
        self.hold.as_ref().map(|h| h.deadline)
    }

    /// The worker's counts changed; `poll` tells what follows from it.
    pub fn set_verdicts(&mut self, verdicts: Verdicts) {
        self.verdicts = verdicts;
    }

    /// A new mailbox is being selected: counts start over.
    pub fn reset(&mut self) {
        self.client_exists = None;
        self.client_recent = None;
        self.hold = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exists,
    Expunge,
    Recent,
    Fetch,
}

/// `* <n> EXISTS|EXPUNGE|RECENT|FETCH`.
fn numbered(line: &[u8]) -> Option<(u32, Kind)> {
    let rest = line.strip_prefix(b"* ")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let n = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let word = &rest[sp + 1..];
    let word = &word[..word.iter().position(|&b| b == b' ' || b == b'\r' || b == b'\n').unwrap_or(word.len())];
    let kind = match word.to_ascii_uppercase().as_slice() {
        b"EXISTS" => Kind::Exists,
        b"EXPUNGE" => Kind::Expunge,
        b"RECENT" => Kind::Recent,
        b"FETCH" => Kind::Fetch,
        _ => return None,
    };
    Some((n, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Quiet, Instant) {
        let mut q = Quiet::new(Verdicts::default());
        let t = Instant::now();
        assert_eq!(q.on_untagged(b"* 4 EXISTS\r\n", false, t), Verdict::Forward);
        (q, t)
    }

    #[test]
    fn a_moved_chat_message_never_reaches_the_client() {
        let (mut q, t) = setup();
        assert_eq!(q.on_untagged(b"* 5 EXISTS\r\n", true, t), Verdict::Drop);
        assert_eq!(q.on_untagged(b"* 1 RECENT\r\n", true, t), Verdict::Drop);
        q.set_verdicts(Verdicts { kept: 0, moved: 1 });
        assert_eq!(q.poll(t + Duration::from_millis(1100)), None, "a move extends the wait");
        assert_eq!(q.poll(t + Duration::from_millis(1300)), None);
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, t + Duration::from_millis(1400)), Verdict::Drop);
        assert_eq!(q.deadline(), None, "hold over, nothing to tell");
        assert_eq!(q.on_untagged(b"* 3 EXPUNGE\r\n", true, t), Verdict::Forward, "known messages still expunge");
    }

    #[test]
    fn ordinary_mail_is_released_when_the_worker_keeps_it() {
        let (mut q, t) = setup();
        assert_eq!(q.on_untagged(b"* 5 EXISTS\r\n", true, t), Verdict::Drop);
        assert_eq!(q.poll(t + Duration::from_millis(10)), None);
        q.set_verdicts(Verdicts { kept: 1, moved: 0 });
        assert_eq!(q.poll(t + Duration::from_millis(20)), Some(b"* 5 EXISTS\r\n".to_vec()));
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, t), Verdict::Forward);
    }

    #[test]
    fn hold_times_out_and_ends_with_idle() {
        let (mut q, t) = setup();
        q.on_untagged(b"* 5 EXISTS\r\n", true, t);
        q.on_untagged(b"* 6 EXISTS\r\n", true, t);
        assert_eq!(q.poll(t + HOLD), Some(b"* 6 EXISTS\r\n".to_vec()));
        q.on_untagged(b"* 7 EXISTS\r\n", true, t);
        assert_eq!(q.release(), Some(b"* 7 EXISTS\r\n".to_vec()));
        assert_eq!(q.release(), None);
        // Outside IDLE nothing is held.
        assert_eq!(q.on_untagged(b"* 8 EXISTS\r\n", false, t), Verdict::Forward);
    }

    #[test]
    fn flag_news_during_a_hold_waits_for_the_end_of_idle() {
        let (mut q, t) = setup();
        q.on_untagged(b"* 5 EXISTS\r\n", true, t);
        assert_eq!(q.on_untagged(b"* FLAGS (\\Seen $Chat)\r\n", true, t), Verdict::Drop);
        assert_eq!(q.on_untagged(b"* OK [PERMANENTFLAGS (\\Seen $Chat \\*)] Flags\r\n", true, t), Verdict::Drop);
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, t), Verdict::Drop);
        assert_eq!(
            q.release(),
            Some(b"* FLAGS (\\Seen $Chat)\r\n* OK [PERMANENTFLAGS (\\Seen $Chat \\*)] Flags\r\n".to_vec())
        );
        assert_eq!(q.on_untagged(b"* FLAGS (\\Seen)\r\n", false, t), Verdict::Forward, "not idling: passed on");
        assert_eq!(q.on_untagged(b"* FLAGS (\\Seen)\r\n", true, t), Verdict::Drop, "idling: kept for later");
        assert_eq!(q.release(), Some(b"* FLAGS (\\Seen)\r\n".to_vec()));
    }

    #[test]
    fn mixed_batch_expunges_the_chat_and_shows_the_mail() {
        let (mut q, t) = setup();
        q.on_untagged(b"* 6 EXISTS\r\n", true, t); // a chat (5) and a mail (6)
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, t), Verdict::Drop);
        assert_eq!(q.release(), Some(b"* 5 EXISTS\r\n".to_vec()));
    }
}
