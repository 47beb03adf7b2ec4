//! The quiet INBOX: under the COI `active` filter a plain client is never told of a message in
//! INBOX before the account worker has looked at it, so it never sees a chat message there, as
//! it would not on a real COI server, where chat messages never reach INBOX.
//!
//! The provider announces a new message (`* N EXISTS`) to a session at its next sync point (the
//! end of any command, or at once in IDLE) at about the time the worker hears of it. An EXISTS
//! that grows the mailbox beyond what the client knows is held back, and the session waits for
//! the worker's verdict: a look at INBOX that began after the EXISTS (`Verdicts::looked`). If the
//! worker moved nothing meanwhile, the new messages are all ordinary and the EXISTS is passed
//! on. If it moved chat messages, the provider's EXPUNGEs for them are needed first: outside
//! IDLE the session asks for them with a NOOP of its own ([`Poll::Sync`]); in IDLE the provider
//! pushes them. EXPUNGEs of held messages are dropped and lower the held count, so the client is
//! only ever told about messages it can address and sequence numbers stay consistent. A hold
//! ends at the latest [`HOLD`] after it began (the client is then told what there is), and
//! nothing is held while no worker watches INBOX.
//!
//! A sans-I/O state machine: the relay policy feeds it responses, the worker's verdicts and
//! the clock, and holds the command completions meanwhile (`policy/settle.rs`).

use std::time::{Duration, Instant};

pub use crate::account::Verdicts;

/// Longest a new message is kept from the client while the worker has not decided on it.
pub const HOLD: Duration = Duration::from_secs(3);
/// How long to wait in IDLE for the provider's EXPUNGE after the worker moved a message.
const AFTER_MOVE: Duration = Duration::from_millis(1500);

#[derive(Debug)]
struct Hold {
    /// The provider's message count, which the client has not been told.
    provider_exists: u32,
    /// When the mailbox last grew: the worker's look must begin after it.
    since: Instant,
    deadline: Instant,
    /// The worker's move count the EXPUNGEs seen so far account for.
    base_moved: u64,
    /// Moves the provider is still to report as EXPUNGE (in IDLE).
    expunges_due: u64,
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
    /// The mailbox grew since the last [`Quiet::take_growth`]: the worker should look.
    grew: bool,
    /// Mailbox-wide news that arrived during a hold or in IDLE (a new keyword such as `$Chat`
    /// makes the provider announce FLAGS and PERMANENTFLAGS): told when the client next hears
    /// anything.
    deferred: Vec<u8>,
}

/// What to do with an untagged response.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

/// Whether the session can ask the provider for news now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAbility {
    /// Nothing in flight: an own NOOP can go out.
    Now,
    /// A command is in flight; later.
    Later,
    /// The provider is in the client's IDLE: it pushes news itself.
    Idle,
}

/// What a hold comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Not decided yet.
    Wait,
    /// Over: tell the client these bytes (none if there is nothing to tell).
    Release(Vec<u8>),
    /// The worker moved messages: ask the provider for the EXPUNGEs (an own NOOP), then poll.
    Sync,
}

impl Quiet {
    /// Starts with the worker's counts as they are now.
    pub fn new(verdicts: Verdicts) -> Quiet {
        Quiet { verdicts, client_exists: None, client_recent: None, hold: None, grew: false, deferred: Vec::new() }
    }

    /// Looks at an untagged response on its way to the client. `allowed`: INBOX is selected
    /// and the `active` filter on; `idling`: the client is in IDLE.
    pub fn on_untagged(&mut self, line: &[u8], allowed: bool, idling: bool, now: Instant) -> Verdict {
        // The worker's first `$Chat` makes the provider announce new FLAGS, even when it moved
        // the message before the provider told this session about it.
        let mailbox_news = line.starts_with(b"* FLAGS ") || line.starts_with(b"* OK [PERMANENTFLAGS ");
        if mailbox_news && (self.hold.is_some() || (allowed && idling)) {
            self.deferred.extend_from_slice(line);
            return Verdict::Drop;
        }
        let Some((n, kind)) = numbered(line) else { return Verdict::Forward };
        match kind {
            Kind::Exists => {
                let grows = self.client_exists.is_some_and(|c| n > c);
                if allowed && grows && self.verdicts.watching {
                    let moved = self.verdicts.moved;
                    let hold = self.hold.get_or_insert(Hold {
                        provider_exists: n,
                        since: now,
                        deadline: now + HOLD,
                        base_moved: moved,
                        expunges_due: 0,
                    });
                    if n > hold.provider_exists {
                        hold.since = now;
                    }
                    hold.provider_exists = n;
                    self.grew = true;
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
                    hold.expunges_due = hold.expunges_due.saturating_sub(1);
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

    /// Whether new messages are being kept from the client.
    pub fn holding(&self) -> bool {
        self.hold.is_some()
    }

    /// Whether the mailbox grew since the last call (the worker should be woken).
    pub fn take_growth(&mut self) -> bool {
        std::mem::take(&mut self.grew)
    }

    /// What the hold comes to now, given the worker's verdicts and whether the session can ask
    /// the provider for news.
    pub fn poll(&mut self, now: Instant, sync: SyncAbility) -> Poll {
        let current = self.verdicts;
        let Some(hold) = self.hold.as_mut() else { return Poll::Wait };
        if now >= hold.deadline || !current.watching {
            return Poll::Release(self.release().unwrap_or_default());
        }
        if current.looked.is_none_or(|looked| looked <= hold.since) {
            return Poll::Wait;
        }
        if current.moved > hold.base_moved {
            match sync {
                SyncAbility::Now => {
                    hold.base_moved = current.moved;
                    return Poll::Sync;
                }
                SyncAbility::Later => return Poll::Wait,
                SyncAbility::Idle => {
                    hold.expunges_due += current.moved - hold.base_moved;
                    hold.base_moved = current.moved;
                    hold.deadline = hold.deadline.max(now + AFTER_MOVE);
                }
            }
        }
        if hold.expunges_due > 0 {
            return Poll::Wait;
        }
        Poll::Release(self.release().unwrap_or_default())
    }

    /// Ends the hold: what the client must now hear, deferred mailbox news first, then the
    /// EXISTS.
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

    pub fn verdicts(&self) -> Verdicts {
        self.verdicts
    }

    /// A new mailbox is being selected: counts start over.
    pub fn reset(&mut self) {
        self.client_exists = None;
        self.client_recent = None;
        self.hold = None;
    }

    /// The client was told `response` (a SELECT's, released whole): the counts it gave.
    pub fn learn(&mut self, response: &[u8]) {
        for line in response.split_inclusive(|&b| b == b'\n') {
            match numbered(line) {
                Some((n, Kind::Exists)) => self.client_exists = Some(n),
                Some((n, Kind::Recent)) => self.client_recent = Some(n),
                _ => {}
            }
        }
    }
}

/// What a numbered untagged response says (`policy::rescan` follows a mailbox's count too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Exists,
    Expunge,
    Recent,
    Fetch,
}

/// `* <n> EXISTS|EXPUNGE|RECENT|FETCH`.
pub(super) fn numbered(line: &[u8]) -> Option<(u32, Kind)> {
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

/// Whether `line` starts an untagged FETCH response.
pub fn is_fetch(line: &[u8]) -> bool {
    matches!(numbered(line), Some((_, Kind::Fetch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watching() -> Verdicts {
        Verdicts { watching: true, ..Verdicts::default() }
    }

    fn setup() -> (Quiet, Instant) {
        let mut q = Quiet::new(watching());
        let t = Instant::now();
        assert_eq!(q.on_untagged(b"* 4 EXISTS\r\n", false, false, t), Verdict::Forward);
        (q, t)
    }

    fn looked(q: &mut Quiet, at: Instant, moved: u64) {
        q.set_verdicts(Verdicts { looked: Some(at), moved, ..watching() });
    }

    #[test]
    fn a_moved_chat_message_never_reaches_the_client_outside_idle() {
        let (mut q, t) = setup();
        assert_eq!(q.on_untagged(b"* 5 EXISTS\r\n", true, false, t), Verdict::Drop);
        assert!(q.take_growth());
        assert_eq!(q.on_untagged(b"* 1 RECENT\r\n", true, false, t), Verdict::Drop);
        assert_eq!(q.poll(t, SyncAbility::Now), Poll::Wait, "the worker has not looked yet");
        looked(&mut q, t - Duration::from_millis(1), 1);
        assert_eq!(q.poll(t, SyncAbility::Now), Poll::Wait, "a look from before the EXISTS says nothing");
        looked(&mut q, t + Duration::from_millis(5), 1);
        assert_eq!(q.poll(t, SyncAbility::Later), Poll::Wait, "a command in flight: later");
        assert_eq!(q.poll(t, SyncAbility::Now), Poll::Sync);
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, false, t), Verdict::Drop);
        assert!(!q.holding(), "hold over, nothing to tell");
        assert_eq!(q.on_untagged(b"* 3 EXPUNGE\r\n", true, false, t), Verdict::Forward, "known messages still expunge");
    }

    #[test]
    fn ordinary_mail_is_released_once_the_worker_has_looked() {
        let (mut q, t) = setup();
        assert_eq!(q.on_untagged(b"* 5 EXISTS\r\n", true, false, t), Verdict::Drop);
        looked(&mut q, t + Duration::from_millis(10), 0);
        assert_eq!(q.poll(t, SyncAbility::Now), Poll::Release(b"* 5 EXISTS\r\n".to_vec()));
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, false, t), Verdict::Forward);
    }

    #[test]
    fn in_idle_the_expunge_is_awaited() {
        let (mut q, t) = setup();
        q.on_untagged(b"* 6 EXISTS\r\n", true, true, t); // a chat (5) and a mail (6)
        looked(&mut q, t + Duration::from_millis(10), 1);
        assert_eq!(q.poll(t, SyncAbility::Idle), Poll::Wait, "the EXPUNGE of the moved chat comes first");
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, true, t), Verdict::Drop);
        assert_eq!(q.poll(t, SyncAbility::Idle), Poll::Release(b"* 5 EXISTS\r\n".to_vec()));
    }

    #[test]
    fn hold_times_out_and_nothing_is_held_without_a_worker() {
        let (mut q, t) = setup();
        q.on_untagged(b"* 5 EXISTS\r\n", true, false, t);
        q.on_untagged(b"* 6 EXISTS\r\n", true, false, t);
        assert_eq!(q.deadline(), Some(t + HOLD));
        assert_eq!(q.poll(t + HOLD, SyncAbility::Now), Poll::Release(b"* 6 EXISTS\r\n".to_vec()));
        q.on_untagged(b"* 7 EXISTS\r\n", true, false, t);
        assert_eq!(q.release(), Some(b"* 7 EXISTS\r\n".to_vec()));
        assert_eq!(q.release(), None);
        // Not allowed (not INBOX, not active): nothing is held.
        assert_eq!(q.on_untagged(b"* 8 EXISTS\r\n", false, false, t), Verdict::Forward);
        q.set_verdicts(Verdicts::default());
        assert_eq!(q.on_untagged(b"* 9 EXISTS\r\n", true, false, t), Verdict::Forward, "no worker watches");
    }

    #[test]
    fn flag_news_during_a_hold_waits_for_its_end() {
        let (mut q, t) = setup();
        q.on_untagged(b"* 5 EXISTS\r\n", true, true, t);
        assert_eq!(q.on_untagged(b"* FLAGS (\\Seen $Chat)\r\n", true, true, t), Verdict::Drop);
        assert_eq!(q.on_untagged(b"* OK [PERMANENTFLAGS (\\Seen $Chat \\*)] Flags\r\n", true, true, t), Verdict::Drop);
        assert_eq!(q.on_untagged(b"* 5 EXPUNGE\r\n", true, true, t), Verdict::Drop);
        assert_eq!(
            q.release(),
            Some(b"* FLAGS (\\Seen $Chat)\r\n* OK [PERMANENTFLAGS (\\Seen $Chat \\*)] Flags\r\n".to_vec())
        );
        assert_eq!(q.on_untagged(b"* FLAGS (\\Seen)\r\n", true, false, t), Verdict::Forward, "not idling: passed on");
        assert_eq!(q.on_untagged(b"* FLAGS (\\Seen)\r\n", true, true, t), Verdict::Drop, "idling: kept for later");
        assert_eq!(q.release(), Some(b"* FLAGS (\\Seen)\r\n".to_vec()));
    }

    #[test]
    fn a_released_response_sets_the_counts() {
        let mut q = Quiet::new(watching());
        q.learn(b"* FLAGS ()\r\n* 7 EXISTS\r\n* 1 RECENT\r\na OK done\r\n");
        let t = Instant::now();
        assert_eq!(q.on_untagged(b"* 8 EXISTS\r\n", true, false, t), Verdict::Drop, "7 known, 8 grows");
        assert!(is_fetch(b"* 3 FETCH (FLAGS ())\r\n") && !is_fetch(b"* 3 EXISTS\r\n"));
    }
}
