//! The process-wide memory budget (`--max-memory`): what every session
//! holds, as each estimates it (`Session::memory_bytes`). Over it, new
//! sessions and growth are refused, and the largest outboxes are ended
//! first (content is never dropped).

/// A new session is only created with at least this much memory left in
/// the budget (a session that cannot hold anything is of no use).
pub(super) const NEW_SESSION_ROOM: usize = 64 * 1024;

/// Outboxes smaller than this are never ended to make memory: ending
/// them would not help, the content is what holds the memory.
pub(super) const SHED_MIN_OUTBOX: usize = 64 * 1024;

#[derive(Debug)]
pub(super) struct MemoryBudget {
    limit: usize,
    used: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        MemoryBudget { limit, used: 0 }
    }

    pub fn used(&self) -> usize {
        self.used
    }

    /// How much any session may still grow by.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    pub fn is_over(&self) -> bool {
        self.used > self.limit
    }

    /// Replaces a session's `counted` figure with `now`.
    pub fn recount(&mut self, counted: &mut usize, now: usize) {
        self.used = self.used - *counted + now;
        *counted = now;
    }

    /// A session (counted as `counted`) is gone.
    pub fn release(&mut self, counted: usize) {
        self.used -= counted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_move_with_recounts_and_releases() {
        let mut budget = MemoryBudget::new(100);
        let (mut a, mut b) = (0, 0);
        budget.recount(&mut a, 60);
        budget.recount(&mut b, 30);
        assert_eq!(
            (budget.used(), budget.room(), budget.is_over()),
            (90, 10, false)
        );
        budget.recount(&mut a, 80);
        assert!(budget.is_over());
        assert_eq!(budget.room(), 0);
        budget.release(b);
        assert_eq!(budget.used(), 80);
    }
}
