//! The hot path: what the `enter`/`exit`/`memory-grow` hooks do during a run.
//!
//! Each hook appends one 16-byte event to a vector: no lock, no name lookup, no wall-clock
//! read. A shadow stack keeps exact per-function aggregates (calls, total, self and max time)
//! for the whole run, whatever the log keeps.
//!
//! The log holds at most `max_events`. Calls shorter than a minimum duration leave it when they
//! return (their time shows in their caller's self time). When it fills, the shorter half of
//! its finished calls leave and the minimum rises, so the log always holds the longest calls of
//! the run so far. Room is always kept for the exits of logged calls, so it stays a consistent
//! tree. A guest may call the hooks itself: ids are bounded by the module's function count and
//! the shadow stack by a fixed depth, so memory stays bounded whatever it does. Every byte the
//! recorder holds is charged to the run's [`MemoryBudget`]: where the budget says no, the log
//! counts as full and deeper frames are ignored, as at the fixed bounds.

use std::sync::{Arc, OnceLock};

use crate::budget::MemoryBudget;

/// One calibrated clock for the process: the CPU's time-stamp counter where it is invariant
/// (a few nanoseconds a read), else the OS monotonic clock.
fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Frames deeper than this are not tracked (wasm stacks overflow long before).
const MAX_DEPTH: usize = 1 << 20;

/// What a hook reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    /// A function was entered.
    Enter,
    /// A function returned, by any way out.
    Exit,
    /// `memory.grow` is about to run; `id` holds the delta in pages.
    MemoryGrow,
    /// What the innermost call, a host call, moved: `id` holds the file descriptor and `at`
    /// the bytes (each `u32::MAX`/`u64::MAX` when unknown). Not a time.
    HostIo,
    /// A note (tags, a log record) in the innermost call: `id` indexes [`Recorder::notes`].
    Note,
}

/// One hook call, timed in nanoseconds since the run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the start of the run.
    pub at: u64,
    /// Function id (for `MemoryGrow`: pages).
    pub id: u32,
    /// Which hook.
    pub kind: EventKind,
}

/// Exact per-function totals over a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aggregate {
    /// Completed calls.
    pub calls: u64,
    /// Time inside the function, callees included, in nanoseconds.
    pub total_ns: u64,
    /// Time inside the function itself, callees excluded.
    pub self_ns: u64,
    /// Longest single call.
    pub max_ns: u64,
}

/// Something the guest said about its run through the Observe API, kept beside the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `span-tags`: attributes of the innermost span.
    Tags(Vec<(String, String)>),
    /// `log`: a log record in the innermost span.
    Log {
        /// Severity as the guest gave it (see [`crate::trace::observe`]).
        level: u32,
        /// The message.
        message: String,
    },
}

/// A metric line (statsd) the guest emitted, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricLine {
    /// Nanoseconds since the start of the run.
    pub at: u64,
    /// The line as sent.
    pub line: String,
}

/// Notes and metric lines a run may leave; more are dropped and counted.
const MAX_NOTES: usize = 10_000;
/// Distinct manual span names a run may use; more share one name.
const MAX_MANUAL_NAMES: usize = 1_000;
/// The name manual spans get past [`MAX_MANUAL_NAMES`].
const OVERFLOW_NAME: &str = "observe span (too many names)";

#[derive(Debug, Clone, Copy)]
struct Frame {
    id: u32,
    start: u64,
    children_ns: u64,
    /// Index of its enter in the log, or [`NOT_LOGGED`]; a logged enter needs its exit.
    log_index: usize,
}

/// [`Frame::log_index`] of a call whose enter did not fit in the log.
const NOT_LOGGED: usize = usize::MAX;

/// The event log and aggregates of one run.
#[derive(Debug)]
pub struct Recorder {
    clock: &'static quanta::Clock,
    /// Raw clock reading at the start of the run.
    origin: u64,
    events: Vec<Event>,
    max_events: usize,
    /// Calls shorter than this leave the log; raised when a full log is compacted.
    min_span_ns: u64,
    can_compact: bool,
    dropped_events: u64,
    short_calls: u64,
    stack: Vec<Frame>,
    /// Open frames whose exits the log has room reserved for.
    logged_open: usize,
    aggregates: Vec<Aggregate>,
    /// A bit per aggregate, set once it has calls: a run calls few of a module's functions,
    /// and this finds them, in order, without looking through them all.
    called: Vec<u64>,
    ignored_calls: u64,
    budget: Arc<MemoryBudget>,
    /// Ids below this are the module's functions (the only ids its hooks may use).
    functions: u32,
    /// Host functions timed at the boundary: ids `functions..functions + host_functions`.
    host_functions: u32,
    /// Manual spans' names: ids from `functions + host_functions` on.
    manual_names: Vec<String>,
    manual_ids: std::collections::HashMap<String, u32>,
    notes: Vec<Note>,
    metric_lines: Vec<MetricLine>,
    dropped_notes: u64,
    unbalanced_span_exits: u64,
    /// Functions whose calls the module counted.
    counted: Vec<u32>,
    /// Counters the module reported as `_start` returned (see [`iota_instrument::COUNTS`]):
    /// hook id and calls, at most one a function.
    reported: Vec<(u32, i64)>,
    /// The most pairs `reported` takes (the module's counters).
    expected_reports: usize,
}

impl Recorder {
    /// A recorder for a module whose function ids are below `functions`, logging at most
    /// `max_events` events and only calls lasting at least `min_span_ns`.
    pub fn new(functions: usize, max_events: usize, min_span_ns: u64) -> Self {
        Self::with_budget(
            functions,
            0,
            max_events,
            min_span_ns,
            Arc::new(MemoryBudget::new(usize::MAX)),
        )
    }

    /// As [`new`](Self::new), with `host_functions` host functions timed at the boundary,
    /// charging what it holds to `budget`.
    pub fn with_budget(
        functions: usize,
        host_functions: usize,
        max_events: usize,
        min_span_ns: u64,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        let clock = clock();
        let events = Vec::with_capacity(max_events.min(256));
        let stack = Vec::with_capacity(64);
        let functions = functions.min(u32::MAX as usize / 2) as u32;
        let host_functions = host_functions.min(u32::MAX as usize / 4) as u32;
        let aggregates = vec![Aggregate::default(); (functions + host_functions) as usize];
        let called = vec![0u64; aggregates.len().div_ceil(64)];
        // The first buffers are needed whatever happens; the limit then stops all else.
        budget.charge(
            events.capacity() * size_of::<Event>()
                + stack.capacity() * size_of::<Frame>()
                + aggregates.len() * size_of::<Aggregate>()
                + called.len() * size_of::<u64>(),
        );
        Recorder {
            clock,
            origin: clock.raw(),
            events,
            max_events,
            min_span_ns,
            can_compact: true,
            dropped_events: 0,
            short_calls: 0,
            stack,
            logged_open: 0,
            aggregates,
            called,
            ignored_calls: 0,
            budget,
            functions,
            host_functions,
            manual_names: Vec::new(),
            manual_ids: std::collections::HashMap::new(),
            notes: Vec::new(),
            metric_lines: Vec::new(),
            dropped_notes: 0,
            unbalanced_span_exits: 0,
            counted: Vec::new(),
            reported: Vec::new(),
            expected_reports: 0,
        }
    }

    /// Restarts the clock: events are timed from now.
    pub fn start(&mut self) {
        self.origin = self.clock.raw();
    }

    /// Nanoseconds since [`start`](Self::start).
    #[inline]
    pub fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }

    /// Whether `extra` more events fit in the log beside the exits reserved for logged open
    /// frames, growing it (within `max_events` and the budget) if needed. Reserved exits always
    /// have allocated room, so logging them never allocates.
    #[inline]
    fn has_room(&mut self, extra: usize) -> bool {
        let needed = self.events.len() + self.logged_open + extra;
        needed <= self.events.capacity() || self.grow_log(needed)
    }

    /// The `enter(id)` hook: only the module's own function ids are accepted.
    #[inline]
    pub fn enter(&mut self, id: u32) {
        if id >= self.functions {
            self.ignored_calls += 1;
            return;
        }
        self.push(id);
    }

    /// The `exit(id)` hook: only the module's own function ids are accepted.
    #[inline]
    pub fn exit(&mut self, id: u32) {
        if id >= self.functions {
            self.ignored_calls += 1;
            return;
        }
        self.pop_to(id);
    }

    /// A call into host function `index` begins.
    pub fn enter_host(&mut self, index: u32) {
        if index < self.host_functions {
            self.push(self.functions + index);
        }
    }

    /// The call into host function `index` returns, having moved `bytes` through file
    /// descriptor `fd` (where it says).
    pub fn exit_host(&mut self, index: u32, fd: Option<u32>, bytes: Option<u64>) {
        if index >= self.host_functions {
            return;
        }
        let id = self.functions + index;
        if (fd.is_some() || bytes.is_some())
            && self
                .stack
                .last()
                .is_some_and(|f| f.id == id && f.log_index != NOT_LOGGED)
            && self.has_room(1)
        {
            self.log(Event {
                at: bytes.unwrap_or(u64::MAX),
                id: fd.unwrap_or(u32::MAX),
                kind: EventKind::HostIo,
            });
        }
        self.pop_to(id);
    }

    /// `span-enter(name)` of the Observe API: a manual span opens in the innermost call.
    pub fn enter_span(&mut self, name: &str) {
        let index = match self.manual_ids.get(name) {
            Some(&index) => index,
            None => self.intern(name),
        };
        self.push(self.functions + self.host_functions + index);
    }

    fn intern(&mut self, name: &str) -> u32 {
        let full = self.manual_names.len() >= MAX_MANUAL_NAMES;
        let name = if full { OVERFLOW_NAME } else { name };
        if let Some(&index) = self.manual_ids.get(name) {
            return index;
        }
        self.budget
            .charge(2 * name.len() + size_of::<Aggregate>() + 64);
        let index = self.manual_names.len() as u32;
        self.manual_names.push(name.to_string());
        self.manual_ids.insert(name.to_string(), index);
        self.aggregates.push(Aggregate::default());
        self.called.resize(self.aggregates.len().div_ceil(64), 0);
        index
    }

    /// `span-exit()` of the Observe API: closes the innermost open manual span (and what was
    /// left open above it). Without one, it is counted and otherwise ignored.
    pub fn exit_span(&mut self) {
        let manual = self.functions + self.host_functions;
        match self.stack.iter().rev().find(|f| f.id >= manual) {
            Some(frame) => {
                let id = frame.id;
                self.pop_to(id);
            }
            None => self.unbalanced_span_exits += 1,
        }
    }

    /// A note in the innermost call (dropped and counted past the run's allowance or budget).
    pub fn note(&mut self, note: Note) {
        let bytes = match &note {
            Note::Tags(tags) => tags.iter().map(|(k, v)| k.len() + v.len() + 48).sum(),
            Note::Log { message, .. } => message.len(),
        } + size_of::<Note>();
        if self.notes.len() >= MAX_NOTES || !self.budget.try_charge(bytes) {
            self.dropped_notes += 1;
            return;
        }
        let at = self.now();
        if self.has_room(1) {
            self.log(Event {
                at,
                id: self.notes.len() as u32,
                kind: EventKind::Note,
            });
            self.notes.push(note);
        } else {
            self.dropped_notes += 1;
        }
    }

    /// Adds `calls` counted calls of function `id` (counted in the module, not timed) to its
    /// totals; their time is in their callers'.
    pub fn count_calls(&mut self, id: u32, calls: u64) {
        if let Some(aggregate) = self
            .aggregates
            .get_mut(id as usize)
            .filter(|_| id < self.functions)
        {
            if aggregate.calls == 0 && calls > 0 {
                mark_called(&mut self.called, id);
            }
            aggregate.calls += calls;
            self.counted.push(id);
        }
    }

    /// Makes room for `counters` pairs of [`report_counts`](Self::report_counts), the most the
    /// module has, charged to the budget once it reports.
    pub fn expect_reports(&mut self, counters: usize) {
        self.expected_reports = counters.min(self.functions as usize);
    }

    /// Keeps the counters the module reports (pairs of hook id and calls; a negative id pads),
    /// for [`take_reported`](Self::take_reported), up to the number expected: pairs past it are
    /// dropped. Where the budget has no room for them, none is kept; the run then reads the
    /// counters from the module's globals, so the counts stay exact.
    pub fn report_counts(&mut self, pairs: &[(i32, i64)]) {
        if self.reported.capacity() == 0 {
            let bytes = self.expected_reports * size_of::<(u32, i64)>();
            if bytes == 0 || !self.budget.try_charge(bytes) {
                return;
            }
            self.reported.reserve_exact(self.expected_reports);
        }
        let room = self.expected_reports - self.reported.len();
        let pairs = pairs.iter().filter(|(id, _)| *id >= 0);
        self.reported
            .extend(pairs.take(room).map(|&(id, calls)| (id as u32, calls)));
    }

    /// The counters the module reported, in the order it did; their room is released.
    pub fn take_reported(&mut self) -> Vec<(u32, i64)> {
        let reported = std::mem::take(&mut self.reported);
        if reported.capacity() > 0 {
            self.budget
                .release(self.expected_reports * size_of::<(u32, i64)>());
        }
        reported
    }

    /// Makes room for `functions` more [`count_calls`](Self::count_calls).
    pub fn expect_counted(&mut self, functions: usize) {
        self.counted.reserve(functions);
    }

    /// Functions whose calls were counted, not timed.
    pub fn counted(&self) -> &[u32] {
        &self.counted
    }

    /// A metric line (statsd), kept for export (dropped and counted past the allowance).
    pub fn metric(&mut self, line: String) {
        let bytes = line.len() + size_of::<MetricLine>();
        if self.metric_lines.len() >= MAX_NOTES || !self.budget.try_charge(bytes) {
            self.dropped_notes += 1;
            return;
        }
        let at = self.now();
        self.metric_lines.push(MetricLine { at, line });
    }

    #[inline]
    fn push(&mut self, id: u32) {
        if self.stack.len() == self.stack.capacity() && !self.grow_stack() {
            self.ignored_calls += 1;
            return;
        }
        let at = self.now();
        // An enter needs room for itself and its exit.
        let mut logged = self.has_room(2);
        if !logged && self.can_compact {
            self.compact();
            logged = self.has_room(2);
        }
        let log_index = if logged {
            self.events.len()
        } else {
            NOT_LOGGED
        };
        if logged {
            self.log(Event {
                at,
                id,
                kind: EventKind::Enter,
            });
            self.logged_open += 1;
        } else {
            self.dropped_events += 1;
        }
        self.stack.push(Frame {
            id,
            start: at,
            children_ns: 0,
            log_index,
        });
    }

    /// Doubles the shadow stack, up to [`MAX_DEPTH`] frames and within the budget; returns
    /// whether there is room for one more frame.
    #[cold]
    fn grow_stack(&mut self) -> bool {
        let capacity = self.stack.capacity();
        if capacity >= MAX_DEPTH {
            return false;
        }
        let more = capacity.clamp(1, MAX_DEPTH - capacity);
        if !self.budget.try_charge(more * size_of::<Frame>()) {
            return false;
        }
        self.stack.reserve_exact(more);
        true
    }

    /// Closes the innermost open frame of `id`. An id that is not the innermost open frame
    /// closes the frames above its innermost match (an exception or a guest's own calls skipped
    /// their exits); an id with no open frame is ignored.
    #[inline]
    fn pop_to(&mut self, id: u32) {
        let Some(depth) = self.stack.iter().rposition(|f| f.id == id) else {
            self.ignored_calls += 1;
            return;
        };
        let at = self.now();
        let frame = self.stack[depth];
        while self.stack.len() > depth {
            self.close_top(at);
        }
        if frame.log_index == NOT_LOGGED {
            self.dropped_events += 1;
        } else if at.saturating_sub(frame.start) < self.min_span_ns
            && self.events[frame.log_index + 1..]
                .iter()
                .all(|e| e.kind == EventKind::HostIo)
        {
            // Too short to be a span, and nothing it did is in the log after its enter but
            // details of its own.
            self.events.truncate(frame.log_index);
            self.short_calls += 1;
        } else {
            self.log(Event {
                at,
                id,
                kind: EventKind::Exit,
            });
        }
    }

    /// Appends to the log, in room [`has_room`](Self::has_room) made.
    #[inline]
    fn log(&mut self, event: Event) {
        debug_assert!(self.events.len() < self.events.capacity());
        self.events.push(event);
    }

    /// Grows the log to hold `needed` events: doubling, never past `max_events`, and only as
    /// far as the budget allows. Returns whether it now holds them.
    #[cold]
    fn grow_log(&mut self, needed: usize) -> bool {
        let capacity = self.events.capacity();
        if needed > self.max_events {
            return false;
        }
        let doubled = needed.max(capacity.saturating_mul(2)).min(self.max_events);
        for target in [doubled, needed] {
            if self
                .budget
                .try_charge((target - capacity) * size_of::<Event>())
            {
                self.events.reserve_exact(target - self.events.len());
                return true;
            }
        }
        false
    }

    /// Makes room in a full log by raising the minimum span duration: the shorter half of the
    /// finished calls leave the log (a callee is never longer than its caller, so no kept call
    /// loses its caller), and from now on calls that short leave it when they return. Spans are
    /// thus always the longest calls of the whole run. Gives up for the rest of the run when it
    /// frees less than a quarter of the log (a log of open frames and memory growth).
    #[cold]
    fn compact(&mut self) {
        // Its working memory (`aux`, `durations`, `keep`) is charged while it runs.
        let scratch = self.events.len() * (2 * size_of::<u64>() + 1);
        if !self.budget.try_charge(scratch) {
            self.can_compact = false;
            return;
        }
        self.compact_within_budget();
        self.budget.release(scratch);
    }

    fn compact_within_budget(&mut self) {
        // For an enter: when its call ended (OPEN if it has not); for an exit: its enter.
        const OPEN: u64 = u64::MAX;
        let mut aux = vec![OPEN; self.events.len()];
        let mut open: Vec<usize> = Vec::new();
        let mut durations = Vec::with_capacity(self.events.len() / 2);
        for (i, event) in self.events.iter().enumerate() {
            match event.kind {
                EventKind::Enter => open.push(i),
                EventKind::Exit => {
                    let Some(depth) = open.iter().rposition(|&e| self.events[e].id == event.id)
                    else {
                        continue;
                    };
                    aux[i] = open[depth] as u64;
                    for e in open.drain(depth..) {
                        aux[e] = event.at;
                        durations.push(event.at.saturating_sub(self.events[e].at));
                    }
                }
                // A detail of its call: kept with it.
                EventKind::HostIo => aux[i] = open.last().map_or(OPEN, |&e| e as u64),
                EventKind::MemoryGrow | EventKind::Note => {}
            }
        }
        if durations.is_empty() {
            self.can_compact = false;
            return;
        }
        let half = durations.len() / 2;
        let threshold = *durations.select_nth_unstable(half).1;
        drop(durations);
        let keep_enter = |i: usize| aux[i] == OPEN || aux[i] - self.events[i].at > threshold;
        let keep: Vec<bool> = (0..self.events.len())
            .map(|i| match self.events[i].kind {
                EventKind::Enter => keep_enter(i),
                EventKind::Exit | EventKind::HostIo => {
                    aux[i] == OPEN || keep_enter(aux[i] as usize)
                }
                EventKind::MemoryGrow | EventKind::Note => true,
            })
            .collect();
        drop(aux);
        let before = self.events.len();
        let mut removed_calls = 0;
        let mut frames = self.stack.iter_mut().filter(|f| f.log_index != NOT_LOGGED);
        let mut next_open = frames.next();
        let mut write = 0;
        for (read, &kept) in keep.iter().enumerate() {
            if !kept {
                removed_calls += u64::from(self.events[read].kind == EventKind::Enter);
                continue;
            }
            if let Some(frame) = next_open.as_deref_mut()
                && frame.log_index == read
            {
                frame.log_index = write;
                next_open = frames.next();
            }
            self.events[write] = self.events[read];
            write += 1;
        }
        self.events.truncate(write);
        self.short_calls += removed_calls;
        self.min_span_ns = self.min_span_ns.max(threshold.saturating_add(1));
        if before - write < self.max_events / 4 {
            self.can_compact = false;
        }
    }

    /// The `memory-grow(pages)` hook.
    #[inline]
    pub fn memory_grow(&mut self, pages: u32) {
        let at = self.now();
        if self.has_room(1) {
            self.log(Event {
                at,
                id: pages,
                kind: EventKind::MemoryGrow,
            });
        } else {
            self.dropped_events += 1;
        }
    }

    fn close_top(&mut self, at: u64) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        self.logged_open -= usize::from(frame.log_index != NOT_LOGGED);
        let total = at.saturating_sub(frame.start);
        let aggregate = &mut self.aggregates[frame.id as usize];
        if aggregate.calls == 0 {
            mark_called(&mut self.called, frame.id);
        }
        aggregate.calls += 1;
        aggregate.total_ns += total;
        aggregate.self_ns += total.saturating_sub(frame.children_ns);
        aggregate.max_ns = aggregate.max_ns.max(total);
        if let Some(parent) = self.stack.last_mut() {
            parent.children_ns += total;
        }
    }

    /// Ends the run at `at`: frames still open (trap, timeout, `proc_exit`) are closed there and
    /// counted in the aggregates. Returns how many were open.
    pub fn finish(&mut self, at: u64) -> usize {
        let open = self.stack.len();
        while !self.stack.is_empty() {
            self.close_top(at);
        }
        open
    }

    /// The event log, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Events not logged because the log was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// The minimum span duration in the end: the configured one, or higher if the log filled.
    pub fn min_span_ns(&self) -> u64 {
        self.min_span_ns
    }

    /// Calls left out of the log for being shorter than the minimum span duration.
    pub fn short_calls(&self) -> u64 {
        self.short_calls
    }

    /// Bytes held by the log, the shadow stack and the aggregates.
    pub fn memory_bytes(&self) -> usize {
        self.events.capacity() * size_of::<Event>()
            + self.stack.capacity() * size_of::<Frame>()
            + self.aggregates.capacity() * size_of::<Aggregate>()
            + self.called.capacity() * size_of::<u64>()
    }

    /// Ids below this are the module's functions; host functions follow, then manual spans.
    pub fn functions(&self) -> u32 {
        self.functions
    }

    /// Host functions timed at the boundary.
    pub fn host_functions(&self) -> u32 {
        self.host_functions
    }

    /// Names of the manual spans, by id past the host functions.
    pub fn manual_names(&self) -> &[String] {
        &self.manual_names
    }

    /// Tags and log records, by [`EventKind::Note`] index.
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// Metric lines, in order.
    pub fn metric_lines(&self) -> &[MetricLine] {
        &self.metric_lines
    }

    /// Notes and metric lines dropped (past the allowance or the memory limit).
    pub fn dropped_notes(&self) -> u64 {
        self.dropped_notes
    }

    /// `span-exit` calls with no manual span open.
    pub fn unbalanced_span_exits(&self) -> u64 {
        self.unbalanced_span_exits
    }

    /// Hook calls ignored: unknown ids, exits with no open frame, or too deep.
    pub fn ignored_calls(&self) -> u64 {
        self.ignored_calls
    }

    /// Per-function aggregates, indexed by function id.
    pub fn aggregates(&self) -> &[Aggregate] {
        &self.aggregates
    }

    /// The aggregates of the functions called at least once, by id.
    pub fn called(&self) -> Vec<(u32, Aggregate)> {
        let count = self.called.iter().map(|w| w.count_ones() as usize).sum();
        let mut called = Vec::with_capacity(count);
        for (word, &bits) in (0u32..).zip(&self.called) {
            let mut bits = bits;
            while bits != 0 {
                let id = word * 64 + bits.trailing_zeros();
                called.push((id, self.aggregates[id as usize]));
                bits &= bits - 1;
            }
        }
        called
    }
}

/// Sets `id`'s bit in the bitset of called aggregates.
fn mark_called(called: &mut [u64], id: u32) {
    called[id as usize / 64] |= 1 << (id % 64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: &Recorder) -> Vec<(EventKind, u32)> {
        r.events().iter().map(|e| (e.kind, e.id)).collect()
    }

    #[test]
    fn reported_counters_are_charged_to_the_budget_or_left_to_the_globals() {
        let pair = size_of::<(u32, i64)>();
        let budget = Arc::new(MemoryBudget::new(usize::MAX));
        let mut r = Recorder::with_budget(8, 0, 16, 0, budget.clone());
        r.expect_reports(3);
        let held = budget.used();
        r.report_counts(&[(5, 2), (-1, 0), (6, 9)]);
        assert_eq!(
            budget.used(),
            held + 3 * pair,
            "room for the three, charged once"
        );
        r.report_counts(&[(7, 1), (1, 4)]);
        assert_eq!(budget.used(), held + 3 * pair);
        assert_eq!(
            r.take_reported(),
            [(5, 2), (6, 9), (7, 1)],
            "pairs past the module's counters are dropped"
        );
        assert_eq!(budget.used(), held, "released when taken");

        // No room left in the budget: nothing is kept (the run reads the globals instead).
        let full = Arc::new(MemoryBudget::new(0));
        let mut r = Recorder::with_budget(8, 0, 16, 0, full.clone());
        r.expect_reports(3);
        let held = full.used();
        r.report_counts(&[(5, 2)]);
        assert!(r.take_reported().is_empty());
        assert_eq!(full.used(), held);
    }

    #[test]
    fn aggregates_stay_exact_when_open_frames_fill_the_log() {
        let mut r = Recorder::new(4, 4, 0);
        r.enter(1);
        r.enter(2);
        // Two open frames and their reserved exits fill the log: nothing finished to compact.
        for _ in 0..10 {
            r.enter(3);
            r.exit(3);
        }
        r.exit(2);
        r.exit(1);
        assert_eq!(
            ids(&r),
            [
                (EventKind::Enter, 1),
                (EventKind::Enter, 2),
                (EventKind::Exit, 2),
                (EventKind::Exit, 1)
            ]
        );
        assert_eq!(r.dropped_events(), 20);
        assert_eq!(r.aggregates()[3].calls, 10);
        let (a1, a2) = (r.aggregates()[1], r.aggregates()[2]);
        assert_eq!(a1.self_ns + a2.total_ns, a1.total_ns);
        assert_eq!(a2.self_ns + r.aggregates()[3].total_ns, a2.total_ns);
    }

    #[test]
    fn mismatched_exit_unwinds_to_its_frame_and_unknown_ids_are_ignored() {
        let mut r = Recorder::new(4, 100, 0);
        r.enter(1);
        r.enter(2);
        r.enter(3);
        r.exit(1); // 3 and 2 never exited (an exception passed through uninstrumented code)
        assert_eq!(r.aggregates()[3].calls, 1);
        assert_eq!(r.aggregates()[2].calls, 1);
        r.exit(1); // nothing open: ignored
        r.enter(99); // not a function of this module
        assert_eq!(r.ignored_calls(), 2);
        assert_eq!(
            ids(&r),
            [
                (EventKind::Enter, 1),
                (EventKind::Enter, 2),
                (EventKind::Enter, 3),
                (EventKind::Exit, 1)
            ]
        );
        assert_eq!(r.finish(0), 0);
    }

    #[test]
    fn a_full_log_keeps_the_longest_calls_of_the_whole_run() {
        let mut r = Recorder::new(3, 64, 0);
        r.enter(0);
        for i in 0..1000 {
            r.enter(1);
            r.exit(1);
            if i == 900 {
                r.enter(2);
                let spin = std::time::Instant::now();
                while spin.elapsed() < std::time::Duration::from_millis(2) {}
                r.exit(2);
            }
        }
        r.exit(0);
        assert!(r.events().len() <= 64);
        let logged: Vec<_> = r.events().iter().map(|e| (e.kind, e.id)).collect();
        assert!(logged.contains(&(EventKind::Enter, 2)), "{logged:?}");
        assert_eq!(logged.first(), Some(&(EventKind::Enter, 0)));
        assert_eq!(logged.last(), Some(&(EventKind::Exit, 0)));
        let enters = logged.iter().filter(|e| e.0 == EventKind::Enter).count();
        let exits = logged.iter().filter(|e| e.0 == EventKind::Exit).count();
        assert_eq!(enters, exits);
        assert_eq!(r.dropped_events(), 0);
        assert_eq!(r.short_calls() as usize + enters, 1002);
        assert_eq!(r.aggregates()[1].calls, 1000);
        assert!(r.min_span_ns() > 0);
    }

    #[test]
    fn called_lists_the_functions_with_calls_by_id() {
        let mut r = Recorder::new(130, 1000, 0);
        r.enter(70);
        r.enter(2);
        r.exit(2);
        r.enter(2);
        r.exit(2);
        r.count_calls(129, 7);
        r.count_calls(3, 0);
        r.enter(64); // still open when the run ends
        r.finish(r.now());
        let called: Vec<(u32, u64)> = r.called().iter().map(|(id, a)| (*id, a.calls)).collect();
        assert_eq!(called, [(2, 2), (64, 1), (70, 1), (129, 7)]);
        let every: Vec<(u32, u64)> = (0u32..)
            .zip(r.aggregates())
            .filter(|(_, a)| a.calls > 0)
            .map(|(id, a)| (id, a.calls))
            .collect();
        assert_eq!(called, every);
    }

    #[test]
    fn the_log_never_holds_more_room_than_its_cap() {
        let mut r = Recorder::new(2, 1000, 0);
        r.enter(0);
        for _ in 0..5000 {
            r.enter(1);
            r.exit(1);
        }
        r.exit(0);
        assert!(r.events().len() <= 1000);
        assert_eq!(
            r.memory_bytes(),
            1000 * size_of::<Event>()
                + 64 * size_of::<Frame>()
                + 2 * size_of::<Aggregate>()
                + size_of::<u64>()
        );
    }

    #[test]
    fn compaction_keeps_open_frames_and_their_exits() {
        let mut r = Recorder::new(3, 16, 0);
        r.enter(0);
        r.enter(1);
        for _ in 0..100 {
            r.enter(2);
            r.exit(2);
        }
        r.exit(1);
        r.exit(0);
        let logged = ids(&r);
        assert_eq!(&logged[..2], [(EventKind::Enter, 0), (EventKind::Enter, 1)]);
        assert_eq!(
            &logged[logged.len() - 2..],
            [(EventKind::Exit, 1), (EventKind::Exit, 0)]
        );
        assert_eq!(r.aggregates()[2].calls, 100);
    }

    #[test]
    fn short_calls_leave_the_log_but_not_the_aggregates() {
        let mut r = Recorder::new(4, 100, u64::MAX);
        r.enter(1);
        r.enter(2);
        r.exit(2);
        r.memory_grow(1);
        r.enter(3);
        r.exit(3);
        r.exit(1);
        r.enter(2);
        r.exit(2);
        // 1 stays: a memory.grow happened inside it after its enter.
        assert_eq!(
            ids(&r),
            [
                (EventKind::Enter, 1),
                (EventKind::MemoryGrow, 1),
                (EventKind::Exit, 1)
            ]
        );
        assert_eq!(r.short_calls(), 3);
        assert_eq!(r.aggregates()[2].calls, 2);
        assert_eq!(r.aggregates()[3].calls, 1);
        let a1 = r.aggregates()[1];
        assert!(a1.self_ns + r.aggregates()[3].total_ns <= a1.total_ns);
    }

    #[test]
    fn finish_closes_open_frames() {
        let mut r = Recorder::new(2, 100, 0);
        r.enter(0);
        r.enter(1);
        assert_eq!(r.finish(r.now()), 2);
        assert_eq!(r.aggregates()[0].calls, 1);
    }
}
