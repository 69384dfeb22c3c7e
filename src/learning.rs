//! Learning which calls are short: after a module's first runs, functions the cost model times
//! but whose calls proved short (many calls, a short mean) are counted instead, in a version of
//! the module re-instrumented in the background; later runs of that version audit it.
//!
//! Static counting ([`iota_instrument::CallTiming`]) is exact about what it counts: functions
//! whose every call is bounded. Real programs spend most of their calls in functions it cannot
//! bound (a loop, a call through a table) that are nevertheless always quick: CPython's
//! dictionary and reference-count helpers, say. Timing each of those costs two host calls and
//! two clock reads. So the server watches the per-function totals of a module version's first
//! runs, and once it has seen enough, re-instruments the module with the functions whose mean
//! call was short counted too ([`iota_instrument::Timing::Learned`]), unless one of their calls
//! reached the module's minimum span duration. Their calls stay exactly counted; a rare long
//! call of one of them is no longer a span of its own (its time shows in its caller's self
//! time). Functions with long mean calls stay timed, so calls that take long because they do
//! much work stay spans.
//!
//! What was learned is checked again: in each run of a learned version, each learned function
//! is audited with a chance of one in [`LearnSettings::audit_every`]: switched back to the hooks
//! (the module's counters double as switches, [`iota_instrument::SWITCH_EXPORT_PREFIX`]: a call
//! runs the function's traced twin), so that run times it as the first runs did. A learned
//! function whose calls in an audit are no longer short on average (the longest left out), or
//! that reached the module's minimum span duration in two audits, is timed again, in a version
//! re-instrumented without it.
//!
//! Every version keeps watching the functions it times, window by window: code the first runs
//! never reached (another request, another script) is learned too, once its calls prove far
//! shorter than the threshold and make a good share of the window's timed calls.

use std::sync::Arc;

use crate::registry::LoadedModule;
use crate::trace::recorder::Aggregate;

/// A version that has learned which calls to count: re-instrument it so.
pub struct LearnRequest {
    /// The module's name.
    pub name: String,
    /// The version that learned.
    pub from: Arc<LoadedModule>,
    /// Hook ids to count from now on (the others are timed).
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
    /// In a run of a learned version, each learned function is audited (timed again) with a
    /// chance of one in this many (0: never).
    pub audit_every: u64,
}

/// What the watched or audited runs showed of one function.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    calls: u64,
    total_ns: u64,
    /// Runs with a call at least as long as the module's minimum span duration.
    long_runs: u64,
}

impl Seen {
    fn short(&self, settings: &LearnSettings) -> bool {
        self.calls >= settings.min_calls && self.total_ns / self.calls.max(1) <= settings.mean_ns
    }
}

/// What one module version's runs showed so far: a first version watches its runs to learn
/// from; a learned version audits some of its runs, and keeps watching the functions it times.
#[derive(Debug)]
pub struct Learning {
    settings: LearnSettings,
    /// For a learned version: the hook ids it counts because an earlier version learned so.
    learned: Option<Vec<u32>>,
    /// Per hook id: the function is one of `learned`.
    is_learned: Vec<bool>,
    /// What runs showed of the functions timed in every run, since the window began.
    window: Window,
    /// Windows that taught nothing.
    windows: u64,
    /// What audits showed of the learned functions, per hook id.
    audits: Vec<Seen>,
    /// Learning found functions to count, or to time again, and asked for a re-instrumented
    /// version.
    done: bool,
}

/// Runs watched since a point, and what they showed of the functions they timed.
#[derive(Debug, Default)]
struct Window {
    runs: u64,
    timed_calls: u64,
    /// Per hook id.
    seen: Vec<Seen>,
}

impl Window {
    fn full(&self, settings: &LearnSettings) -> bool {
        self.runs >= settings.after_runs && self.timed_calls >= settings.after_calls
    }

    fn seen(&self, id: u32) -> Seen {
        self.seen.get(id as usize).copied().unwrap_or_default()
    }

    /// The functions whose calls proved short by `settings`, none of them as long as the
    /// minimum span duration.
    fn short(&self, settings: &LearnSettings) -> Vec<u32> {
        (0..self.seen.len() as u32)
            .filter(|&id| self.seen(id).short(settings) && self.seen(id).long_runs == 0)
            .collect()
    }
}

/// Adds one run's `aggregate` of function `id` to `seen`.
fn add(seen: &mut Vec<Seen>, id: u32, aggregate: &Aggregate, min_span_ns: u64) {
    if seen.len() <= id as usize {
        seen.resize(id as usize + 1, Seen::default());
    }
    let seen = &mut seen[id as usize];
    seen.calls += aggregate.calls;
    seen.total_ns += aggregate.total_ns;
    seen.long_runs += u64::from(min_span_ns > 0 && aggregate.max_ns >= min_span_ns);
}

/// A learned version learns more only from functions this many times shorter on average than
/// [`LearnSettings::mean_ns`]: a function timed again because it grew long is not learned back
/// as soon as it is a little shorter.
const RELEARN_MARGIN: u64 = 4;

/// ... and only if they made at least one timed call in this many of the window's: a version
/// costs a compile, which a few borderline functions do not repay.
const RELEARN_SHARE: u64 = 4;

impl Learning {
    /// Watches a first version.
    pub fn new(settings: LearnSettings) -> Self {
        Self::with(settings, None)
    }

    /// Audits a version that counts the functions `learned` because an earlier one learned
    /// so, and watches the functions it times.
    pub fn auditing(settings: LearnSettings, learned: Vec<u32>) -> Self {
        Self::with(settings, Some(learned))
    }

    fn with(settings: LearnSettings, learned: Option<Vec<u32>>) -> Self {
        let mut is_learned = Vec::new();
        for &id in learned.iter().flatten() {
            if is_learned.len() <= id as usize {
                is_learned.resize(id as usize + 1, false);
            }
            is_learned[id as usize] = true;
        }
        Learning {
            settings,
            learned,
            is_learned,
            window: Window::default(),
            windows: 0,
            audits: Vec::new(),
            done: false,
        }
    }

    /// Where learning stands: `re-instrumenting` with what runs taught; else, for a learned
    /// version that audits, `auditing`, and `watching` for any other.
    pub fn state(&self) -> &'static str {
        match &self.learned {
            _ if self.done => "re-instrumenting",
            Some(learned) if self.settings.audit_every > 0 && !learned.is_empty() => "auditing",
            _ => "watching",
        }
    }

    /// Which of a learned version's `count` learned functions the run about to start times
    /// again (audits), by their place among them: each with a chance of one in
    /// [`LearnSettings::audit_every`], on its own. At random, not every n-th run, so that no
    /// workload that repeats its requests in turn has the same one audited each time; function
    /// by function, so that what audits cost is spread over the runs (a run times about one
    /// learned function in `audit_every`) instead of falling on one run in `audit_every`, which
    /// would then take as long as the first runs did.
    pub fn audited_next_run(&self, count: usize) -> Vec<usize> {
        let every = self.settings.audit_every;
        if self.learned.is_none() || self.done || every == 0 {
            return Vec::new();
        }
        if every == 1 {
            return (0..count).collect();
        }
        // The gaps between audited functions are geometric: one draw per audited function,
        // not one per learned function.
        let stay = 1.0 - 1.0 / every as f64;
        let mut audited = Vec::new();
        let mut next = 0usize;
        loop {
            let draw: f64 = 1.0 - rand::random::<f64>(); // in (0, 1]
            let gap = (draw.ln() / stay.ln()).floor();
            next = next.saturating_add(if gap < count as f64 {
                gap as usize
            } else {
                count
            });
            if next >= count {
                return audited;
            }
            audited.push(next);
            next += 1;
        }
    }

    /// Adds a finished run's totals of the module's functions it timed (`audited`: some of its
    /// learned functions were timed too; calls from `min_span_ns` on are spans, 0: every call).
    /// Once what was seen says so, and only once, the hook ids to count from now on:
    ///
    /// - a first version, once its first window is full (enough runs and timed calls): the
    ///   functions whose calls proved short, none of them as long as the minimum span duration;
    /// - a learned version, after an audit that showed learned functions grown long: the others;
    /// - any version, once a later window of its timed functions is full (for a learned
    ///   version, its first too) and some of them proved far shorter than the threshold (code
    ///   the first runs never reached, say), with at least a quarter of the window's timed
    ///   calls between them: those too.
    ///
    /// A window that teaches nothing is followed by the next.
    pub fn observe(
        &mut self,
        timed: impl IntoIterator<Item = (u32, Aggregate)>,
        audited: bool,
        min_span_ns: u64,
    ) -> Option<Vec<u32>> {
        if self.done {
            return None;
        }
        self.window.runs += 1;
        // In an audit, learned functions whose calls were long on average (the longest call
        // left out: one call the machine preempted does not make a function long).
        let mut grew = Vec::new();
        for (id, aggregate) in timed {
            if self.is_learned.get(id as usize).copied().unwrap_or(false) {
                let others = aggregate.calls.saturating_sub(1).max(1);
                if audited
                    && aggregate.calls >= self.settings.min_calls
                    && aggregate.total_ns.saturating_sub(aggregate.max_ns) / others
                        > self.settings.mean_ns
                {
                    grew.push(id);
                }
                add(&mut self.audits, id, &aggregate, min_span_ns);
            } else {
                add(&mut self.window.seen, id, &aggregate, min_span_ns);
                self.window.timed_calls += aggregate.calls;
            }
        }
        let counted = match &self.learned {
            None => {
                if !self.window.full(&self.settings) {
                    return None;
                }
                let counted = if self.windows == 0 {
                    self.window.short(&self.settings)
                } else {
                    self.more_to_learn()
                };
                if counted.is_empty() {
                    self.next_window();
                    return None;
                }
                counted
            }
            Some(learned) => {
                let audits = |id: u32| self.audits.get(id as usize).copied().unwrap_or_default();
                let still_short = |id: u32| !grew.contains(&id) && audits(id).long_runs < 2;
                let mut counted: Vec<u32> = learned
                    .iter()
                    .copied()
                    .filter(|&id| still_short(id))
                    .collect();
                let revoked = counted.len() < learned.len();
                let more = self.more_to_learn();
                if !revoked && more.is_empty() {
                    if self.window.full(&self.settings) {
                        self.next_window();
                    }
                    return None;
                }
                counted.extend(more);
                counted.sort_unstable();
                counted
            }
        };
        // (A learned version that revoked everything asks too: its next version times them
        // all.)
        self.done = true;
        Some(counted)
    }

    /// Starts a new window: what the last one showed taught nothing.
    fn next_window(&mut self) {
        self.windows += 1;
        self.window = Window::default();
    }

    /// For a learned version whose window is full: its timed functions short enough, and
    /// called enough, to learn too (see [`Self::observe`]).
    fn more_to_learn(&self) -> Vec<u32> {
        let window = &self.window;
        if !window.full(&self.settings) {
            return Vec::new();
        }
        let far_shorter = LearnSettings {
            mean_ns: self.settings.mean_ns / RELEARN_MARGIN,
            ..self.settings
        };
        let more = window.short(&far_shorter);
        let calls: u64 = more.iter().map(|&id| window.seen(id).calls).sum();
        if calls.saturating_mul(RELEARN_SHARE) < window.timed_calls {
            return Vec::new();
        }
        more
    }

    /// Forgets that learning was done, so that later runs can ask again (the attempt failed):
    /// once a new window is full, or an audit shows again what the last one did. Not the next
    /// run at once: an attempt that keeps failing costs a compile per window, not per run.
    pub fn retry(&mut self) {
        self.done = false;
        self.window = Window::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: LearnSettings = LearnSettings {
        enabled: true,
        after_runs: 2,
        after_calls: 100,
        mean_ns: 1_000,
        min_calls: 10,
        audit_every: 3,
    };

    /// A run's totals: per id, calls, and in nanoseconds each call but the longest, and that.
    fn run(functions: &[(u32, u64, u64, u64)]) -> Vec<(u32, Aggregate)> {
        functions
            .iter()
            .map(|&(id, calls, typical_ns, max_ns)| {
                let total_ns = (calls - 1) * typical_ns + max_ns;
                let aggregate = Aggregate {
                    calls,
                    total_ns,
                    self_ns: total_ns,
                    max_ns,
                };
                (id, aggregate)
            })
            .collect()
    }

    #[test]
    fn learns_short_functions_once_enough_is_seen() {
        let mut learning = Learning::new(SETTINGS);
        let runs = run(&[(1, 100, 50, 200), (2, 100, 50_000, 90_000), (3, 4, 10, 10)]);
        assert_eq!(learning.observe(runs.clone(), false, 0), None, "one run");
        assert_eq!(learning.state(), "watching");
        // 2 is long on average; 3 made too few calls to tell.
        assert_eq!(learning.observe(runs, false, 0), Some(vec![1]));
        assert_eq!(learning.state(), "re-instrumenting");
        assert_eq!(learning.observe(run(&[(1, 100, 50, 50)]), false, 0), None);
    }

    #[test]
    fn a_first_version_whose_first_runs_showed_nothing_short_keeps_watching() {
        let mut learning = Learning::new(SETTINGS);
        let long = run(&[(1, 100, 50_000, 60_000)]);
        assert_eq!(learning.observe(long.clone(), false, 0), None);
        assert_eq!(learning.observe(long, false, 0), None, "nothing short");
        assert_eq!(learning.state(), "watching");
        // Later windows learn what proves far shorter, with a good share of the calls.
        let later = run(&[(1, 100, 50_000, 60_000), (2, 100, 50, 60)]);
        assert_eq!(learning.observe(later.clone(), false, 0), None);
        assert_eq!(learning.observe(later, false, 0), Some(vec![2]));
    }

    #[test]
    fn after_a_failed_attempt_a_new_window_asks_again() {
        let mut learning = Learning::new(SETTINGS);
        let runs = run(&[(1, 100, 50, 60)]);
        learning.observe(runs.clone(), false, 0);
        assert_eq!(learning.observe(runs.clone(), false, 0), Some(vec![1]));
        learning.retry();
        assert_eq!(learning.state(), "watching");
        assert_eq!(
            learning.observe(runs.clone(), false, 0),
            None,
            "not at once"
        );
        assert_eq!(learning.observe(runs, false, 0), Some(vec![1]));
    }

    #[test]
    fn a_call_as_long_as_the_minimum_span_is_never_learned() {
        let mut learning = Learning::new(SETTINGS);
        learning.observe(run(&[(1, 100, 50, 60), (2, 100, 50, 60)]), false, 10_000);
        let second = run(&[(1, 100, 50, 60), (2, 100, 50, 10_000)]);
        assert_eq!(learning.observe(second, false, 10_000), Some(vec![1]));
    }

    #[test]
    fn each_learned_function_is_audited_in_one_run_in_audit_every_on_its_own() {
        let learning = Learning::auditing(SETTINGS, vec![1, 2, 3, 4]);
        let mut audits = [0usize; 4];
        let mut together = 0;
        for _ in 0..30_000 {
            let audited = learning.audited_next_run(4);
            assert!(audited.windows(2).all(|w| w[0] < w[1]), "{audited:?}");
            for &k in &audited {
                audits[k] += 1;
            }
            together += usize::from(audited.starts_with(&[0, 1]));
        }
        // 10,000 each expected, with a standard deviation of 82: this is 12 of them either
        // way; both of the first two (3,333 expected, deviation 54) says they are independent.
        for audits in audits {
            assert!((9_000..=11_000).contains(&audits), "{audits} audits");
        }
        assert!((3_000..=3_700).contains(&together), "{together} together");
        let always = LearnSettings {
            audit_every: 1,
            ..SETTINGS
        };
        assert_eq!(
            Learning::auditing(always, vec![1, 2]).audited_next_run(2),
            [0, 1]
        );
        assert!(
            Learning::new(SETTINGS).audited_next_run(4).is_empty(),
            "a first version"
        );
        let never = LearnSettings {
            audit_every: 0,
            ..SETTINGS
        };
        assert!(
            Learning::auditing(never, vec![1])
                .audited_next_run(1)
                .is_empty()
        );
    }

    #[test]
    fn audits_time_again_what_grew_long() {
        let mut learning = Learning::auditing(SETTINGS, vec![1, 2, 3]);
        assert_eq!(learning.state(), "auditing");
        // Runs that are no audit teach nothing, whatever they show.
        let grown = run(&[(1, 100, 50, 60), (2, 100, 50_000, 60_000), (3, 10, 50, 60)]);
        assert_eq!(learning.observe(grown.clone(), false, 0), None);
        // 2's mean grew past the threshold: it is timed again; the others stay counted.
        assert_eq!(learning.observe(grown, true, 0), Some(vec![1, 3]));
        assert_eq!(learning.state(), "re-instrumenting");
    }

    #[test]
    fn audits_time_again_what_reached_the_minimum_span_twice() {
        let mut learning = Learning::auditing(SETTINGS, vec![1, 2]);
        let once_long = run(&[(1, 100, 50, 60), (2, 100, 50, 20_000)]);
        // Once could be the machine (a preempted call).
        assert_eq!(learning.observe(once_long.clone(), true, 10_000), None);
        assert_eq!(learning.observe(once_long, true, 10_000), Some(vec![1]));
    }

    #[test]
    fn one_long_call_in_an_audit_does_not_make_a_function_long() {
        let mut learning = Learning::auditing(SETTINGS, vec![1]);
        // A mean of 4 µs, all of it one call the machine preempted for 4 ms.
        let preempted = run(&[(1, 1000, 50, 4_000_000)]);
        assert_eq!(learning.observe(preempted, true, 0), None);
        assert_eq!(learning.state(), "auditing");
    }

    #[test]
    fn learned_versions_learn_what_later_runs_show_far_shorter() {
        let mut learning = Learning::auditing(SETTINGS, vec![1]);
        // 2 is new and far shorter than the threshold, with half the timed calls.
        let runs = run(&[(2, 100, 50, 60), (3, 100, 50_000, 60_000)]);
        assert_eq!(learning.observe(runs.clone(), false, 0), None, "one run");
        assert_eq!(learning.observe(runs, false, 0), Some(vec![1, 2]));
        assert_eq!(learning.state(), "re-instrumenting");
    }

    #[test]
    fn learned_versions_do_not_learn_borderline_or_rare_functions() {
        let mut learning = Learning::auditing(SETTINGS, vec![1]);
        // 2 is short, but not four times shorter than the threshold (as one timed again
        // because it grew long could be); 4 is far shorter, but a few calls in a thousand.
        let window = run(&[
            (2, 100, 500, 600),
            (3, 1000, 50_000, 60_000),
            (4, 10, 50, 60),
        ]);
        for _ in 0..4 {
            assert_eq!(learning.observe(window.clone(), false, 0), None);
        }
        assert_eq!(learning.state(), "auditing");
        // A later window starts afresh: 2 became far shorter, with most of its timed calls.
        let later = run(&[(2, 2000, 100, 200), (3, 100, 50_000, 60_000)]);
        assert_eq!(learning.observe(later.clone(), false, 0), None);
        assert_eq!(learning.observe(later, false, 0), Some(vec![1, 2]));
    }

    #[test]
    fn a_learned_version_that_does_not_audit_still_watches() {
        let never = LearnSettings {
            audit_every: 0,
            ..SETTINGS
        };
        let mut learning = Learning::auditing(never, vec![1]);
        assert_eq!(learning.state(), "watching");
        let runs = run(&[(2, 100, 50, 60)]);
        learning.observe(runs.clone(), false, 0);
        assert_eq!(learning.observe(runs, false, 0), Some(vec![1, 2]));
    }

    #[test]
    fn revoking_every_learned_function_still_asks_for_a_version() {
        let mut learning = Learning::auditing(SETTINGS, vec![2]);
        let grown = run(&[(2, 100, 50_000, 60_000)]);
        assert_eq!(learning.observe(grown, true, 0), Some(vec![]));
        learning.retry();
        assert_eq!(learning.state(), "auditing");
    }
}
