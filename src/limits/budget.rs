//! One memory budget for the whole daemon, with a share per account (issue 23). Everything a
//! peer can make the proxy hold in proportion to its input, beyond a session's small fixed
//! buffers, is charged here before it is held: commands collected whole for a wing, responses
//! the proxy reads whole for its own commands, messages the OpenPGP gateway works on. A charge
//! that would pass `[limits] max_memory` in total, or `max_memory_per_account` for its account,
//! is refused and the peer gets a clear `NO [LIMIT]` / SMTP `452`, instead of the daemon
//! growing; dropping the [`Charge`] gives the bytes back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The budget; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    total: AtomicUsize,
    per_account: AtomicUsize,
    used: Mutex<Used>,
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct Used {
    total: usize,
    accounts: HashMap<Arc<str>, usize>,
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("the memory coi-proxy gives one account (max_memory_per_account) is in use")]
    Account,
    #[error("the memory coi-proxy gives all sessions (max_memory) is in use")]
    Total,
}

impl Budget {
    /// A budget of `total` bytes, `per_account` of them at most for one account.
    pub fn new(total: usize, per_account: usize) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                total: AtomicUsize::new(total),
                per_account: AtomicUsize::new(per_account),
                used: Mutex::default(),
                freed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// New limits (a reload); charges held now stay.
    pub fn set_limits(&self, total: usize, per_account: usize) {
        self.inner.total.store(total, Ordering::Relaxed);
        self.inner.per_account.store(per_account, Ordering::Relaxed);
    }

    /// `login`'s share.
    pub fn account(&self, login: &str) -> Share {
        Share { budget: self.clone(), login: login.into() }
    }

    /// Bytes charged now: in total, and for `login`.
    pub fn used(&self, login: &str) -> (usize, usize) {
        let used = self.inner.used.lock().expect("budget");
        (used.total, used.accounts.get(login).copied().unwrap_or(0))
    }

    fn take(&self, login: &Arc<str>, bytes: usize) -> Result<(), Exceeded> {
        let mut used = self.inner.used.lock().expect("budget");
        let mine = used.accounts.get(login).copied().unwrap_or(0);
        if mine.saturating_add(bytes) > self.inner.per_account.load(Ordering::Relaxed) {
            return Err(Exceeded::Account);
        }
        if used.total.saturating_add(bytes) > self.inner.total.load(Ordering::Relaxed) {
            return Err(Exceeded::Total);
        }
        used.total += bytes;
        *used.accounts.entry(login.clone()).or_default() += bytes;
        Ok(())
    }

    fn give(&self, login: &Arc<str>, bytes: usize) {
        if bytes == 0 {
            return;
        }
        {
            let mut used = self.inner.used.lock().expect("budget");
            used.total = used.total.saturating_sub(bytes);
            if let Some(mine) = used.accounts.get_mut(login) {
                *mine = mine.saturating_sub(bytes);
                if *mine == 0 {
                    used.accounts.remove(login);
                }
            }
        }
        self.inner.freed.notify_waiters();
    }
}

/// One account's share of the budget.
#[derive(Clone)]
pub struct Share {
    budget: Budget,
    login: Arc<str>,
}

impl Share {
    /// Charges `bytes`, or says which bound it would pass.
    pub fn charge(&self, bytes: usize) -> Result<Charge, Exceeded> {
        self.budget.take(&self.login, bytes)?;
        Ok(Charge { share: self.clone(), bytes })
    }

    /// An empty charge, to [`Charge::grow`] as bytes come.
    pub fn empty(&self) -> Charge {
        Charge { share: self.clone(), bytes: 0 }
    }

    /// As [`Share::charge`], waiting up to `wait` for other charges to be given back (work that
    /// may queue, like the gateway's, rather than be refused at once).
    pub async fn charge_within(&self, bytes: usize, wait: std::time::Duration) -> Result<Charge, Exceeded> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.budget.inner.freed.notified();
            match self.charge(bytes) {
                Ok(charge) => return Ok(charge),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    // A give-back wakes us; the timeout also covers a change of limits.
                    let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + WAKE), freed).await;
                }
            }
        }
    }
}

/// Longest sleep of a waiting charge between two tries.
const WAKE: std::time::Duration = std::time::Duration::from_millis(250);

/// Bytes charged; given back when dropped.
pub struct Charge {
    share: Share,
    bytes: usize,
}

impl Charge {
    /// Charges `more` bytes to this charge; on `Err` it is unchanged.
    pub fn grow(&mut self, more: usize) -> Result<(), Exceeded> {
        self.share.budget.take(&self.share.login, more)?;
        self.bytes += more;
        Ok(())
    }

    /// Makes sure at least `bytes` are charged, growing in steps of `step` (fewer trips to
    /// the lock for a buffer that grows by small reads).
    pub fn cover(&mut self, bytes: usize, step: usize) -> Result<(), Exceeded> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let want = bytes.div_ceil(step.max(1)) * step.max(1);
        self.grow(want - self.bytes).or_else(|_| self.grow(bytes - self.bytes))
    }

    /// Gives everything back, keeping the charge for reuse.
    pub fn release(&mut self) {
        self.share.budget.give(&self.share.login, std::mem::take(&mut self.bytes));
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge").field("bytes", &self.bytes).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_and_the_total_are_bounded_and_given_back() {
        let budget = Budget::new(100, 60);
        let (a, b, c) = (budget.account("a"), budget.account("b"), budget.account("c"));
        let a1 = a.charge(50).unwrap();
        assert_eq!(a.charge(11).err(), Some(Exceeded::Account));
        let mut b1 = b.charge(40).unwrap();
        assert_eq!(c.charge(11).err(), Some(Exceeded::Total));
        assert_eq!(budget.used("a"), (90, 50));
        b1.release();
        assert_eq!(budget.used("b"), (50, 0));
        drop(a1);
        assert_eq!(budget.used("a"), (0, 0));
        assert!(c.charge(60).is_ok());
    }

    #[test]
    fn a_refused_growth_leaves_the_charge_as_it_was() {
        let budget = Budget::new(100, 100);
        let share = budget.account("a");
        let mut charge = share.empty();
        charge.cover(10, 64).unwrap();
        assert_eq!(charge.bytes(), 64);
        charge.cover(90, 64).unwrap();
        assert_eq!(charge.bytes(), 90, "the last step is cut to what is needed");
        assert!(charge.grow(11).is_err());
        assert_eq!(charge.bytes(), 90);
        budget.set_limits(200, 200);
        charge.grow(11).unwrap();
        drop(charge);
        assert_eq!(budget.used("a"), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_charge_gets_what_is_given_back() {
        let budget = Budget::new(100, 100);
        let share = budget.account("a");
        let held = share.charge(80).unwrap();
        let waiting = {
            let share = share.clone();
            tokio::spawn(
                async move { share.charge_within(50, std::time::Duration::from_secs(5)).await.map(|c| c.bytes()) },
            )
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        assert_eq!(waiting.await.unwrap(), Ok(50));
        let held = share.charge(80).unwrap();
        let refused = share.charge_within(50, std::time::Duration::from_millis(100)).await;
        assert_eq!(refused.err(), Some(Exceeded::Account));
        drop(held);
    }
}
