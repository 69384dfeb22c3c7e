//! Memories and tables charged to the run's memory budget, together with its host buffers.

use std::sync::Arc;

use wasmtime::ResourceLimiter;

use crate::budget::MemoryBudget;

/// Host bytes per table element (a reference is at most a pointer).
const TABLE_ELEMENT_BYTES: usize = 8;

/// A memory or table growth refused because the run's memory limit is reached. The guest traps
/// with this message.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit exceeded: growing a {what} by {delta} bytes would take the run past its limit \
     of {limit} bytes ({used} in use by its memories, tables and host buffers)"
)]
pub struct LimitExceeded {
    what: &'static str,
    delta: usize,
    used: usize,
    limit: usize,
}

/// Charges every memory and table growth of a store to its run's [`MemoryBudget`].
pub struct BudgetLimiter {
    budget: Arc<MemoryBudget>,
}

impl BudgetLimiter {
    /// A limiter charging `budget`.
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        BudgetLimiter { budget }
    }

    fn grow(&self, what: &'static str, delta: usize) -> wasmtime::Result<bool> {
        if self.budget.try_charge(delta) {
            Ok(true)
        } else {
            Err(LimitExceeded {
                what,
                delta,
                used: self.budget.used(),
                limit: self.budget.limit(),
            }
            .into())
        }
    }
}

impl ResourceLimiter for BudgetLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow("memory", desired.saturating_sub(current))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        self.grow("table", elements.saturating_mul(TABLE_ELEMENT_BYTES))
    }
}
