//! `POST /run`: a run of a stored module, its stdout as the answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::auth::authorize;
use super::error::ApiError;
use super::query::{Query, remote_parent};
use crate::registry::LoadedModule;
use crate::runs::{self, Finished, RunJob, TraceContext};
use crate::runtime::entry::Call;
use crate::trace::RequestLine;
use crate::trace::{Cancel, Ending, new_span_id, new_trace_id};

/// Seconds a client refused for lack of a run slot is told to wait.
const RUN_RETRY_AFTER_SECS: u64 = 1;

/// `POST /run?name=N`.
pub(super) async fn run(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let request_start = SystemTime::now();
    let (parts, body) = request.into_parts();
    authorize(&parts.headers, state.tokens.run.as_deref())?;
    let query = Query::parse(query.as_deref());
    let module = state.module(&query.module_name()?)?;
    let call = module
        .info
        .entry
        .call(query.last("fn"))
        .map_err(ApiError::bad_request)?;
    // An HTTP handler run through `/run` gets `POST /` with the body and the headers.
    let request = (call == Call::Handle).then(|| super::http::handler_head(&parts, "/"));
    let run = Run {
        module,
        call,
        args: query.all("arg"),
        request,
        request_line: RequestLine::default(),
        request_start,
    };
    start_run(&state, run, &parts.headers, body).await
}

/// A run the routes ask for.
pub(super) struct Run {
    /// The module version.
    pub module: Arc<LoadedModule>,
    /// What to call.
    pub call: Call,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// For an HTTP handler: the request's head.
    pub request: Option<axum::http::request::Parts>,
    /// The request line the trace tells.
    pub request_line: RequestLine,
    /// When the request arrived.
    pub request_start: SystemTime,
}

/// Runs `run` with `body` (stdin, or the handler's request body) once a slot is free, and
/// answers.
pub(super) async fn start_run(
    state: &Arc<AppState>,
    run: Run,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let Run {
        module,
        call,
        args,
        request,
        request_line,
        request_start,
    } = run;
    if declared_length(headers).is_some_and(|len| len > state.max_run_body as u64) {
        return Err(body_too_large(state.max_run_body));
    }
    let trace = trace_context(state, headers, request_start);
    let permit = state.runs.acquire().await.map_err(|overloaded| {
        state
            .sinks
            .counters
            .rejected
            .fetch_add(1, Ordering::Relaxed);
        ApiError::unavailable(
            format!(
                "server busy: no run slot freed up within {} ms; retry later",
                overloaded.waited.as_millis()
            ),
            RUN_RETRY_AFTER_SECS,
        )
    })?;
    let volume = module.info.spans.over(state.spans);
    let job = RunJob {
        module,
        call,
        args,
        body,
        max_body: state.max_run_body,
        trace: trace.clone(),
        volume,
        learner: Some(state.learner.clone()),
        request,
        request_line,
        inline: state.inline_run,
    };
    let finished = runs::run(
        &state.executor,
        state.runtime.clone(),
        state.sinks.clone(),
        job,
        permit,
    )
    .await
    .ok_or_else(|| ApiError::internal("the run was lost: the server is stopping"))?;
    Ok(respond(finished, &trace, state.max_run_body))
}

/// The trace the run joins (the caller's, from `traceparent`, or a new one) and whether it is
/// sampled.
fn trace_context(state: &AppState, headers: &HeaderMap, request_start: SystemTime) -> TraceContext {
    let parent = remote_parent(headers);
    let trace_id = parent.as_ref().map_or_else(new_trace_id, |p| p.trace_id);
    let sampling = state.sampler.decide(trace_id, parent.as_ref());
    TraceContext {
        trace_id,
        remote_parent: parent.map(|p| p.span_id),
        request_span: new_span_id(),
        request_start,
        sampled: sampling.sampled,
        trace_state: sampling.trace_state,
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {limit} bytes"),
    )
}

/// The answer to a finished run: stdout for an exit, a JSON error otherwise; always the trace.
fn respond(finished: Finished, trace: &TraceContext, max_body: usize) -> Response {
    let trace_id = trace.trace_id.to_string();
    let mut headers = HeaderMap::new();
    headers.insert("x-iota-trace-id", header_value(&trace_id));
    let flags = if trace.sampled { "01" } else { "00" };
    headers.insert(
        "traceparent",
        header_value(&format!("00-{trace_id}-{}-{flags}", trace.request_span)),
    );
    let trace_state = trace.trace_state.header();
    if !trace_state.is_empty() {
        headers.insert("tracestate", header_value(&trace_state));
    }
    let error = match finished.ending {
        Ending::Exit(0) if finished.response.is_some() => {
            let response = finished.response.expect("checked");
            return super::http::handler_response(response, headers, &trace_id);
        }
        Ending::Exit(code) => {
            headers.insert("x-iota-exit-code", HeaderValue::from(code));
            if finished.stdout_truncated {
                headers.insert("x-iota-stdout-truncated", HeaderValue::from_static("true"));
            }
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let status = StatusCode::from_u16(finished.ending.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, headers, finished.stdout).into_response();
        }
        Ending::Trap { message, backtrace } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("guest trapped: {message}"),
        )
        .with(json!({
            "backtrace": backtrace,
            "stdout": String::from_utf8_lossy(&finished.stdout),
        })),
        Ending::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "guest timed out"),
        Ending::Cancelled(Cancel::BodyTooLarge(_)) => body_too_large(max_body),
        // Nobody is left to read this.
        Ending::Cancelled(Cancel::ClientDisconnected) => {
            ApiError::bad_request("client disconnected")
        }
        Ending::HostError(message) => {
            tracing::error!(%trace_id, "host error: {message}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("host error: {message}"),
            )
        }
    };
    let error = error.with_trace_id(&trace_id);
    (headers, error).into_response()
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
