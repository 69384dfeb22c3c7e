//! The memory a run may make the server hold: its memories and tables, and the host buffers it
//! fills (stdout, stderr, stdin in flight, the recorder's log), all under one limit.
//! Charges only grow during a run (but for scratch space released again), so `used` is also
//! the run's peak.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A run's memory limit and what is charged against it so far. Shared by the store's resource
/// limiter, the output pipes and the recorder.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, nothing charged.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Charges `bytes` if they fit under the limit; returns whether they were charged.
    pub fn try_charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Charges up to `bytes`, as many as fit; returns how many were charged.
    pub fn charge_up_to(&self, bytes: usize) -> usize {
        let mut charged = 0;
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                charged = bytes.min(self.limit.saturating_sub(used));
                Some(used + charged)
            });
        charged
    }

    /// Charges `bytes` whatever the limit: for what a run needs to start at all. Past the
    /// limit, every later charge fails.
    pub fn charge(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_add(bytes))
            });
    }

    /// Returns `bytes` charged earlier for scratch space that is freed again.
    pub fn release(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Bytes charged so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryBudget;

    #[test]
    fn charges_never_pass_the_limit() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_charge(60));
        assert!(!budget.try_charge(41));
        assert_eq!(budget.charge_up_to(50), 40);
        assert_eq!(budget.charge_up_to(1), 0);
        assert!(budget.try_charge(0));
        assert_eq!(budget.used(), 100);
        assert!(!MemoryBudget::new(10).try_charge(usize::MAX));
    }
}
