//! When to notify which device, sans-I/O: new mail, the notifier's answers and the clock in;
//! what to send, store and forget out. The notifier task (`notifier`) does the I/O.
//!
//! As chatmail's relay does it: the first attempt at once; `200` done; `410` the token is dead
//! and deleted; anything else (or no answer) is tried again 8^n seconds after the n-th failure
//! (8, 64, 512, 4096 s), until the next attempt would be more than 5 hours after the first.
//! Unlike the relay, bursts are coalesced per token: while a notification for a device is under
//! way, more mail for it makes one more notification after it, not one each (the device fetches
//! everything new when woken); and new mail for a device whose notification waits for a retry
//! is tried at once, with a fresh 5 hours.

use std::collections::HashMap;

use crate::secret::Secret;
use crate::store::RetryEntry;

/// Base of the retry delays, seconds.
pub const BASE_DELAY: u64 = 8;
/// No attempt later than this after the first, seconds.
pub const DEADLINE: u64 = 5 * 60 * 60;

/// What the notifier answered to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `200`.
    Delivered,
    /// `410`: the token is no longer valid.
    Gone,
    /// Any other status, or no answer.
    Failed,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200 => Outcome::Delivered,
            410 => Outcome::Gone,
            _ => Outcome::Failed,
        }
    }
}

/// What the notifier task must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// POST the token now.
    Send(Secret),
    /// Keep this retry on disk (it replaces the token's earlier one).
    Persist(RetryEntry),
    /// The token's retry on disk is done with.
    Forget(Secret),
    /// The token is dead: delete it from every account.
    DeleteToken(Secret),
    /// The schedule ran out: no more attempts (`attempts` made).
    GaveUp { attempts: u32 },
}

#[derive(Debug, Clone, Copy)]
enum State {
    InFlight {
        first: u64,
        failures: u32,
        /// New mail came while it was under way: once more after it.
        again: bool,
    },
    Waiting {
        first: u64,
        failures: u32,
        due: u64,
    },
}

/// The schedule of every device token with a notification under way or waiting.
#[derive(Debug, Default)]
pub struct Schedule {
    tokens: HashMap<Vec<u8>, State>,
}

/// When the attempt after the `failures`-th failure (at `now`) is due; `None` when that is more
/// than [`DEADLINE`] after the `first` attempt.
pub fn next_attempt(first: u64, now: u64, failures: u32) -> Option<u64> {
    let due = now.checked_add(BASE_DELAY.checked_pow(failures)?)?;
    (due <= first.saturating_add(DEADLINE)).then_some(due)
}

impl Schedule {
    /// Takes back the retries stored before a restart.
    pub fn restore(&mut self, entries: Vec<RetryEntry>) {
        for e in entries {
            let state = State::Waiting { first: e.first, failures: e.attempts, due: e.due };
            self.tokens.insert(e.token.expose().to_vec(), state);
        }
    }

    /// New mail for a device with `token`.
    pub fn new_mail(&mut self, token: &Secret, now: u64) -> Vec<Effect> {
        let fresh = State::InFlight { first: now, failures: 0, again: false };
        match self.tokens.get_mut(token.expose()) {
            Some(State::InFlight { again, .. }) => {
                *again = true;
                Vec::new()
            }
            Some(state @ State::Waiting { .. }) => {
                *state = fresh;
                vec![Effect::Send(token.clone())]
            }
            None => {
                self.tokens.insert(token.expose().to_vec(), fresh);
                vec![Effect::Send(token.clone())]
            }
        }
    }

    /// The notifier answered the attempt for `token`.
    pub fn answered(&mut self, token: &Secret, outcome: Outcome, now: u64) -> Vec<Effect> {
        let Some(State::InFlight { first, failures, again }) = self.tokens.get(token.expose()).copied() else {
            return Vec::new();
        };
        let stored = failures > 0;
        let mut effects = Vec::new();
        match outcome {
            Outcome::Gone => {
                self.tokens.remove(token.expose());
                effects.push(Effect::DeleteToken(token.clone()));
            }
            Outcome::Delivered if again => {
                self.tokens.insert(token.expose().to_vec(), State::InFlight { first: now, failures: 0, again: false });
                effects.push(Effect::Send(token.clone()));
            }
            Outcome::Delivered => {
                self.tokens.remove(token.expose());
            }
            Outcome::Failed => {
                let failures = failures + 1;
                match next_attempt(first, now, failures) {
                    Some(due) => {
                        self.tokens.insert(token.expose().to_vec(), State::Waiting { first, failures, due });
                        let entry = RetryEntry { token: token.clone(), first, attempts: failures, due };
                        return vec![Effect::Persist(entry)];
                    }
                    None => {
                        self.tokens.remove(token.expose());
                        effects.push(Effect::GaveUp { attempts: failures });
                    }
                }
            }
        }
        if stored {
            effects.push(Effect::Forget(token.clone()));
        }
        effects
    }

    /// The retries due at `now`, now under way.
    pub fn due(&mut self, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        for (token, state) in &mut self.tokens {
            if let State::Waiting { first, failures, due } = *state
                && due <= now
            {
                *state = State::InFlight { first, failures, again: false };
                out.push(Effect::Send(Secret::new(token.clone())));
            }
        }
        out
    }

    /// When the next retry is due.
    pub fn next_due(&self) -> Option<u64> {
        self.tokens
            .values()
            .filter_map(|s| match s {
                State::Waiting { due, .. } => Some(*due),
                State::InFlight { .. } => None,
            })
            .min()
    }

    /// Tokens with a notification under way or waiting.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }
    fn send(s: &str) -> Effect {
        Effect::Send(tok(s))
    }

    #[test]
    fn delays_are_powers_of_eight_until_five_hours_after_the_first_attempt() {
        // The attempts of a token that always fails: 0, 8, 72, 584, 4680 s; the next (+32768 s)
        // would be past 5 h.
        let mut s = Schedule::default();
        let t = tok("openpgp:x");
        let mut now = 1000;
        assert_eq!(s.new_mail(&t, now), vec![send("openpgp:x")]);
        let mut at = vec![now];
        loop {
            let effects = s.answered(&t, Outcome::Failed, now);
            match effects.as_slice() {
                [Effect::Persist(e)] => {
                    assert_eq!((e.first, e.attempts), (1000, at.len() as u32));
                    assert_eq!(s.next_due(), Some(e.due));
                    assert!(s.due(e.due - 1).is_empty(), "not before it is due");
                    now = e.due;
                    assert_eq!(s.due(now), vec![send("openpgp:x")]);
                    at.push(now);
                }
                [Effect::GaveUp { attempts: 5 }, Effect::Forget(f)] => {
                    assert_eq!(f, &t);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(at, vec![1000, 1008, 1072, 1584, 5680]);
        assert!(s.is_empty() && s.next_due().is_none());
        assert_eq!(next_attempt(0, 17_999, 1), None, "8 s past the deadline");
        assert_eq!(next_attempt(0, 17_992, 1), Some(18_000), "exactly at the deadline");
        assert_eq!(next_attempt(0, 0, 40), None, "no overflow");
    }

    #[test]
    fn delivered_is_done_and_gone_deletes_the_token() {
        let mut s = Schedule::default();
        let (a, b) = (tok("a"), tok("b"));
        assert_eq!(s.new_mail(&a, 0), vec![send("a")]);
        assert_eq!(s.new_mail(&b, 0), vec![send("b")]);
        assert_eq!(s.answered(&a, Outcome::Delivered, 1), vec![]);
        assert_eq!(s.answered(&b, Outcome::Gone, 1), vec![Effect::DeleteToken(b.clone())]);
        assert!(s.is_empty());
        // A stored retry that then succeeds is forgotten on disk.
        s.new_mail(&a, 10);
        assert!(matches!(s.answered(&a, Outcome::Failed, 10).as_slice(), [Effect::Persist(_)]));
        assert_eq!(s.due(18), vec![send("a")]);
        assert_eq!(s.answered(&a, Outcome::Delivered, 18), vec![Effect::Forget(a.clone())]);
        assert_eq!(Outcome::of_status(200), Outcome::Delivered);
        assert_eq!(Outcome::of_status(410), Outcome::Gone);
        assert_eq!(Outcome::of_status(500), Outcome::Failed);
        assert_eq!(Outcome::of_status(201), Outcome::Failed, "only 200 counts, as for the relay");
    }

    #[test]
    fn bursts_are_coalesced_per_token() {
        let mut s = Schedule::default();
        let a = tok("a");
        assert_eq!(s.new_mail(&a, 0), vec![send("a")]);
        for _ in 0..10 {
            assert!(s.new_mail(&a, 0).is_empty(), "one under way");
        }
        // Mail came during the attempt: once more after it, then quiet.
        assert_eq!(s.answered(&a, Outcome::Delivered, 1), vec![send("a")]);
        assert_eq!(s.answered(&a, Outcome::Delivered, 2), vec![]);
        // New mail while a retry waits: tried at once, with a fresh window.
        s.new_mail(&a, 100);
        s.answered(&a, Outcome::Failed, 100);
        assert_eq!(s.new_mail(&a, 101), vec![send("a")]);
        match s.answered(&a, Outcome::Failed, 101).as_slice() {
            [Effect::Persist(e), ..] => assert_eq!((e.first, e.attempts, e.due), (101, 1, 109)),
            other => panic!("{other:?}"),
        }
        assert!(s.answered(&tok("unknown"), Outcome::Delivered, 1).is_empty());
    }

    #[test]
    fn restored_retries_are_sent_when_due() {
        let mut s = Schedule::default();
        s.restore(vec![RetryEntry { token: tok("a"), first: 0, attempts: 2, due: 600 }]);
        assert_eq!(s.next_due(), Some(600));
        assert_eq!(s.due(700), vec![send("a")]);
        // The third failure: 512 s later, still within 5 h of the first.
        match s.answered(&tok("a"), Outcome::Failed, 700).as_slice() {
            [Effect::Persist(e)] => assert_eq!((e.attempts, e.due), (3, 1212)),
            other => panic!("{other:?}"),
        }
    }
}
