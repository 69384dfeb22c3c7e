//! The read endpoints: modules, traces and metrics (behind the read token, if one is set).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use opentelemetry::trace::TraceId;
use serde_json::json;

use super::AppState;
use super::auth::authorize;
use super::error::ApiError;
use crate::trace::TraceRecord;

pub(super) fn authorize_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    authorize(headers, state.tokens.read.as_deref())
}

pub(super) async fn list_modules(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&state, &headers)?;
    Ok(Json(json!({ "modules": state.registry.list() })))
}

pub(super) async fn get_module(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let module = state.module(&name)?;
    let mut info = serde_json::to_value(&module.info).map_err(ApiError::internal)?;
    info["learning"] = json!(module.learning_state());
    Ok(Json(info))
}

pub(super) async fn get_function_map(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&state, &headers)?;
    state.module(&name)?;
    let map = state
        .registry
        .function_map(&name)
        .await
        .map_err(|e| ApiError::internal(format!("{e:#}")))?
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("module `{name}` was stored without a function map; upload it again"),
            )
        })?;
    Ok(Json(json!({ "name": name, "functions": map })))
}

pub(super) async fn list_traces(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let traces: Vec<_> = state
        .sinks
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
                "outcome": t.ending().error_type().unwrap_or("ok"),
            })
        })
        .collect();
    Ok(Json(json!({ "traces": traces })))
}

pub(super) async fn get_trace(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let trace = recent_trace(&state, &id)?;
    let metrics: Vec<&str> = trace
        .metric_lines()
        .iter()
        .map(|m| m.line.as_str())
        .collect();
    Ok(Json(json!({
        "trace_id": id,
        "module": trace.module,
        "spans": trace.spans_json(),
        "functions": trace.functions(),
        "metrics": metrics,
    })))
}

/// The recent trace `id`.
///
/// # Errors
///
/// `400` for an id that is not 32 hex digits, `404` for one no longer (or never) kept.
pub(super) fn recent_trace(state: &AppState, id: &str) -> Result<Arc<TraceRecord>, ApiError> {
    let trace_id = TraceId::from_hex(id)
        .ok()
        .filter(|_| id.len() == 32)
        .ok_or_else(|| {
            ApiError::bad_request(format!("invalid trace id `{id}`: expected 32 hex digits"))
        })?;
    state.sinks.recent.get(trace_id).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("no recent trace `{id}`"),
        )
    })
}

/// One line of Prometheus text: a counter or a gauge.
fn metric(name: &str, kind: &str, help: &str, value: u64) -> String {
    format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n")
}

pub(super) async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize_read(&state, &headers)?;
    let runs = &state.sinks.counters;
    let uploads = &state.uploads;
    let mut counters: Vec<(&str, &str, &AtomicU64)> = vec![
        ("iota_runs_total", "Runs completed.", &runs.finished),
        (
            "iota_run_failures_total",
            "Runs that trapped, timed out, exited non-zero, failed in the host or were cancelled.",
            &runs.failed,
        ),
        (
            "iota_runs_cancelled_total",
            "Runs cancelled: the client disconnected or sent too large a body.",
            &runs.cancelled,
        ),
        (
            "iota_runs_rejected_total",
            "Runs refused with 503: no run slot freed up in time.",
            &runs.rejected,
        ),
        (
            "iota_runs_inline_total",
            "Runs that started and ended on the thread that took their request.",
            &runs.inline,
        ),
        (
            "iota_runs_moved_total",
            "Runs that started on the thread that took their request and moved to the run threads.",
            &runs.moved,
        ),
        ("iota_uploads_total", "Modules stored.", &uploads.stored),
        (
            "iota_uploads_rejected_total",
            "Uploads refused with 503: the compile queue was full.",
            &uploads.rejected,
        ),
        ("iota_spans_total", "Spans produced.", &runs.spans),
    ];
    if let Some(exporter) = &state.sinks.exporter {
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
    let mut text: String = counters
        .iter()
        .map(|(name, help, value)| metric(name, "counter", help, value.load(Ordering::Relaxed)))
        .collect();
    let (compiling, waiting) = state.registry.compiler().load();
    let data_bytes = tokio::task::block_in_place(|| state.registry.disk_bytes());
    for (name, help, value) in [
        (
            "iota_runs_active",
            "Runs executing now.",
            runs.active.load(Ordering::Relaxed),
        ),
        (
            "iota_uploads_compiling",
            "Uploads being instrumented and compiled now.",
            compiling as u64,
        ),
        (
            "iota_uploads_waiting",
            "Uploads waiting for a compile slot.",
            waiting as u64,
        ),
        (
            "iota_data_dir_bytes",
            "Bytes stored in the data directory.",
            data_bytes,
        ),
    ] {
        text.push_str(&metric(name, "gauge", help, value));
    }
    for (name, kind, help, value) in state.registry.metrics() {
        text.push_str(&metric(name, kind, help, value));
    }
    text.push_str(&format!(
        "# HELP iota_instance_info This server's service.instance.id.\n# TYPE iota_instance_info gauge\niota_instance_info{{service_instance_id=\"{}\"}} 1\n",
        state.registry.instance()
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
