//! Which of the relay's sources woke it, so that a wake-up polls those and no others.
//!
//! The relay waits on up to ten things (both sockets both ways, a timer, channels and watches);
//! polling every one on every wake-up cost more than the relaying itself (issue 19: a NOOP's
//! round trip woke the session three times and polled about a dozen idle sources). Each group
//! of sources gets a waker of its own that notes its bit and wakes the task; a source is polled
//! again when its group woke, or when it has no wake-up standing (it was never polled, or its
//! last poll was ready). A socket's reading and writing share one group: a TLS stream may
//! register either direction while polled for the other.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Wake, Waker};

/// A group of sources with a waker of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Client = 0,
    Provider = 1,
    Timer = 2,
    /// The interceptor, its channels, verdicts and shutdown.
    Other = 3,
}

impl Group {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The wake-ups of one relay.
pub struct Wakes {
    shared: Arc<Shared>,
    wakers: [Waker; 4],
}

struct Shared {
    /// Bits of the groups woken since the relay last looked.
    woken: AtomicU8,
    /// The task to wake.
    task: Mutex<Option<Waker>>,
}

struct GroupWaker {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for GroupWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.woken.fetch_or(self.bit, Ordering::AcqRel);
        let task = self.shared.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Default for Wakes {
    fn default() -> Self {
        let shared = Arc::new(Shared { woken: AtomicU8::new(0), task: Mutex::new(None) });
        let waker = |group: Group| Waker::from(Arc::new(GroupWaker { shared: shared.clone(), bit: group.bit() }));
        let wakers = [waker(Group::Client), waker(Group::Provider), waker(Group::Timer), waker(Group::Other)];
        Wakes { shared, wakers }
    }
}

impl Wakes {
    /// Notes the task that polls (`cx`) and takes the groups woken since the last call. Called
    /// before any source is polled, so that no wake-up falls between.
    pub fn begin(&self, cx: &Context<'_>) -> Woken {
        {
            let mut task = self.shared.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        Woken(self.shared.woken.swap(0, Ordering::AcqRel))
    }

    /// The waker to poll a source of `group` with.
    pub fn waker(&self, group: Group) -> &Waker {
        &self.wakers[group as usize]
    }
}

/// The groups woken, from [`Wakes::begin`].
#[derive(Debug, Clone, Copy)]
pub struct Woken(u8);

impl Woken {
    pub fn has(self, group: Group) -> bool {
        self.0 & group.bit() != 0
    }

    /// Whether any group woke (else the poll comes straight after the relay's own work).
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_group_wake_notes_its_bit_and_wakes_the_task() {
        let wakes = Wakes::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let cx = Context::from_waker(&task);
        let woken = wakes.begin(&cx);
        assert!(!woken.has(Group::Client) && !woken.has(Group::Other));
        wakes.waker(Group::Provider).wake_by_ref();
        // As a timer does: a waker kept, then woken by value.
        let kept = wakes.waker(Group::Timer).clone();
        kept.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        let woken = wakes.begin(&cx);
        assert!(woken.has(Group::Provider) && woken.has(Group::Timer));
        assert!(!woken.has(Group::Client) && !woken.has(Group::Other));
        let woken = wakes.begin(&cx);
        assert!(!woken.has(Group::Provider), "a wake-up is taken once");
    }
}
