//! Which functions an exception can unwind, and so which need a handler that calls `exit`.
//!
//! A function can be unwound if it throws (`throw`, `throw_ref`, legacy `rethrow`), calls an
//! imported function (the host or another instance may throw), calls through a table or a
//! reference (the callee may be anything), or calls a defined function that can be unwound.
//! Tail calls do not count: `exit` runs before them and the caller's frame, with its handler,
//! is gone by the time the callee runs. A throw the function catches itself still counts:
//! the analysis is conservative, never wrong.

use crate::body::BodyFacts;

/// Per defined function (by position among defined functions): whether it can be unwound.
pub(crate) fn can_unwind(imported_funcs: u32, bodies: &[&BodyFacts]) -> Vec<bool> {
    let n = bodies.len();
    let mut unwinds: Vec<bool> = bodies.iter().map(|f| f.unwinds).collect();
    // Callers of each function, in compressed rows: callers[starts[i]..starts[i + 1]].
    let mut starts = vec![0usize; n + 1];
    for facts in bodies {
        for &callee in &facts.callees {
            starts[(callee - imported_funcs) as usize + 1] += 1;
        }
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    let mut fill = starts.clone();
    let mut callers = vec![0u32; starts[n]];
    for (caller, facts) in bodies.iter().enumerate() {
        for &callee in &facts.callees {
            let slot = (callee - imported_funcs) as usize;
            callers[fill[slot]] = caller as u32;
            fill[slot] += 1;
        }
    }
    let mut work: Vec<usize> = (0..n).filter(|&i| unwinds[i]).collect();
    while let Some(callee) = work.pop() {
        for &caller in &callers[starts[callee]..starts[callee + 1]] {
            let caller = caller as usize;
            if !unwinds[caller] {
                unwinds[caller] = true;
                work.push(caller);
            }
        }
    }
    unwinds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(unwinds: bool, callees: &[u32]) -> BodyFacts {
        BodyFacts {
            unwinds,
            callees: callees.to_vec(),
            ..BodyFacts::default()
        }
    }

    #[test]
    fn unwinding_spreads_to_callers_only() {
        // Two imports; defined functions 2..=6. 2 -> 3 -> 4 (calls out); 5 -> 6 (leaf); 6 -> 5.
        let bodies = [
            facts(false, &[3]),
            facts(false, &[4, 4]),
            facts(true, &[]),
            facts(false, &[6]),
            facts(false, &[5]),
        ];
        let refs: Vec<&BodyFacts> = bodies.iter().collect();
        assert_eq!(can_unwind(2, &refs), [true, true, true, false, false]);
    }
}
