//! The last traces, kept in memory for `GET /traces` when no collector is at hand.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::TraceId;

use super::TraceRecord;

/// A bounded buffer of the most recent traces.
#[derive(Debug)]
pub struct RecentTraces {
    capacity: usize,
    traces: Mutex<VecDeque<Arc<TraceRecord>>>,
}

impl RecentTraces {
    /// Keeps at most `capacity` traces.
    pub fn new(capacity: usize) -> Self {
        RecentTraces {
            capacity,
            traces: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Adds a trace, forgetting the oldest beyond the capacity.
    pub fn push(&self, trace: Arc<TraceRecord>) {
        if self.capacity == 0 {
            return;
        }
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        let evicted = if traces.len() == self.capacity {
            traces.pop_front()
        } else {
            None
        };
        traces.push_back(trace);
        drop(traces);
        // Freed, if it was the last reference, without holding up the other runs' pushes.
        drop(evicted);
    }

    /// The traces, newest first.
    pub fn list(&self) -> Vec<Arc<TraceRecord>> {
        let traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        traces.iter().rev().cloned().collect()
    }

    /// One trace by id.
    pub fn get(&self, id: TraceId) -> Option<Arc<TraceRecord>> {
        let traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        traces.iter().rev().find(|t| t.trace_id == id).cloned()
    }
}
