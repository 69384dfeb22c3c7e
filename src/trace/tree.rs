//! From the event log to the call tree, in one pass; and which calls to keep as spans.

use super::recorder::{Event, EventKind};

/// One function call reconstructed from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Function id.
    pub id: u32,
    /// Index of the calling [`Call`], if any.
    pub parent: Option<usize>,
    /// Nanoseconds since the run started.
    pub start: u64,
    /// Nanoseconds since the run started.
    pub end: u64,
    /// Still open when the run ended (trap, timeout, `proc_exit`): closed by the host.
    pub unfinished: bool,
    /// `memory.grow` calls made directly in this call: (time, pages).
    pub memory_grows: Vec<(u64, u32)>,
}

impl Call {
    /// Duration in nanoseconds.
    pub fn duration(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// Rebuilds the call tree. Frames still open at the end of the log are closed at `end`.
/// Memory growth outside any call is returned separately.
pub fn build(events: &[Event], end: u64) -> (Vec<Call>, Vec<(u64, u32)>) {
    let mut calls: Vec<Call> = Vec::with_capacity(events.len() / 2);
    let mut stack: Vec<usize> = Vec::new();
    let mut outside = Vec::new();
    for event in events {
        match event.kind {
            EventKind::Enter => {
                calls.push(Call {
                    id: event.id,
                    parent: stack.last().copied(),
                    start: event.at,
                    end: event.at,
                    unfinished: false,
                    memory_grows: Vec::new(),
                });
                stack.push(calls.len() - 1);
            }
            EventKind::Exit => {
                if let Some(depth) = stack.iter().rposition(|&i| calls[i].id == event.id) {
                    for i in stack.drain(depth..) {
                        calls[i].end = event.at;
                    }
                }
            }
            EventKind::MemoryGrow => match stack.last() {
                Some(&top) => calls[top].memory_grows.push((event.at, event.id)),
                None => outside.push((event.at, event.id)),
            },
        }
    }
    for i in stack {
        calls[i].end = end;
        calls[i].unfinished = true;
    }
    (calls, outside)
}

/// Chooses at most `max` calls to export: every unfinished call (the stack at a trap), then the
/// longest. A caller is never shorter than its callee, so the choice keeps every kept call's
/// ancestors and parents need no remapping. Returns a keep flag per call.
pub fn select(calls: &[Call], max: usize) -> Vec<bool> {
    if calls.len() <= max {
        return vec![true; calls.len()];
    }
    // Longest first; among equals, the earlier start (a caller starts no later than its callee).
    // Only the first `max` need to be found, not ordered.
    let mut order: Vec<usize> = (0..calls.len()).collect();
    let mut keep = vec![false; calls.len()];
    if max > 0 {
        order.select_nth_unstable_by_key(max - 1, |&i| {
            let c = &calls[i];
            (!c.unfinished, std::cmp::Reverse(c.duration()), c.start, i)
        });
        for &i in &order[..max] {
            keep[i] = true;
        }
    }
    // Ties in duration and start can still split a chain: walk up and keep the ancestors.
    for i in 0..calls.len() {
        if keep[i] {
            let mut parent = calls[i].parent;
            while let Some(p) = parent {
                if keep[p] {
                    break;
                }
                keep[p] = true;
                parent = calls[p].parent;
            }
        }
    }
    keep
}

/// The calls `keep` flags, with parents renumbered into the result. Every kept call's parent
/// must be kept too, as [`select`] ensures.
pub fn retain(calls: Vec<Call>, keep: &[bool]) -> Vec<Call> {
    let mut new_index = vec![usize::MAX; calls.len()];
    let mut kept = Vec::with_capacity(keep.iter().filter(|k| **k).count());
    for (i, mut call) in calls.into_iter().enumerate() {
        if !keep[i] {
            continue;
        }
        call.parent = call.parent.map(|p| new_index[p]);
        new_index[i] = kept.len();
        kept.push(call);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: u64, kind: EventKind, id: u32) -> Event {
        Event { at, id, kind }
    }

    #[test]
    fn builds_nesting_and_closes_open_frames() {
        use EventKind::*;
        let events = [
            ev(0, Enter, 1),
            ev(1, Enter, 2),
            ev(2, MemoryGrow, 3),
            ev(3, Exit, 2),
            ev(4, Enter, 3),
            ev(5, Enter, 4),
            ev(6, Exit, 3), // 4 skipped its exit
            ev(7, Enter, 5),
        ];
        let (calls, outside) = build(&events, 10);
        assert!(outside.is_empty());
        let shape: Vec<_> = calls
            .iter()
            .map(|c| (c.id, c.parent, c.start, c.end, c.unfinished))
            .collect();
        assert_eq!(
            shape,
            [
                (1, None, 0, 10, true),
                (2, Some(0), 1, 3, false),
                (3, Some(0), 4, 6, false),
                (4, Some(2), 5, 6, false),
                (5, Some(0), 7, 10, true),
            ]
        );
        assert_eq!(calls[1].memory_grows, [(2, 3)]);
    }

    #[test]
    fn selection_keeps_unfinished_then_longest_with_ancestors() {
        use EventKind::*;
        let mut events = vec![ev(0, Enter, 0)];
        for k in 0..10u64 {
            events.push(ev(10 * k + 1, Enter, 1));
            events.push(ev(10 * k + 1 + k, Exit, 1));
        }
        events.push(ev(200, Enter, 2)); // open at the end: a trap
        let (calls, _) = build(&events, 300);
        let keep = select(&calls, 4);
        let kept: Vec<_> = calls
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(c, _)| (c.id, c.duration()))
            .collect();
        assert_eq!(kept, [(0, 300), (1, 8), (1, 9), (2, 100)]);
        let retained = retain(calls, &keep);
        let parents: Vec<_> = retained.iter().map(|c| c.parent).collect();
        assert_eq!(parents, [None, Some(0), Some(0), Some(0)]);
    }
}
