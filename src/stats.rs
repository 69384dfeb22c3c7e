//! Per-module run statistics kept in memory for the web page and `iota modules`: runs, failed
//! runs and duration percentiles over each module's most recent runs.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Durations kept per module for the percentiles.
pub const WINDOW: usize = 1024;

/// Run counts and recent durations by module name, since the server started.
#[derive(Debug, Default)]
pub struct RunStats {
    modules: Mutex<HashMap<String, ModuleRuns>>,
}

#[derive(Debug, Default)]
struct ModuleRuns {
    runs: u64,
    failed: u64,
    last_run_unix_nanos: u64,
    durations: VecDeque<u64>,
}

/// One module's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModuleRunStats {
    /// Module name.
    pub name: String,
    /// Runs since the server started.
    pub runs: u64,
    /// Of which failed: trapped, timed out, exited non-zero, were cancelled or failed in the host.
    pub failed: u64,
    /// `failed / runs`.
    pub error_rate: f64,
    /// Median run duration over the last `window` runs, in nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile (nearest rank) over the same runs.
    pub p99_ns: u64,
    /// Runs the percentiles are over (at most [`WINDOW`]).
    pub window: usize,
    /// When the last run started, nanoseconds since the Unix epoch.
    pub last_run_unix_nanos: u64,
}

impl RunStats {
    /// Counts a finished run of `module` that started at `start_unix_nanos` and lasted
    /// `duration_ns`.
    pub fn record(&self, module: &str, start_unix_nanos: u64, duration_ns: u64, failed: bool) {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match modules.get_mut(module) {
            Some(entry) => entry,
            None => modules.entry(module.to_string()).or_default(),
        };
        entry.runs += 1;
        entry.failed += u64::from(failed);
        entry.last_run_unix_nanos = entry.last_run_unix_nanos.max(start_unix_nanos);
        if entry.durations.len() == WINDOW {
            entry.durations.pop_front();
        }
        entry.durations.push_back(duration_ns);
    }

    /// Forgets `module` (deleted).
    pub fn forget(&self, module: &str) {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        modules.remove(module);
    }

    /// Every module's figures, by name.
    pub fn snapshot(&self) -> Vec<ModuleRunStats> {
        let modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<ModuleRunStats> = modules
            .iter()
            .map(|(name, m)| {
                let mut sorted: Vec<u64> = m.durations.iter().copied().collect();
                sorted.sort_unstable();
                ModuleRunStats {
                    name: name.clone(),
                    runs: m.runs,
                    failed: m.failed,
                    error_rate: if m.runs == 0 {
                        0.0
                    } else {
                        m.failed as f64 / m.runs as f64
                    },
                    p50_ns: percentile(&sorted, 50),
                    p99_ns: percentile(&sorted, 99),
                    window: sorted.len(),
                    last_run_unix_nanos: m.last_run_unix_nanos,
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// The nearest-rank `p`th percentile of `sorted` (0 when empty).
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_and_nearest_rank_percentiles() {
        let stats = RunStats::default();
        for ms in 1..=100u64 {
            stats.record("a", ms, ms * 1_000_000, ms % 10 == 0);
        }
        stats.record("b", 5, 7, false);
        let all = stats.snapshot();
        assert_eq!(all.len(), 2);
        let a = &all[0];
        assert_eq!((a.runs, a.failed, a.window), (100, 10, 100));
        assert_eq!(a.error_rate, 0.1);
        assert_eq!(a.p50_ns, 50_000_000);
        assert_eq!(a.p99_ns, 99_000_000);
        assert_eq!(a.last_run_unix_nanos, 100);
        assert_eq!((all[1].p50_ns, all[1].p99_ns), (7, 7));
        stats.forget("a");
        assert_eq!(stats.snapshot().len(), 1);
    }

    #[test]
    fn the_window_keeps_the_latest_runs() {
        let stats = RunStats::default();
        for i in 0..(WINDOW as u64 + 10) {
            stats.record("a", i, i, false);
        }
        let a = &stats.snapshot()[0];
        assert_eq!(a.window, WINDOW);
        assert_eq!(a.runs, WINDOW as u64 + 10);
        assert_eq!(a.p50_ns, 10 + WINDOW as u64 / 2 - 1);
    }
}
