//! The wall clock in Unix seconds: what the store records (queue times, subscriptions, receipt
//! ticks) and what protocol dates are made from. One definition, so every module counts alike.

/// Seconds since the Unix epoch (0 if the system clock is set before it).
pub fn now() -> i64 {
    now_unsigned() as i64
}

/// [`now`] for the tables that keep unsigned times (push subscriptions).
pub fn now_unsigned() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
