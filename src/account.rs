//! One account as the whole proxy sees it (the floor: no wing, no edge).

/// What the account worker has decided so far (monotonic counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Ordinary messages left in INBOX.
    pub kept: u64,
    /// Chat messages moved out of INBOX.
    pub moved: u64,
}
