//! From the event log to the call tree, in one pass; and which calls to keep as spans.

use super::recorder::{Event, EventKind};

/// One function call reconstructed from the log (32 bytes: a run may log half a million).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Function id.
    pub id: u32,
    /// Index of the calling [`Call`], if any.
    pub parent: Option<u32>,
    /// Nanoseconds since the run started.
    pub start: u64,
    /// Nanoseconds since the run started.
    pub end: u64,
    /// Still open when the run ended (trap, timeout, `proc_exit`): closed by the host.
    pub unfinished: bool,
}

/// Something that happened in a call: a `memory.grow`, the bytes of a host call, a note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Index of the [`Call`] it happened in; none outside any call.
    pub call: Option<u32>,
    /// Nanoseconds since the run started (for [`MarkKind::HostIo`]: the call's end).
    pub at: u64,
    /// What.
    pub kind: MarkKind,
}

/// What a [`Mark`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// `memory.grow` by this many pages.
    MemoryGrow(u32),
    /// A host call's file descriptor and bytes (`None` when not known).
    HostIo {
        /// File descriptor.
        fd: Option<u32>,
        /// Bytes moved.
        bytes: Option<u64>,
    },
    /// A note of the recorder (tags, a log record), by index.
    Note(u32),
}

impl MarkKind {
    /// Whether the mark belongs to its call alone (it leaves with it) rather than moving to the
    /// nearest kept caller when its call is not kept.
    fn belongs_to_call(self, notes_of_calls: impl Fn(u32) -> bool) -> bool {
        match self {
            MarkKind::HostIo { .. } => true,
            MarkKind::Note(index) => notes_of_calls(index),
            MarkKind::MemoryGrow(_) => false,
        }
    }
}

impl Call {
    /// Duration in nanoseconds.
    pub fn duration(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// Rebuilds the call tree and what happened in it. Frames still open at the end of the log are
/// closed at `end`.
pub fn build(events: &[Event], end: u64) -> (Vec<Call>, Vec<Mark>) {
    let mut calls: Vec<Call> = Vec::with_capacity(events.len() / 2);
    let mut stack: Vec<u32> = Vec::new();
    let mut marks = Vec::new();
    for event in events {
        match event.kind {
            EventKind::Enter => {
                stack.push(calls.len() as u32);
                calls.push(Call {
                    id: event.id,
                    parent: stack.len().checked_sub(2).map(|i| stack[i]),
                    start: event.at,
                    end: event.at,
                    unfinished: false,
                });
            }
            EventKind::Exit => {
                if let Some(depth) = stack
                    .iter()
                    .rposition(|&i| calls[i as usize].id == event.id)
                {
                    for i in stack.drain(depth..) {
                        calls[i as usize].end = event.at;
                    }
                }
            }
            EventKind::MemoryGrow => marks.push(Mark {
                call: stack.last().copied(),
                at: event.at,
                kind: MarkKind::MemoryGrow(event.id),
            }),
            EventKind::HostIo => marks.push(Mark {
                call: stack.last().copied(),
                at: event.at,
                kind: MarkKind::HostIo {
                    fd: (event.id != u32::MAX).then_some(event.id),
                    bytes: (event.at != u64::MAX).then_some(event.at),
                },
            }),
            EventKind::Note => marks.push(Mark {
                call: stack.last().copied(),
                at: event.at,
                kind: MarkKind::Note(event.id),
            }),
        }
    }
    for i in stack {
        calls[i as usize].end = end;
        calls[i as usize].unfinished = true;
    }
    for mark in &mut marks {
        if let (MarkKind::HostIo { .. }, Some(call)) = (mark.kind, mark.call) {
            mark.at = calls[call as usize].end;
        }
    }
    (calls, marks)
}

/// Chooses at most `max` calls to export: every unfinished call (the stack at a trap), then the
/// longest. A caller is never shorter than its callee, so the choice keeps every kept call's
/// ancestors and parents need no remapping. Returns a keep flag per call, or `None` when
/// every call is kept.
pub fn select(calls: &[Call], max: usize) -> Option<Vec<bool>> {
    if calls.len() <= max {
        return None;
    }
    // Longest first; among equals, the earlier start (a caller starts no later than its callee).
    // Only the first `max` need to be found, not ordered.
    let mut order: Vec<u32> = (0..calls.len() as u32).collect();
    let mut keep = vec![false; calls.len()];
    if max > 0 {
        order.select_nth_unstable_by_key(max - 1, |&i| {
            let c = &calls[i as usize];
            (!c.unfinished, std::cmp::Reverse(c.duration()), c.start, i)
        });
        for &i in &order[..max] {
            keep[i as usize] = true;
        }
    }
    // Ties in duration and start can still split a chain: walk up and keep the ancestors.
    for i in 0..calls.len() {
        if keep[i] {
            let mut parent = calls[i].parent;
            while let Some(p) = parent.map(|p| p as usize) {
                if keep[p] {
                    break;
                }
                keep[p] = true;
                parent = calls[p].parent;
            }
        }
    }
    Some(keep)
}

/// The calls `keep` flags, with parents renumbered into the result. A mark that belongs to its
/// call (a host call's bytes; a note for which `notes_of_calls` says so, such as tags) leaves
/// with it; the others (memory growth, log records) move to the innermost kept call. Every kept
/// call's parent must be kept too, as [`select`] ensures.
pub fn retain(
    calls: Vec<Call>,
    keep: &[bool],
    marks: &mut Vec<Mark>,
    notes_of_calls: impl Fn(u32) -> bool,
) -> Vec<Call> {
    marks.retain(|mark| {
        mark.call.is_none_or(|i| keep[i as usize]) || !mark.kind.belongs_to_call(&notes_of_calls)
    });
    for mark in marks.iter_mut() {
        while let Some(i) = mark.call.filter(|&i| !keep[i as usize]) {
            mark.call = calls[i as usize].parent;
        }
    }
    let mut new_index = vec![u32::MAX; calls.len()];
    let mut kept = Vec::with_capacity(keep.iter().filter(|k| **k).count());
    for (i, mut call) in calls.into_iter().enumerate() {
        if !keep[i] {
            continue;
        }
        call.parent = call.parent.map(|p| new_index[p as usize]);
        new_index[i] = kept.len() as u32;
        kept.push(call);
    }
    for mark in marks.iter_mut() {
        mark.call = mark.call.map(|i| new_index[i as usize]);
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
        let (calls, marks) = build(&events, 10);
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
        assert_eq!(
            marks,
            [Mark {
                call: Some(1),
                at: 2,
                kind: MarkKind::MemoryGrow(3)
            }]
        );
        // Call 1 left out: its growth moves to its caller.
        let mut marks = marks;
        let kept = retain(calls, &[true, false, true, true, true], &mut marks, |_| {
            false
        });
        assert_eq!(kept.len(), 4);
        assert_eq!(marks[0].call, Some(0));
    }

    #[test]
    fn host_call_details_leave_with_their_call_and_notes_as_told() {
        use EventKind::*;
        let events = [
            ev(0, Enter, 1),
            ev(1, Enter, 7), // a host call
            ev(40, HostIo, 1),
            ev(2, Exit, 7),
            ev(3, Enter, 2),
            ev(4, Note, 0), // tags of call 2
            ev(5, Note, 1), // a log record in call 2
            ev(6, Exit, 2),
            ev(9, Exit, 1),
        ];
        let (calls, mut marks) = build(&events, 10);
        assert_eq!(
            marks[0],
            Mark {
                call: Some(1),
                at: 2,
                kind: MarkKind::HostIo {
                    fd: Some(1),
                    bytes: Some(40)
                }
            }
        );
        let kept = retain(calls, &[true, false, false], &mut marks, |note| note == 0);
        assert_eq!(kept.len(), 1);
        assert_eq!(
            marks,
            [Mark {
                call: Some(0),
                at: 5,
                kind: MarkKind::Note(1)
            }]
        );
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
        let keep = select(&calls, 4).expect("more calls than kept");
        let kept: Vec<_> = calls
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(c, _)| (c.id, c.duration()))
            .collect();
        assert_eq!(kept, [(0, 300), (1, 8), (1, 9), (2, 100)]);
        let retained = retain(calls, &keep, &mut Vec::new(), |_| false);
        let parents: Vec<_> = retained.iter().map(|c| c.parent).collect();
        assert_eq!(parents, [None, Some(0), Some(0), Some(0)]);
    }
}
