//! Which functions an exception can unwind, and so which need a handler that calls `exit`.
//!
//! A call to a function can end in an exception if the function throws (`throw`, `throw_ref`,
//! legacy `rethrow`), calls or tail-calls an imported function that may throw (the host or
//! another instance may; WASI functions, the hooks and the Observe API never do), calls or
//! tail-calls through a table or a reference (the callee may be anything), or calls or
//! tail-calls a defined function a call to which can end in an exception.
//!
//! A function's own frame can be unwound, and so needs the handler, if it throws, or makes a
//! call that is not a tail call and can end in an exception. A tail call does not count for the
//! frame: `exit` runs before it and the frame, with its handler, is gone when the callee runs;
//! it counts for the function's callers. A throw the function catches itself still counts: the
//! analysis is conservative, never wrong.

use crate::body::BodyFacts;

/// Per defined function (by position among defined functions): whether an exception can
/// unwind its frame.
pub(crate) fn can_unwind(imported_funcs: u32, bodies: &[&BodyFacts]) -> Vec<bool> {
    let throws = calls_can_throw(imported_funcs, bodies);
    bodies
        .iter()
        .map(|facts| {
            facts.unwinds
                || facts
                    .callees
                    .iter()
                    .any(|&callee| throws[(callee - imported_funcs) as usize])
        })
        .collect()
}

/// Per defined function: whether a call to it can end in an exception.
fn calls_can_throw(imported_funcs: u32, bodies: &[&BodyFacts]) -> Vec<bool> {
    let n = bodies.len();
    let callees = |facts: &&BodyFacts| {
        facts
            .callees
            .iter()
            .chain(&facts.tail_callees)
            .map(|&callee| (callee - imported_funcs) as usize)
            .collect::<Vec<_>>()
    };
    let mut throws: Vec<bool> = bodies.iter().map(|f| f.unwinds || f.tail_throws).collect();
    // Callers of each function, in compressed rows: callers[starts[i]..starts[i + 1]].
    let mut starts = vec![0usize; n + 1];
    for facts in bodies {
        for callee in callees(facts) {
            starts[callee + 1] += 1;
        }
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    let mut fill = starts.clone();
    let mut callers = vec![0u32; starts[n]];
    for (caller, facts) in bodies.iter().enumerate() {
        for callee in callees(facts) {
            callers[fill[callee]] = caller as u32;
            fill[callee] += 1;
        }
    }
    let mut work: Vec<usize> = (0..n).filter(|&i| throws[i]).collect();
    while let Some(callee) = work.pop() {
        for &caller in &callers[starts[callee]..starts[callee + 1]] {
            let caller = caller as usize;
            if !throws[caller] {
                throws[caller] = true;
                work.push(caller);
            }
        }
    }
    throws
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

    #[test]
    fn a_tail_call_that_can_throw_unwinds_the_callers_not_the_frame() {
        // One import; defined 1..=4. 1 tail-calls out; 2 calls 1; 3 tail-calls 2; 4 calls 3.
        let tail_out = BodyFacts {
            tail_throws: true,
            ..BodyFacts::default()
        };
        let tail_to_2 = BodyFacts {
            tail_callees: vec![2],
            ..BodyFacts::default()
        };
        let bodies = [tail_out, facts(false, &[1]), tail_to_2, facts(false, &[3])];
        let refs: Vec<&BodyFacts> = bodies.iter().collect();
        assert_eq!(can_unwind(1, &refs), [false, true, false, true]);
    }
}
