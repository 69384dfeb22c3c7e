//! HTTP routes: upload, run, registry, traces, health and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry::trace::{SpanId, TraceId};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::registry::{Registry, UploadError, UploadOptions, validate_name};
use crate::runtime::Runtime;
use crate::trace::export::Exporter;
use crate::trace::recent::RecentTraces;
use crate::trace::{
    Ending, RunFacts, SpanOverrides, SpanVolume, TraceRecord, new_span_id, new_trace_id,
};

/// Shared state of the server.
pub struct AppState {
    /// Stored modules.
    pub registry: Registry,
    /// The engine and linker.
    pub runtime: Arc<Runtime>,
    /// Bounds runs executing at once.
    pub runs: Semaphore,
    /// The OTLP exporter, if a collector is configured.
    pub exporter: Option<Exporter>,
    /// The last traces.
    pub recent: RecentTraces,
    /// Span limits of runs whose module sets none.
    pub spans: SpanVolume,
    /// Largest upload.
    pub max_upload: usize,
    /// Largest run body.
    pub max_run_body: usize,
    /// Counters for `/metrics`.
    pub counters: Counters,
    /// Bearer token for uploads and deletes, if required.
    pub upload_token: Option<String>,
    /// Bearer token for runs, if required.
    pub run_token: Option<String>,
}

/// Checks `Authorization: Bearer <token>` against `expected` (if a token is required), in
/// constant time.
fn authorize(headers: &HeaderMap, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token",
        ))
    }
}

/// Request counters.
#[derive(Debug, Default)]
pub struct Counters {
    runs: AtomicU64,
    run_failures: AtomicU64,
    uploads: AtomicU64,
    spans: AtomicU64,
}

/// The routes over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let upload_limit = state.max_upload;
    let run_limit = state.max_run_body;
    Router::new()
        .route(
            "/upload",
            post(upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/run", post(run).layer(DefaultBodyLimit::max(run_limit)))
        .route("/modules", get(list_modules))
        .route("/modules/{name}", get(get_module).delete(delete_module))
        .route("/traces", get(list_traces))
        .route("/traces/{id}", get(get_trace))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An error answer: a status and a JSON `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    extra: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            extra: serde_json::Value::Null,
        }
    }

    fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {err}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let challenge = self.status == StatusCode::UNAUTHORIZED;
        let mut body = json!({ "error": self.message });
        if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), self.extra) {
            body.extend(extra);
        }
        let mut response = (self.status, Json(body)).into_response();
        if challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Query parameters, repeated keys kept in order (`arg=a&arg=b`).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn module_name(pairs: &[(String, String)]) -> Result<String, ApiError> {
    let name = pairs
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing query parameter `name`"))?;
    validate_name(&name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok(name)
}

/// The value of the last `key=` in the query, if any.
fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn flag(
    pairs: &[(String, String)],
    key: &str,
    values: &[&str],
) -> Result<Option<String>, ApiError> {
    match last(pairs, key) {
        None => Ok(None),
        Some(v) if values.contains(&v) => Ok(Some(v.to_string())),
        Some(v) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid `{key}={v}`: expected one of {}", values.join(", ")),
        )),
    }
}

/// The last `key=` as a number no larger than `max`, if present.
fn number(pairs: &[(String, String)], key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    let Some(v) = last(pairs, key) else {
        return Ok(None);
    };
    match v.parse::<u64>() {
        Ok(n) if n <= max => Ok(Some(n)),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid `{key}={v}`: at most {max} allowed"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid `{key}={v}`: expected a whole number"),
        )),
    }
}

async fn upload(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(request.headers(), state.upload_token.as_deref())?;
    // The body is read (within its limit) before anything else is refused, so a client still
    // sending a module gets the JSON error rather than a reset connection.
    let wasm = upload_body(request, &state).await?;
    let pairs = query_pairs(query.as_deref());
    let name = module_name(&pairs)?;
    let options = UploadOptions {
        instrument: flag(&pairs, "instrument", &["true", "false"])?.is_none_or(|v| v == "true"),
        trap_unknown_imports: flag(&pairs, "unknown_imports", &["error", "trap"])?
            .is_some_and(|v| v == "trap"),
        spans: SpanOverrides {
            max_spans: number(&pairs, "max_spans", state.spans.max_spans as u64)?
                .map(|n| n as usize),
            min_span_us: number(&pairs, "min_span_us", u64::MAX / 1000)?,
        },
    };
    let app = state.clone();
    let result = tokio::task::spawn_blocking(move || app.registry.upload(&name, &wasm, options))
        .await
        .map_err(ApiError::internal)?;
    match result {
        Ok((info, timings)) => {
            state.counters.uploads.fetch_add(1, Ordering::Relaxed);
            let mut body = serde_json::to_value(&info).map_err(ApiError::internal)?;
            body["timings_ms"] = serde_json::to_value(timings).map_err(ApiError::internal)?;
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(UploadError::Internal(err)) => Err(ApiError::internal(format!("{err:#}"))),
        Err(err) => Err(ApiError::new(StatusCode::BAD_REQUEST, err.to_string())),
    }
}

/// The module bytes: multipart field `wasm`, or the raw body.
async fn upload_body(request: Request, state: &Arc<AppState>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("upload larger than {} bytes", state.max_upload),
        )
    };
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_multipart {
        let body = Bytes::from_request(request, &()).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(e.status(), e.body_text())
            }
        })?;
        if body.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty upload: send the module as multipart field `wasm` or as the body",
            ));
        }
        return Ok(body);
    }
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let malformed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("malformed multipart body: {}", e.body_text()),
            )
        }
    };
    loop {
        let field = multipart.next_field().await.map_err(malformed)?;
        let Some(field) = field else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "multipart body has no field `wasm`",
            ));
        };
        if field.name() == Some("wasm") {
            return field.bytes().await.map_err(malformed);
        }
    }
}

/// A W3C `traceparent`: trace id and parent span id, if well formed and sampled or not.
fn parse_traceparent(headers: &HeaderMap) -> Option<(TraceId, SpanId)> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    Some((trace, span))
}

async fn run(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let request_start = SystemTime::now();
    authorize(&headers, state.run_token.as_deref())?;
    let pairs = query_pairs(query.as_deref());
    let name = module_name(&pairs)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {} bytes", state.max_run_body),
            )
        } else {
            ApiError::new(e.status(), e.body_text())
        }
    })?;
    let args: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "arg")
        .map(|(_, v)| v.clone())
        .collect();
    let module = state
        .registry
        .get(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no module named `{name}`")))?;
    let (trace_id, remote_parent) = match parse_traceparent(&headers) {
        Some((trace, span)) => (trace, Some(span)),
        None => (new_trace_id(), None),
    };
    let request_span = new_span_id();

    let _permit = state.runs.acquire().await.map_err(ApiError::internal)?;
    let app = state.clone();
    let run_module = module.clone();
    let volume = module.info.spans.over(state.spans);
    let outcome = tokio::task::spawn_blocking(move || {
        let functions = run_module.names.len();
        app.runtime.run(
            &run_module.pre,
            &run_module.info.name,
            &args,
            body,
            functions,
            volume.min_span_us.saturating_mul(1000),
        )
    })
    .await
    .map_err(ApiError::internal)?;
    drop(_permit);

    let trace = Arc::new(TraceRecord::new(
        RunFacts {
            module: name,
            names: module.names.clone(),
            trace_id,
            remote_parent,
            request_span,
            request_start,
            request_end: SystemTime::now(),
            run_start: outcome.started,
            run_ns: outcome.run_ns,
            ending: outcome.ending.clone(),
            stderr: outcome.stderr,
            max_spans: volume.max_spans,
        },
        &outcome.recorder,
    ));
    drop(outcome.recorder);
    state.counters.runs.fetch_add(1, Ordering::Relaxed);
    state
        .counters
        .spans
        .fetch_add(trace.span_count() as u64, Ordering::Relaxed);
    state.recent.push(trace.clone());
    if let Some(exporter) = &state.exporter {
        exporter.send(trace);
    }

    let traceparent = format!("00-{trace_id}-{request_span}-01");
    let mut headers = HeaderMap::new();
    headers.insert("x-iota-trace-id", header_value(&trace_id.to_string()));
    headers.insert("traceparent", header_value(&traceparent));
    let (status, body) = match &outcome.ending {
        Ending::Exit(code) => {
            headers.insert("x-iota-exit-code", header_value(&code.to_string()));
            if outcome.stdout_full {
                headers.insert("x-iota-stdout-truncated", HeaderValue::from_static("true"));
            }
            let status = if *code == 0 {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            if *code != 0 {
                state.counters.run_failures.fetch_add(1, Ordering::Relaxed);
            }
            (status, outcome.stdout)
        }
        Ending::Trap { message, backtrace } => {
            state.counters.run_failures.fetch_add(1, Ordering::Relaxed);
            let mut error = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("guest trapped: {message}"),
            );
            error.extra = json!({ "trace_id": trace_id.to_string(), "backtrace": backtrace, "stdout": String::from_utf8_lossy(&outcome.stdout) });
            return Ok((headers, error).into_response());
        }
        Ending::Timeout => {
            state.counters.run_failures.fetch_add(1, Ordering::Relaxed);
            let mut error = ApiError::new(StatusCode::GATEWAY_TIMEOUT, "guest timed out");
            error.extra = json!({ "trace_id": trace_id.to_string() });
            return Ok((headers, error).into_response());
        }
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok((status, headers, body).into_response())
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn list_modules(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "modules": state.registry.list() }))
}

async fn get_module(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_name(&name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let module = state
        .registry
        .get(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no module named `{name}`")))?;
    Ok(Json(
        serde_json::to_value(&module.info).map_err(ApiError::internal)?,
    ))
}

async fn delete_module(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&headers, state.upload_token.as_deref())?;
    validate_name(&name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    match state.registry.delete(&name) {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no module named `{name}`"),
        )),
        Err(err) => Err(ApiError::internal(format!("{err:#}"))),
    }
}

async fn list_traces(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let traces: Vec<_> = state
        .recent
        .list()
        .iter()
        .map(|t| {
            json!({
                "trace_id": t.trace_id.to_string(),
                "module": t.module,
                "start_unix_nanos": t.start().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
                "duration_ns": t.duration().as_nanos(),
                "spans": t.span_count(),
                "error": t.error(),
            })
        })
        .collect();
    Json(json!({ "traces": traces }))
}

async fn get_trace(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let trace_id = TraceId::from_hex(&id)
        .ok()
        .filter(|_| id.len() == 32)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid trace id `{id}`: expected 32 hex digits"),
            )
        })?;
    let trace = state
        .recent
        .get(trace_id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no recent trace `{id}`")))?;
    Ok(Json(
        json!({ "trace_id": id, "module": trace.module, "spans": trace.spans_json(), "functions": trace.functions() }),
    ))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let c = &state.counters;
    let mut counters: Vec<(&str, &str, &AtomicU64)> = vec![
        ("iota_runs_total", "Runs completed.", &c.runs),
        (
            "iota_run_failures_total",
            "Runs that trapped, timed out or exited non-zero.",
            &c.run_failures,
        ),
        ("iota_uploads_total", "Modules stored.", &c.uploads),
        ("iota_spans_total", "Spans produced.", &c.spans),
    ];
    if let Some(exporter) = &state.exporter {
        let s = exporter.stats();
        counters.extend([
            (
                "iota_otlp_exported_spans_total",
                "Spans the collector accepted.",
                &s.exported_spans,
            ),
            (
                "iota_otlp_failed_spans_total",
                "Spans in failed exports.",
                &s.failed_spans,
            ),
            (
                "iota_otlp_dropped_traces_total",
                "Traces dropped on a full export queue.",
                &s.dropped_traces,
            ),
            (
                "iota_otlp_metric_exports_total",
                "Metric exports the collector accepted.",
                &s.metric_exports,
            ),
            (
                "iota_otlp_failed_metric_exports_total",
                "Metric exports that failed.",
                &s.failed_metric_exports,
            ),
        ]);
    }
    let text: String = counters
        .iter()
        .map(|(name, help, value)| {
            let value = value.load(Ordering::Relaxed);
            format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n")
        })
        .collect();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
