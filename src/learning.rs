//! Learning which calls are short: after a module's first runs, functions the cost model times
//! but whose calls proved short (many calls, a short mean) are counted instead, in a version of
//! the module re-instrumented in the background.
//!
//! Static counting ([`iota_instrument::CallTiming`]) is exact about what it counts: functions
//! whose every call is bounded. Real programs spend most of their calls in functions it cannot
//! bound (a loop, a call through a table) that are nevertheless always quick: CPython's
//! dictionary and reference-count helpers, say. Timing each of those costs two host calls and
//! two clock reads. So the server watches the per-function totals of a module version's first
//! runs, and once it has seen enough, re-instruments the module with the functions whose mean
//! call was short counted too ([`iota_instrument::Timing::Learned`]). Their calls stay exactly
//! counted; a rare long call of one of them is no longer a span of its own (its time shows in
//! its caller's self time). Functions with long mean calls stay timed, so calls that take long
//! because they do much work stay spans.

use std::sync::Arc;

use crate::registry::LoadedModule;
use crate::trace::TraceRecord;

/// A version that has learned which calls to count: re-instrument it so.
pub struct LearnRequest {
    /// The module's name.
    pub name: String,
    /// The version that learned.
    pub from: Arc<LoadedModule>,
    /// Hook ids to count from now on.
    pub ids: Vec<u32>,
}

/// Where finished runs send what they taught.
pub type Learner = tokio::sync::mpsc::UnboundedSender<LearnRequest>;

/// When and what to learn.
#[derive(Debug, Clone, Copy)]
pub struct LearnSettings {
    /// Learn at all (the server's default; a module may opt out at upload).
    pub enabled: bool,
    /// Runs to watch before learning.
    pub after_runs: u64,
    /// Timed calls to watch before learning.
    pub after_calls: u64,
    /// A function whose mean call is at most this many nanoseconds is counted from then on.
    pub mean_ns: u64,
    /// ... if it made at least this many calls while watched.
    pub min_calls: u64,
}

/// What one module version's runs showed so far.
#[derive(Debug)]
pub struct Learning {
    settings: LearnSettings,
    runs: u64,
    timed_calls: u64,
    /// Per hook id: calls and total nanoseconds while watched.
    totals: Vec<(u64, u64)>,
    done: bool,
    /// Learning found functions to count (and asked for a re-instrumented version).
    taught: bool,
}

impl Learning {
    /// Watches a version.
    pub fn new(settings: LearnSettings) -> Self {
        Learning {
            settings,
            runs: 0,
            timed_calls: 0,
            totals: Vec::new(),
            done: false,
            taught: false,
        }
    }

    /// Where learning stands: `watching` runs, `re-instrumenting` with what they taught, or
    /// `nothing to learn`.
    pub fn state(&self) -> &'static str {
        match (self.done, self.taught) {
            (false, _) => "watching",
            (true, true) => "re-instrumenting",
            (true, false) => "nothing to learn",
        }
    }

    /// Adds a run's totals; once enough is seen (and only once), the hook ids to count from
    /// now on.
    pub fn observe(&mut self, trace: &TraceRecord) -> Option<Vec<u32>> {
        if self.done {
            return None;
        }
        self.runs += 1;
        let functions = trace.names().functions() as usize;
        for (id, aggregate) in trace.function_totals() {
            // The module's own timed functions (not host calls or manual spans).
            if id as usize >= functions || trace.is_counted(id) {
                continue;
            }
            if self.totals.len() <= id as usize {
                self.totals.resize(id as usize + 1, (0, 0));
            }
            let total = &mut self.totals[id as usize];
            total.0 += aggregate.calls;
            total.1 += aggregate.total_ns;
            self.timed_calls += aggregate.calls;
        }
        if self.runs < self.settings.after_runs || self.timed_calls < self.settings.after_calls {
            return None;
        }
        self.done = true;
        let learned: Vec<u32> = self
            .totals
            .iter()
            .enumerate()
            .filter(|(_, (calls, total))| {
                *calls >= self.settings.min_calls && total / calls.max(&1) <= self.settings.mean_ns
            })
            .map(|(id, _)| id as u32)
            .collect();
        self.taught = !learned.is_empty();
        self.taught.then_some(learned)
    }

    /// Forgets that learning was done, so a later run can ask again (the attempt failed).
    pub fn retry(&mut self) {
        self.done = false;
        self.taught = false;
    }
}
