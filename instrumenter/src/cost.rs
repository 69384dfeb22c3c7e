//! Which functions are timed and which only counted: a static cost model.
//!
//! A traced call costs two host calls and two clock reads, tens of nanoseconds, which real
//! programs pay millions of times over for functions that do a few dozen operations. A function
//! whose every call is provably short is therefore not timed: a counter in the module counts
//! its calls, exactly, and its time stays in its caller's self time. Provably short means: it
//! has no loop, calls no import and nothing through a table or reference, and calls only
//! functions that are provably short themselves (so not itself, directly or not); and the
//! operators of a call, its own and its callees' at every call site, add up to at most a
//! budget. Such a call runs at most that many operators (a few microseconds for the default
//! budget), whatever its input.

use serde::{Deserialize, Serialize};

use crate::body::BodyFacts;

/// How a function's calls are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// Each call reports enter and exit: timed, a span.
    Timed(TimedBecause),
    /// Each call adds one to a counter in the module: exact counts, no time of its own.
    Counted,
    /// Counted, though the cost model would time it: the host asked, having seen that its calls
    /// were short in earlier runs.
    Learned,
    /// Not instrumented at all.
    Untraced,
}

/// Why a function is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimedBecause {
    /// Every call is timed, as asked.
    EveryCall,
    /// It has a loop: its calls can run for any time.
    Loop,
    /// It calls an import (the host may take any time).
    CallsImport,
    /// It calls through a table or a reference (the callee is not known).
    CallsIndirect,
    /// It calls a function that is timed.
    CallsTimed,
    /// It calls itself, directly or through others.
    Recursive,
    /// Its calls may run more operators than the budget.
    OverBudget,
}

/// Classifies every defined function (by position among defined functions) whose `traced`
/// flag is set; `budget` bounds the operators of a counted call.
pub(crate) fn classify(
    imported_funcs: u32,
    bodies: &[&BodyFacts],
    traced: &[bool],
    budget: u32,
) -> Vec<Timing> {
    let mut cost = vec![Cost::Unknown; bodies.len()];
    (0..bodies.len())
        .map(|slot| {
            if !traced[slot] {
                return Timing::Untraced;
            }
            match cost_of(slot, imported_funcs, bodies, budget, &mut cost) {
                Ok(_) => Timing::Counted,
                Err(because) => Timing::Timed(because),
            }
        })
        .collect()
}

impl Timing {
    /// Whether the function's calls are counted in the module (not timed).
    pub fn is_counted(self) -> bool {
        matches!(self, Timing::Counted | Timing::Learned)
    }
}

/// What is known of a function's worst-case cost so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cost {
    Unknown,
    /// Being computed: met again, the function is recursive.
    InProgress,
    Bounded(u32),
    Unbounded(TimedBecause),
}

/// The most operators a call of `slot` can run, or why there is no bound within the budget.
/// Iterative over the call graph (deep call chains must not exhaust the stack).
fn cost_of(
    slot: usize,
    imported_funcs: u32,
    bodies: &[&BodyFacts],
    budget: u32,
    cost: &mut [Cost],
) -> Result<u32, TimedBecause> {
    // Each frame: the function and how many of its callees are done.
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let own = |facts: &BodyFacts| -> Result<u32, TimedBecause> {
        if facts.has_loop {
            Err(TimedBecause::Loop)
        } else if facts.calls_indirect {
            Err(TimedBecause::CallsIndirect)
        } else if facts.calls_import {
            Err(TimedBecause::CallsImport)
        } else {
            Ok(facts.operators)
        }
    };
    let callees = |facts: &BodyFacts, i: usize| {
        facts
            .callees
            .iter()
            .chain(&facts.tail_callees)
            .nth(i)
            .map(|&index| (index - imported_funcs) as usize)
    };
    let enter = |f: usize, cost: &mut [Cost], stack: &mut Vec<(usize, usize)>| match cost[f] {
        Cost::Unknown => match own(bodies[f]) {
            Ok(_) => {
                cost[f] = Cost::InProgress;
                stack.push((f, 0));
            }
            Err(because) => cost[f] = Cost::Unbounded(because),
        },
        Cost::InProgress => cost[f] = Cost::Unbounded(TimedBecause::Recursive),
        Cost::Bounded(_) | Cost::Unbounded(_) => {}
    };
    enter(slot, cost, &mut stack);
    while let Some(&(f, done)) = stack.last() {
        if let Cost::Unbounded(_) = cost[f] {
            // Found to be recursive while in progress.
            stack.pop();
            continue;
        }
        match callees(bodies[f], done) {
            Some(callee) => {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                enter(callee, cost, &mut stack);
            }
            None => {
                stack.pop();
                let mut total = bodies[f].operators;
                let mut result = Ok(());
                for i in 0.. {
                    let Some(callee) = callees(bodies[f], i) else {
                        break;
                    };
                    match cost[callee] {
                        Cost::Bounded(c) => total = total.saturating_add(c),
                        Cost::InProgress => {
                            result = Err(TimedBecause::Recursive);
                            break;
                        }
                        Cost::Unbounded(_) | Cost::Unknown => {
                            result = Err(TimedBecause::CallsTimed);
                            break;
                        }
                    }
                }
                cost[f] = match result {
                    Err(because) => Cost::Unbounded(because),
                    Ok(()) if total > budget => Cost::Unbounded(TimedBecause::OverBudget),
                    Ok(()) => Cost::Bounded(total),
                };
            }
        }
    }
    match cost[slot] {
        Cost::Bounded(c) => Ok(c),
        Cost::Unbounded(because) => Err(because),
        Cost::Unknown | Cost::InProgress => Err(TimedBecause::Recursive),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(operators: u32, callees: &[u32]) -> BodyFacts {
        BodyFacts {
            operators,
            callees: callees.to_vec(),
            ..BodyFacts::default()
        }
    }

    #[test]
    fn short_call_trees_are_counted_and_the_rest_say_why_not() {
        // One import; defined functions 1..=8.
        let looping = BodyFacts {
            has_loop: true,
            ..facts(5, &[])
        };
        let host = BodyFacts {
            calls_import: true,
            ..facts(5, &[])
        };
        let bodies = [
            facts(10, &[2, 2]), // 1: leaf 2 twice: 10 + 2 * 20 = 50
            facts(20, &[]),     // 2: leaf
            looping,            // 3
            facts(5, &[3]),     // 4: calls the loop
            facts(5, &[5]),     // 5: calls itself
            host,               // 6
            facts(5, &[1, 1]),  // 7: 5 + 2 * 50 = 105
            facts(1, &[7]),     // 8: 106
        ];
        let refs: Vec<&BodyFacts> = bodies.iter().collect();
        let all = vec![true; bodies.len()];
        let timing = classify(1, &refs, &all, 105);
        use TimedBecause::*;
        assert_eq!(
            timing,
            [
                Timing::Counted,
                Timing::Counted,
                Timing::Timed(Loop),
                Timing::Timed(CallsTimed),
                Timing::Timed(Recursive),
                Timing::Timed(CallsImport),
                Timing::Counted,
                Timing::Timed(OverBudget),
            ]
        );
        let mut some = all.clone();
        some[0] = false;
        assert_eq!(classify(1, &refs, &some, 105)[0], Timing::Untraced);
    }

    #[test]
    fn mutual_recursion_and_long_chains() {
        // Defined 0..=1 call each other; 2..10_002 a long chain ending in a leaf.
        let mut bodies = vec![facts(1, &[1]), facts(1, &[0])];
        for i in 2..10_002u32 {
            bodies.push(facts(1, &[i + 1]));
        }
        bodies.push(facts(1, &[]));
        let refs: Vec<&BodyFacts> = bodies.iter().collect();
        let timing = classify(0, &refs, &vec![true; bodies.len()], 1_000_000);
        assert_eq!(timing[0], Timing::Timed(TimedBecause::Recursive));
        assert_eq!(timing[1], Timing::Timed(TimedBecause::CallsTimed));
        assert!(timing[2..].iter().all(|t| *t == Timing::Counted));
    }
}
