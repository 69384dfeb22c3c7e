//! Traces of runs: recording (hot path), the call tree, spans, export and the recent-trace buffer.

pub mod export;
pub mod recent;
pub mod recorder;
pub mod tree;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry::{KeyValue, Value};
use serde::Serialize;

use recorder::Recorder;

/// A span ready for export and display.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// This span.
    pub span_id: SpanId,
    /// Its parent, if any (for the request span: the caller's span from `traceparent`).
    pub parent_span_id: Option<SpanId>,
    /// Span name: `POST /run`, `run <module>`, or the function name.
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

/// All spans of one run.
#[derive(Debug, Clone)]
pub struct TraceRecord {
    /// The trace (the caller's, from `traceparent`, or a new one).
    pub trace_id: TraceId,
    /// The module that ran.
    pub module: String,
    /// Spans: the request span first, then `run <module>`, then function calls in start order.
    pub spans: Vec<SpanRecord>,
    /// Whether the caller's span context came from `traceparent`.
    pub remote_parent: bool,
    /// Exact per-function totals of the run, most total time first.
    pub functions: Vec<FunctionStats>,
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
}

/// How a run ended, as the trace tells it.
#[derive(Debug, Clone)]
pub enum Ending {
    /// `_start` returned or the guest called `proc_exit`.
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
}

impl Ending {
    fn error(&self) -> Option<String> {
        match self {
            Ending::Exit(0) => None,
            Ending::Exit(code) => Some(format!("exited with code {code}")),
            Ending::Trap { message, .. } => Some(format!("trap: {message}")),
            Ending::Timeout => Some("timed out".into()),
        }
    }
}

/// What the span builder needs to know about a finished run.
pub struct RunFacts<'a> {
    /// Module name.
    pub module: &'a str,
    /// Function names indexed by hook id.
    pub names: &'a [Option<String>],
    /// Trace id and the caller's span, if a `traceparent` came in.
    pub trace_id: TraceId,
    /// The caller's span from `traceparent`.
    pub remote_parent: Option<SpanId>,
    /// The request span's id (returned in the response's `traceparent`).
    pub request_span: SpanId,
    /// When the request arrived and when its response was ready.
    pub request_start: SystemTime,
    /// When the request completed.
    pub request_end: SystemTime,
    /// Wall-clock time of the recorder's origin.
    pub run_start: SystemTime,
    /// Nanoseconds from the origin to the end of the run.
    pub run_ns: u64,
    /// How the run ended.
    pub ending: &'a Ending,
    /// Captured stderr (already capped).
    pub stderr: &'a [u8],
    /// Upper bound on function spans.
    pub max_spans: usize,
}

/// Builds the spans of a finished run from its recorder.
pub fn build_trace(facts: &RunFacts<'_>, recorder: &Recorder) -> TraceRecord {
    let at = |ns: u64| facts.run_start + Duration::from_nanos(ns);
    let (calls, outside_grows) = tree::build(recorder.events(), facts.run_ns);
    let keep = tree::select(&calls, facts.max_spans);
    let kept = keep.iter().filter(|k| **k).count();
    let error = facts.ending.error();
    let run_span = new_span_id();

    let mut spans = Vec::with_capacity(kept + 2);
    let mut request_attributes = vec![
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("http.route", "/run"),
        KeyValue::new("iota.module", facts.module.to_string()),
    ];
    if let Ending::Exit(code) = facts.ending {
        request_attributes.push(KeyValue::new("process.exit.code", i64::from(*code)));
    }
    spans.push(SpanRecord {
        span_id: facts.request_span,
        parent_span_id: facts.remote_parent,
        name: "POST /run".into(),
        kind: SpanKind::Server,
        start: facts.request_start,
        end: facts.request_end.max(at(facts.run_ns)),
        attributes: request_attributes,
        events: Vec::new(),
        error: error.clone(),
    });

    let mut run_attributes = vec![
        KeyValue::new("iota.module", facts.module.to_string()),
        KeyValue::new("iota.calls.recorded", calls.len() as i64),
        KeyValue::new("iota.spans.exported", kept as i64),
        KeyValue::new("iota.spans.dropped", (calls.len() - kept) as i64),
        KeyValue::new("iota.events.dropped", recorder.dropped_events() as i64),
        KeyValue::new("iota.hook_calls.ignored", recorder.ignored_calls() as i64),
    ];
    let functions = function_stats(recorder, facts.names);
    run_attributes.extend(aggregate_attributes(&functions));
    let mut run_events: Vec<SpanEventRecord> = outside_grows
        .iter()
        .map(|&(ns, pages)| memory_grow_event(at(ns), pages))
        .collect();
    if let Ending::Trap { message, backtrace } = facts.ending {
        run_events.push(SpanEventRecord {
            name: "exception".into(),
            time: at(facts.run_ns),
            attributes: vec![
                KeyValue::new("exception.type", "wasm trap"),
                KeyValue::new("exception.message", message.clone()),
                KeyValue::new("exception.stacktrace", backtrace.clone()),
            ],
        });
    }
    if !facts.stderr.is_empty() {
        run_events.push(SpanEventRecord {
            name: "stderr".into(),
            time: at(facts.run_ns),
            attributes: vec![KeyValue::new(
                "log.record.body",
                String::from_utf8_lossy(facts.stderr).into_owned(),
            )],
        });
    }
    spans.push(SpanRecord {
        span_id: run_span,
        parent_span_id: Some(facts.request_span),
        name: format!("run {}", facts.module),
        kind: SpanKind::Internal,
        start: at(0),
        end: at(facts.run_ns),
        attributes: run_attributes,
        events: run_events,
        error: error.clone(),
    });

    let mut span_ids = vec![None; calls.len()];
    for (i, call) in calls.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        let span_id = new_span_id();
        span_ids[i] = Some(span_id);
        let parent = call.parent.and_then(|p| span_ids[p]).unwrap_or(run_span);
        let name = function_name(facts.names, call.id);
        spans.push(SpanRecord {
            span_id,
            parent_span_id: Some(parent),
            name: name.clone(),
            kind: SpanKind::Internal,
            start: at(call.start),
            end: at(call.end),
            attributes: vec![
                KeyValue::new("code.function.name", name),
                KeyValue::new("wasm.function.index", i64::from(call.id)),
            ],
            events: call
                .memory_grows
                .iter()
                .map(|&(ns, pages)| memory_grow_event(at(ns), pages))
                .collect(),
            error: call
                .unfinished
                .then(|| error.clone().unwrap_or_else(|| "did not return".into())),
        });
    }
    TraceRecord {
        trace_id: facts.trace_id,
        module: facts.module.to_string(),
        spans,
        remote_parent: facts.remote_parent.is_some(),
        functions,
    }
}

fn function_name(names: &[Option<String>], id: u32) -> String {
    names
        .get(id as usize)
        .and_then(|n| n.clone())
        .unwrap_or_else(|| format!("wasm-function[{id}]"))
}

fn memory_grow_event(time: SystemTime, pages: u32) -> SpanEventRecord {
    SpanEventRecord {
        name: "memory.grow".into(),
        time,
        attributes: vec![KeyValue::new("wasm.memory.grow.pages", i64::from(pages))],
    }
}

/// Every called function's totals, most total time first.
fn function_stats(recorder: &Recorder, names: &[Option<String>]) -> Vec<FunctionStats> {
    let mut stats: Vec<FunctionStats> = recorder
        .aggregates()
        .iter()
        .enumerate()
        .filter(|(_, a)| a.calls > 0)
        .map(|(id, a)| FunctionStats {
            id: id as u32,
            name: function_name(names, id as u32),
            calls: a.calls,
            total_ns: a.total_ns,
            self_ns: a.self_ns,
            max_ns: a.max_ns,
        })
        .collect();
    stats.sort_by_key(|f| (std::cmp::Reverse(f.total_ns), f.id));
    stats
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
        self.spans
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
        self.spans.first().map_or(UNIX_EPOCH, |s| s.start)
    }

    /// Duration of the request span.
    pub fn duration(&self) -> Duration {
        self.spans.first().map_or(Duration::ZERO, |s| {
            s.end.duration_since(s.start).unwrap_or_default()
        })
    }

    /// The request span's error, if the run failed.
    pub fn error(&self) -> Option<&str> {
        self.spans.first().and_then(|s| s.error.as_deref())
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
