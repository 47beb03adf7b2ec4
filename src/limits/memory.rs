//! Memory freed by ended sessions goes back to the OS. glibc keeps freed heap memory in its
//! per-thread arenas; after an attack by many sessions (large replies in flight) the daemon's
//! RSS stayed at its peak although nothing used it any more (issue 23). When a session ends,
//! the free pages of every arena are returned (`malloc_trim`), at most once a second and off
//! the runtime. Elsewhere than glibc this does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// When memory was last returned (milliseconds since the epoch).
static LAST: AtomicU64 = AtomicU64::new(0);
/// At most this often (milliseconds): trimming walks every arena.
const EVERY_MS: u64 = 1000;

/// A session ended: returns freed memory to the OS, unless that was done less than a second
/// ago (then the next session's end does it).
pub fn session_ended() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) < EVERY_MS
        || LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn_blocking(trim);
    } else {
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    #[test]
    fn returning_memory_is_harmless() {
        let big = vec![1u8; 8 << 20];
        drop(big);
        super::session_ended();
        super::session_ended();
    }
}
