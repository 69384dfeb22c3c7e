//! Traces of runs: recording (hot path), the call tree, spans, export and the recent-trace buffer.

pub mod export;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod profile;
pub mod recent;
pub mod recorder;
pub mod sampling;
pub mod transport;
pub mod tree;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TraceState};
use opentelemetry::{KeyValue, Value};
use serde::{Deserialize, Serialize};

use names::{CallKind, CallNames};
use recorder::{Aggregate, MetricLine, Note, Recorder};
use tree::{Call, Mark, MarkKind};

/// A span ready for export and display.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// This span.
    pub span_id: SpanId,
    /// Its parent, if any (for the request span: the caller's span from `traceparent`).
    pub parent_span_id: Option<SpanId>,
    /// Span name: `POST /run` (or the method and route of a request to an HTTP handler),
    /// `run <module>`, or the function name.
    pub name: String,
    /// Server for the request span, internal for the rest.
    pub kind: SpanKind,
    /// Start time.
    pub start: SystemTime,
    /// End time.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
    /// Timed events (memory growth, trap, stderr).
    pub events: Vec<SpanEventRecord>,
    /// Error description if the span failed.
    pub error: Option<String>,
}

/// An event inside a span.
#[derive(Debug, Clone)]
pub struct SpanEventRecord {
    /// Event name.
    pub name: String,
    /// When.
    pub time: SystemTime,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
}

/// Limits on a run's spans, set per server and per module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanVolume {
    /// Function spans kept per run: the calls open at the end (a trap's stack) first, then the
    /// longest, always with their ancestors.
    pub max_spans: usize,
    /// Calls shorter than this many microseconds are not spans; their time shows in their
    /// caller's self time, and they still count in the per-function totals.
    pub min_span_us: u64,
}

/// Span limits chosen at upload for one module; what is unset follows the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanOverrides {
    /// See [`SpanVolume::max_spans`]; at most the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spans: Option<usize>,
    /// See [`SpanVolume::min_span_us`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_span_us: Option<u64>,
}

impl SpanOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == SpanOverrides::default()
    }

    /// The limits for a run: these overrides over the server's `defaults`.
    pub fn over(&self, defaults: SpanVolume) -> SpanVolume {
        SpanVolume {
            max_spans: self.max_spans.unwrap_or(defaults.max_spans),
            min_span_us: self.min_span_us.unwrap_or(defaults.min_span_us),
        }
    }
}

/// One run, as recorded: the calls kept as spans, the exact per-function totals and what is
/// needed to build spans. Spans themselves are built only when someone looks or exports, so a
/// run costs no allocation per call.
#[derive(Debug)]
pub struct TraceRecord {
    /// The trace (the caller's, from `traceparent`, or a new one).
    pub trace_id: TraceId,
    /// The module that ran.
    pub module: String,
    /// Sampled: its spans are exported.
    pub sampled: bool,
    /// The SHA-256 of the module that ran.
    pub version: String,
    coldstart: bool,
    /// Learned functions the run timed again.
    audited: usize,
    /// The `tracestate` its spans carry.
    pub trace_state: TraceState,
    names: CallNames,
    remote_parent: Option<SpanId>,
    request_span: SpanId,
    run_span: SpanId,
    request_start: SystemTime,
    request_end: SystemTime,
    run_start: SystemTime,
    run_ns: u64,
    ending: Ending,
    stderr: Bytes,
    request: RequestLine,
    response_status: Option<u16>,
    /// Kept calls in start order; parents index this vector and come before their callees.
    calls: Vec<Call>,
    /// Memory growth, host calls' bytes and the guest's notes, each in its kept call.
    marks: Vec<Mark>,
    /// Tags and log records the guest sent through the Observe API.
    notes: Vec<Note>,
    /// Metric lines the guest sent through the Observe API.
    metric_lines: Vec<MetricLine>,
    /// Functions whose calls the module counted rather than timed (sorted).
    counted: Vec<u32>,
    /// Called functions' totals, by hook id.
    aggregates: Vec<(u32, Aggregate)>,
    /// Every logged call merged by stack, for profiles: built with the trace when some calls
    /// were left out of `calls`, else from them when first asked for.
    stacks: OnceLock<profile::Stacks>,
    volume: Volume,
}

/// How much a run recorded and what was left out.
#[derive(Debug, Clone, Copy)]
struct Volume {
    calls_logged: usize,
    short_calls: u64,
    dropped_events: u64,
    ignored_calls: u64,
    recorder_bytes: usize,
    min_span_ns: u64,
    run_memory_bytes: usize,
    dropped_notes: u64,
    unbalanced_span_exits: u64,
}

/// One function's exact totals over a run, whatever spans were kept.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionStats {
    /// Hook id.
    pub id: u32,
    /// Demangled name.
    pub name: String,
    /// Completed calls (calls cut short by a trap included).
    pub calls: u64,
    /// Time inside, callees included.
    pub total_ns: u64,
    /// Time inside, callees excluded.
    pub self_ns: u64,
    /// Longest call.
    pub max_ns: u64,
    /// Its calls were timed; `false` for a function whose calls the module only counted (its
    /// times are in its callers').
    pub timed: bool,
}

/// How a run ended, as the trace tells it.
#[derive(Debug, Clone)]
pub enum Ending {
    /// `_start` (or the reactor's function) returned, or the guest called `proc_exit`.
    Exit(i32),
    /// The guest trapped.
    Trap {
        /// The trap message.
        message: String,
        /// The wasm backtrace, one frame per line.
        backtrace: String,
    },
    /// The wall-clock limit ran out.
    Timeout,
    /// The run was stopped before it ended.
    Cancelled(Cancel),
    /// The host could not run the guest (no instance could be made).
    HostError(String),
}

/// Why a run was stopped before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The client went away before the answer.
    ClientDisconnected,
    /// The request body (the guest's stdin) went past its limit of this many bytes.
    BodyTooLarge(usize),
}

impl std::fmt::Display for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cancel::ClientDisconnected => f.write_str("client disconnected"),
            Cancel::BodyTooLarge(limit) => write!(f, "request body larger than {limit} bytes"),
        }
    }
}

impl Ending {
    /// The HTTP status `POST /run` answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Ending::Exit(0) => 200,
            Ending::Exit(_) => 422,
            Ending::Trap { .. } | Ending::HostError(_) => 500,
            Ending::Timeout => 504,
            Ending::Cancelled(Cancel::BodyTooLarge(_)) => 413,
            // Nobody is left to answer; nginx's "client closed request".
            Ending::Cancelled(Cancel::ClientDisconnected) => 499,
        }
    }

    /// `error.type` of a failed run: `exit`, `trap`, `timeout`, `cancelled`, `host_error`.
    pub fn error_type(&self) -> Option<&'static str> {
        match self {
            Ending::Exit(0) => None,
            Ending::Exit(_) => Some("exit"),
            Ending::Trap { .. } => Some("trap"),
            Ending::Timeout => Some("timeout"),
            Ending::Cancelled(_) => Some("cancelled"),
            Ending::HostError(_) => Some("host_error"),
        }
    }

    /// What went wrong, if the run failed.
    pub fn error(&self) -> Option<String> {
        match self {
            Ending::Exit(0) => None,
            Ending::Exit(code) => Some(format!("exited with code {code}")),
            Ending::Trap { message, .. } => Some(format!("trap: {message}")),
            Ending::Timeout => Some("timed out".into()),
            Ending::Cancelled(cancel) => Some(format!("cancelled: {cancel}")),
            Ending::HostError(message) => Some(format!("host error: {message}")),
        }
    }
}

/// What a trace needs to know about a finished run besides its recorder.
pub struct RunFacts {
    /// Module name.
    pub module: String,
    /// Function names indexed by hook id.
    pub names: Arc<[Option<String>]>,
    /// Functions' source locations indexed by hook id.
    pub locations: Arc<[Option<names::SourceLocation>]>,
    /// Host functions timed at the boundary, by index.
    pub host_functions: &'static [&'static str],
    /// Trace id (the caller's, from `traceparent`, or a new one).
    pub trace_id: TraceId,
    /// The caller's span from `traceparent`.
    pub remote_parent: Option<SpanId>,
    /// The request span's id (returned in the response's `traceparent`).
    pub request_span: SpanId,
    /// When the request arrived.
    pub request_start: SystemTime,
    /// When its response was ready.
    pub request_end: SystemTime,
    /// Wall-clock time of the recorder's origin.
    pub run_start: SystemTime,
    /// Nanoseconds from the origin to the end of the run.
    pub run_ns: u64,
    /// How the run ended.
    pub ending: Ending,
    /// Captured stderr (already capped).
    pub stderr: Bytes,
    /// Upper bound on function spans.
    pub max_spans: usize,
    /// Sampled: spans are exported (else only the per-function totals count).
    pub sampled: bool,
    /// The first run of this module version in this process.
    pub coldstart: bool,
    /// How many of the module's learned functions the run timed again (audited, see
    /// [`crate::learning`]).
    pub audited: usize,
    /// The module version: the SHA-256 of the module that ran.
    pub version: String,
    /// The `tracestate` passed on with the spans.
    pub trace_state: TraceState,
    /// Bytes the run held at its end: memories, tables and host buffers.
    pub memory_bytes: usize,
    /// The request that started the run.
    pub request: RequestLine,
    /// The status answered, when the guest chose it (an HTTP handler's response).
    pub response_status: Option<u16>,
}

/// The request a run answers: `POST /run`, or a request to an HTTP handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    /// Its method.
    pub method: String,
    /// The route that matched (`/run`, `/{name}/{*path}`).
    pub route: String,
    /// The path asked for.
    pub path: String,
}

impl Default for RequestLine {
    fn default() -> Self {
        RequestLine {
            method: "POST".into(),
            route: "/run".into(),
            path: "/run".into(),
        }
    }
}

impl TraceRecord {
    /// Rebuilds the call tree from the recorder and keeps the calls that will be spans.
    pub fn new(facts: RunFacts, recorder: &Recorder) -> Self {
        let (all_calls, mut marks) = tree::build(recorder.events(), facts.run_ns);
        let calls_logged = all_calls.len();
        let notes = recorder.notes();
        let (calls, stacks) = match tree::select(&all_calls, facts.max_spans) {
            // Every call is kept: the profile is built from them if someone asks for it.
            None => (all_calls, OnceLock::new()),
            Some(keep) => {
                let stacks = profile::Stacks::from_calls(&all_calls, facts.run_ns);
                // Tags describe their span and leave with it; log records move to a kept
                // caller.
                let calls = tree::retain(all_calls, &keep, &mut marks, |note| {
                    matches!(notes.get(note as usize), Some(Note::Tags(_)))
                });
                (calls, OnceLock::from(stacks))
            }
        };
        TraceRecord {
            trace_id: facts.trace_id,
            sampled: facts.sampled,
            version: facts.version,
            coldstart: facts.coldstart,
            audited: facts.audited,
            trace_state: facts.trace_state,
            module: facts.module,
            names: CallNames::new(
                facts.names,
                facts.locations,
                recorder.functions(),
                facts.host_functions,
                recorder.manual_names().into(),
            ),
            remote_parent: facts.remote_parent,
            request_span: facts.request_span,
            run_span: new_span_id(),
            request_start: facts.request_start,
            request_end: facts.request_end,
            run_start: facts.run_start,
            run_ns: facts.run_ns,
            ending: facts.ending,
            stderr: facts.stderr,
            request: facts.request,
            response_status: facts.response_status,
            volume: Volume {
                calls_logged,
                short_calls: recorder.short_calls(),
                dropped_events: recorder.dropped_events(),
                ignored_calls: recorder.ignored_calls(),
                recorder_bytes: recorder.memory_bytes(),
                min_span_ns: recorder.min_span_ns(),
                run_memory_bytes: facts.memory_bytes,
                dropped_notes: recorder.dropped_notes(),
                unbalanced_span_exits: recorder.unbalanced_span_exits(),
            },
            calls,
            marks,
            notes: notes.to_vec(),
            metric_lines: recorder.metric_lines().to_vec(),
            counted: {
                let mut counted = recorder.counted().to_vec();
                counted.sort_unstable();
                counted
            },
            aggregates: recorder.called(),
            stacks,
        }
    }

    /// Every call of the log merged by stack (see [`profile`]).
    pub fn stacks(&self) -> &profile::Stacks {
        self.stacks
            .get_or_init(|| profile::Stacks::from_calls(&self.calls, self.run_ns))
    }

    /// Nanoseconds the run lasted, from its start to its end.
    pub fn run_duration_ns(&self) -> u64 {
        self.run_ns
    }

    /// Spans in this trace: the request span, the run span and one per kept call.
    pub fn span_count(&self) -> usize {
        self.calls.len() + 2
    }

    /// What the run's call ids name.
    pub fn names(&self) -> &CallNames {
        &self.names
    }

    /// Metric lines the guest sent, in order.
    pub fn metric_lines(&self) -> &[MetricLine] {
        &self.metric_lines
    }

    /// Whether function `id`'s calls were only counted (so its totals hold no time).
    pub fn is_counted(&self, id: u32) -> bool {
        self.counted.binary_search(&id).is_ok()
    }

    /// How the run ended.
    pub fn ending(&self) -> &Ending {
        &self.ending
    }

    /// Exact totals of each called function, by hook id.
    pub fn function_totals(&self) -> impl Iterator<Item = (u32, Aggregate)> + '_ {
        self.aggregates.iter().copied()
    }

    /// Whether the request span's parent came from the caller's `traceparent`.
    pub fn has_remote_parent(&self) -> bool {
        self.remote_parent.is_some()
    }

    /// The id of the request span (the root of this trace within iota).
    pub fn request_span(&self) -> SpanId {
        self.request_span
    }

    /// Every called function's exact totals, most total time first.
    pub fn functions(&self) -> Vec<FunctionStats> {
        let mut stats: Vec<FunctionStats> = self
            .aggregates
            .iter()
            .map(|&(id, a)| FunctionStats {
                id,
                name: self.names.name(id),
                calls: a.calls,
                total_ns: a.total_ns,
                self_ns: a.self_ns,
                max_ns: a.max_ns,
                timed: !self.is_counted(id),
            })
            .collect();
        stats.sort_by_key(|f| {
            (
                std::cmp::Reverse(f.total_ns),
                std::cmp::Reverse(f.calls),
                f.id,
            )
        });
        stats
    }

    /// Builds the spans: the request span first, then `run <module>`, then function calls in
    /// start order. Span ids are derived from the run span's, so building twice gives the same.
    pub fn spans(&self) -> Vec<SpanRecord> {
        let at = |ns: u64| self.run_start + Duration::from_nanos(ns);
        let error = self.ending.error();
        let mut spans = Vec::with_capacity(self.span_count());
        let status = match (&self.ending, self.response_status) {
            (Ending::Exit(0), Some(status)) => status,
            _ => self.ending.http_status(),
        };
        let mut request_attributes = vec![
            KeyValue::new("http.request.method", self.request.method.clone()),
            KeyValue::new("http.route", self.request.route.clone()),
            KeyValue::new("url.path", self.request.path.clone()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("faas.trigger", "http"),
            KeyValue::new("faas.invocation_id", self.request_span.to_string()),
            KeyValue::new("faas.coldstart", self.coldstart),
            KeyValue::new("iota.module", self.module.clone()),
        ];
        if let Ending::Exit(code) = self.ending {
            request_attributes.push(KeyValue::new("process.exit.code", i64::from(code)));
        }
        if let Some(kind) = self.ending.error_type() {
            request_attributes.push(KeyValue::new("error.type", kind));
        }
        spans.push(SpanRecord {
            span_id: self.request_span,
            parent_span_id: self.remote_parent,
            name: format!("{} {}", self.request.method, self.request.route),
            kind: SpanKind::Server,
            start: self.request_start,
            end: self.request_end.max(at(self.run_ns)),
            attributes: request_attributes,
            events: Vec::new(),
            error: error.clone(),
        });

        let v = &self.volume;
        let functions = self.functions();
        let total_calls: u64 = functions.iter().map(|f| f.calls).sum();
        let counted_calls: u64 = functions.iter().filter(|f| !f.timed).map(|f| f.calls).sum();
        let mut run_attributes = vec![
            KeyValue::new("iota.module", self.module.clone()),
            KeyValue::new("iota.calls.total", total_calls as i64),
            KeyValue::new("iota.calls.counted", counted_calls as i64),
            KeyValue::new("iota.calls.recorded", v.calls_logged as i64),
            KeyValue::new("iota.calls.short", v.short_calls as i64),
            KeyValue::new("iota.span.min_ns", v.min_span_ns as i64),
            KeyValue::new("iota.spans.exported", self.calls.len() as i64),
            KeyValue::new(
                "iota.spans.dropped",
                (v.calls_logged - self.calls.len()) as i64,
            ),
            KeyValue::new("iota.events.dropped", v.dropped_events as i64),
            KeyValue::new("iota.hook_calls.ignored", v.ignored_calls as i64),
            KeyValue::new("iota.recorder.bytes", v.recorder_bytes as i64),
            KeyValue::new("iota.run.memory_bytes", v.run_memory_bytes as i64),
        ];
        if self.audited > 0 {
            run_attributes.push(KeyValue::new("iota.learn.audited", self.audited as i64));
        }
        if v.dropped_notes > 0 {
            run_attributes.push(KeyValue::new(
                "iota.observe.dropped",
                v.dropped_notes as i64,
            ));
        }
        if v.unbalanced_span_exits > 0 {
            run_attributes.push(KeyValue::new(
                "iota.observe.unbalanced_span_exits",
                v.unbalanced_span_exits as i64,
            ));
        }
        run_attributes.extend(aggregate_attributes(&functions));
        let mut call_events: Vec<Vec<SpanEventRecord>> = vec![Vec::new(); self.calls.len()];
        let mut call_attributes: Vec<Vec<KeyValue>> = self
            .calls
            .iter()
            .map(|call| self.call_attributes(call))
            .collect();
        let mut run_events = Vec::new();
        for mark in &self.marks {
            let (event, attributes) = self.mark(mark, at(mark.at));
            match mark.call {
                Some(i) => {
                    call_events[i as usize].extend(event);
                    call_attributes[i as usize].extend(attributes);
                }
                None => {
                    run_events.extend(event);
                    run_attributes.extend(attributes);
                }
            }
        }
        if let Ending::Trap { message, backtrace } = &self.ending {
            run_events.push(SpanEventRecord {
                name: "exception".into(),
                time: at(self.run_ns),
                attributes: vec![
                    KeyValue::new("exception.type", "wasm trap"),
                    KeyValue::new("exception.message", message.clone()),
                    KeyValue::new("exception.stacktrace", backtrace.clone()),
                ],
            });
        }
        if !self.stderr.is_empty() {
            run_events.push(SpanEventRecord {
                name: "stderr".into(),
                time: at(self.run_ns),
                attributes: vec![
                    KeyValue::new("log.iostream", "stderr"),
                    KeyValue::new(
                        "log.record.original",
                        String::from_utf8_lossy(&self.stderr).into_owned(),
                    ),
                ],
            });
        }
        spans.push(SpanRecord {
            span_id: self.run_span,
            parent_span_id: Some(self.request_span),
            name: format!("run {}", self.module),
            kind: SpanKind::Internal,
            start: at(0),
            end: at(self.run_ns),
            attributes: run_attributes,
            events: run_events,
            error: error.clone(),
        });

        let call_span = |i: usize| derived_span_id(self.run_span, i);
        for (i, call) in self.calls.iter().enumerate() {
            spans.push(SpanRecord {
                span_id: call_span(i),
                parent_span_id: Some(call.parent.map_or(self.run_span, |p| call_span(p as usize))),
                name: self.names.name(call.id),
                kind: SpanKind::Internal,
                start: at(call.start),
                end: at(call.end),
                attributes: std::mem::take(&mut call_attributes[i]),
                events: std::mem::take(&mut call_events[i]),
                // A frame left open is an error only if the run failed: `proc_exit(0)` leaves
                // open frames too.
                error: if call.unfinished { error.clone() } else { None },
            });
        }
        spans
    }
}

impl TraceRecord {
    /// A call span's own attributes: what it calls, and whether it was still open when the run
    /// ended.
    fn call_attributes(&self, call: &Call) -> Vec<KeyValue> {
        let mut attributes = vec![KeyValue::new(
            "code.function.name",
            self.names.name(call.id),
        )];
        match self.names.kind(call.id) {
            CallKind::Function => {
                attributes.push(KeyValue::new("wasm.function.index", i64::from(call.id)));
                if let Some(location) = self.names.location(call.id) {
                    attributes.push(KeyValue::new("code.file.path", location.file.clone()));
                    if let Some(line) = location.line {
                        attributes.push(KeyValue::new("code.line.number", i64::from(line)));
                    }
                    if let Some(column) = location.column {
                        attributes.push(KeyValue::new("code.column.number", i64::from(column)));
                    }
                }
            }
            CallKind::Host(_) => attributes.push(KeyValue::new("iota.call.kind", "host")),
            CallKind::Manual(_) => attributes.push(KeyValue::new("iota.call.kind", "observe")),
        }
        if call.unfinished {
            attributes.push(KeyValue::new("iota.call.unfinished", true));
        }
        attributes
    }

    /// What a mark adds to its span: an event, attributes, or both.
    fn mark(&self, mark: &Mark, time: SystemTime) -> (Option<SpanEventRecord>, Vec<KeyValue>) {
        match mark.kind {
            MarkKind::MemoryGrow(pages) => (Some(memory_grow_event(time, pages)), Vec::new()),
            MarkKind::HostIo { fd, bytes } => {
                let mut attributes = Vec::new();
                if let Some(fd) = fd {
                    attributes.push(KeyValue::new("iota.wasi.fd", i64::from(fd)));
                }
                if let Some(bytes) = bytes {
                    attributes.push(KeyValue::new("iota.wasi.bytes", bytes as i64));
                }
                (None, attributes)
            }
            MarkKind::Note(index) => match self.notes.get(index as usize) {
                Some(Note::Tags(tags)) => (
                    None,
                    tags.iter()
                        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                        .collect(),
                ),
                Some(Note::Log { level, message }) => {
                    let severity = observe::severity(*level);
                    let event = SpanEventRecord {
                        name: "log".into(),
                        time,
                        attributes: vec![
                            KeyValue::new("log.record.original", message.clone()),
                            KeyValue::new("iota.log.severity_text", severity.text),
                            KeyValue::new("iota.log.severity_number", i64::from(severity.number)),
                        ],
                    };
                    (Some(event), Vec::new())
                }
                None => (None, Vec::new()),
            },
        }
    }
}

/// A log record the guest sent through the Observe API, in the span it belongs to.
#[derive(Debug, Clone)]
pub struct GuestLog {
    /// When.
    pub time: SystemTime,
    /// Its severity.
    pub severity: observe::Severity,
    /// The message.
    pub message: String,
    /// The span it was logged in (its innermost kept span).
    pub span_id: SpanId,
}

impl TraceRecord {
    /// The log records the guest sent, in order, each with its span.
    pub fn guest_logs(&self) -> Vec<GuestLog> {
        self.marks
            .iter()
            .filter_map(|mark| {
                let MarkKind::Note(index) = mark.kind else {
                    return None;
                };
                let Some(Note::Log { level, message }) = self.notes.get(index as usize) else {
                    return None;
                };
                Some(GuestLog {
                    time: self.run_start + Duration::from_nanos(mark.at),
                    severity: observe::severity(*level),
                    message: message.clone(),
                    span_id: mark.call.map_or(self.run_span, |i| {
                        derived_span_id(self.run_span, i as usize)
                    }),
                })
            })
            .collect()
    }
}

/// The id of the `index`th call span under `run_span`: distinct per index, never zero.
fn derived_span_id(run_span: SpanId, index: usize) -> SpanId {
    // splitmix64: consecutive inputs give unrelated outputs.
    let mut z = u64::from_be_bytes(run_span.to_bytes())
        .wrapping_add((index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    SpanId::from_bytes((z ^ (z >> 31)).max(1).to_be_bytes())
}

fn memory_grow_event(time: SystemTime, pages: u32) -> SpanEventRecord {
    SpanEventRecord {
        name: "memory.grow".into(),
        time,
        attributes: vec![KeyValue::new("wasm.memory.grow.pages", i64::from(pages))],
    }
}

/// The ten functions with the most self time, as `iota.function.<rank>.*` attributes.
fn aggregate_attributes(functions: &[FunctionStats]) -> Vec<KeyValue> {
    let mut by_self: Vec<&FunctionStats> = functions.iter().collect();
    by_self.sort_by_key(|f| (std::cmp::Reverse(f.self_ns), f.id));
    let mut attributes = vec![KeyValue::new(
        "iota.functions.called",
        functions.len() as i64,
    )];
    for (rank, f) in by_self.iter().take(10).enumerate() {
        let prefix = format!("iota.function.{rank}");
        attributes.push(KeyValue::new(format!("{prefix}.name"), f.name.clone()));
        attributes.push(KeyValue::new(format!("{prefix}.calls"), f.calls as i64));
        attributes.push(KeyValue::new(
            format!("{prefix}.total_ns"),
            f.total_ns as i64,
        ));
        attributes.push(KeyValue::new(format!("{prefix}.self_ns"), f.self_ns as i64));
        attributes.push(KeyValue::new(format!("{prefix}.max_ns"), f.max_ns as i64));
    }
    attributes
}

/// A random, valid (non-zero) span id.
pub fn new_span_id() -> SpanId {
    SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes())
}

/// A random, valid (non-zero) trace id.
pub fn new_trace_id() -> TraceId {
    TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes())
}

/// A span as `GET /traces/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct SpanJson {
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    name: String,
    start_unix_nanos: u128,
    duration_ns: u128,
    attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl TraceRecord {
    /// The spans as JSON-ready values, in the record's order.
    pub fn spans_json(&self) -> Vec<SpanJson> {
        self.spans()
            .iter()
            .map(|s| SpanJson {
                span_id: s.span_id.to_string(),
                parent_span_id: s.parent_span_id.map(|p| p.to_string()),
                name: s.name.clone(),
                start_unix_nanos: unix_nanos(s.start),
                duration_ns: s.end.duration_since(s.start).unwrap_or_default().as_nanos(),
                attributes: attributes_json(&s.attributes),
                events: s
                    .events
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "name": e.name,
                            "time_unix_nanos": unix_nanos(e.time),
                            "attributes": attributes_json(&e.attributes),
                        })
                    })
                    .collect(),
                error: s.error.clone(),
            })
            .collect()
    }

    /// Start of the request span.
    pub fn start(&self) -> SystemTime {
        self.request_start
    }

    /// Duration of the request span.
    pub fn duration(&self) -> Duration {
        let end = self
            .request_end
            .max(self.run_start + Duration::from_nanos(self.run_ns));
        end.duration_since(self.request_start).unwrap_or_default()
    }

    /// Why the run failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.ending.error()
    }
}

fn unix_nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn attributes_json(attributes: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    attributes
        .iter()
        .map(|kv| {
            let value = match &kv.value {
                Value::Bool(b) => serde_json::Value::from(*b),
                Value::I64(i) => serde_json::Value::from(*i),
                Value::F64(f) => serde_json::Value::from(*f),
                other => serde_json::Value::from(other.as_str().into_owned()),
            };
            (kv.key.as_str().to_string(), value)
        })
        .collect()
}
