//! `POST /upload` and `DELETE /modules/{name}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::AppState;
use super::auth::authorize;
use super::error::ApiError;
use super::query::Query;
use crate::registry::{UploadError, UploadOptions, validate_name};
use crate::store::StoreError;
use crate::trace::SpanOverrides;

/// Seconds a client refused for a full upload queue is told to wait.
const UPLOAD_RETRY_AFTER_SECS: u64 = 10;

pub(super) async fn upload(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(request.headers(), state.tokens.upload.as_deref())?;
    let admission = match state.registry.compiler().admit() {
        Ok(admission) => admission,
        Err(busy) => {
            state.uploads.rejected.fetch_add(1, Ordering::Relaxed);
            // Read and drop what the client sends, so it gets the answer rather than a reset.
            discard_body(request.into_body(), state.max_upload).await;
            return Err(ApiError::unavailable(
                busy.to_string(),
                UPLOAD_RETRY_AFTER_SECS,
            ));
        }
    };
    // The body is read (within its limit) before the request is refused for anything else,
    // so a client still sending a module gets the JSON error rather than a reset connection.
    let upload = upload_body(request, state.max_upload).await?;
    let query = Query::parse(query.as_deref());
    let name = query.module_name()?;
    let options = upload_options(&query, &state)?;
    let (info, timings) = state
        .registry
        .upload(
            &admission,
            &name,
            &upload.wasm,
            upload.symbol_map.as_deref(),
            options,
        )
        .await
        .map_err(upload_error)?;
    state.uploads.stored.fetch_add(1, Ordering::Relaxed);
    let mut body = serde_json::to_value(&info).map_err(ApiError::internal)?;
    body["timings_ms"] = serde_json::to_value(timings).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn upload_options(query: &Query, state: &AppState) -> Result<UploadOptions, ApiError> {
    Ok(UploadOptions {
        instrument: query
            .flag("instrument", &["true", "false"])?
            .is_none_or(|v| v == "true"),
        trap_unknown_imports: query
            .flag("unknown_imports", &["error", "trap"])?
            .is_some_and(|v| v == "trap"),
        host_spans: query
            .flag("host_spans", &["true", "false"])?
            .is_none_or(|v| v == "true"),
        time_every_call: query
            .flag("timing", &["counted", "every_call"])?
            .is_some_and(|v| v == "every_call"),
        learn: query
            .flag("learn", &["true", "false"])?
            .is_none_or(|v| v == "true"),
        spans: SpanOverrides {
            max_spans: query
                .number("max_spans", state.spans.max_spans as u64)?
                .map(|n| n as usize),
            min_span_us: query.number("min_span_us", u64::MAX / 1000)?,
        },
        outgoing_http: outgoing_hosts(query.last("outgoing_http"))?,
    })
}

/// Seconds a client refused because the module store failed is told to wait.
const STORE_RETRY_AFTER_SECS: u64 = 5;

/// The answer to a store failure: `503` while the store fails or refuses, `500` otherwise.
fn store_error(error: StoreError, what: &str) -> ApiError {
    match error {
        StoreError::Unavailable(_) | StoreError::Refused(_) => ApiError::unavailable(
            format!("{error}; {what}, retry later"),
            STORE_RETRY_AFTER_SECS,
        ),
        StoreError::Other(err) => ApiError::internal(format!("{err:#}")),
    }
}

/// `outgoing_http=HOST[:PORT],...` (or `*`): where a component may send HTTP requests.
fn outgoing_hosts(value: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(|host| {
            let ok = !host.is_empty()
                && host.len() <= 255
                && (host == "*"
                    || host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)));
            if ok {
                Ok(host.to_ascii_lowercase())
            } else {
                Err(ApiError::bad_request(format!(
                    "invalid `outgoing_http` host {host:?}: expected HOST or HOST:PORT (or `*`), \
                     comma-separated"
                )))
            }
        })
        .collect()
}

fn upload_error(error: UploadError) -> ApiError {
    match error {
        UploadError::Internal(err) => ApiError::internal(format!("{err:#}")),
        UploadError::Store(err) => store_error(err, "the module was not changed"),
        UploadError::Busy(_) => ApiError::unavailable(error.to_string(), UPLOAD_RETRY_AFTER_SECS),
        UploadError::TooCostly(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
        UploadError::Instrument(_)
        | UploadError::Compile(_)
        | UploadError::Link(_)
        | UploadError::NotRunnable(_) => ApiError::bad_request(error.to_string()),
    }
}

/// Reads up to `limit` bytes of `body` and drops them as they come.
async fn discard_body(mut body: Body, limit: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len()));
        if seen > limit {
            return;
        }
    }
}

/// What an upload sends: the module, and a symbol map for it.
struct Upload {
    wasm: Bytes,
    symbol_map: Option<String>,
}

/// The module bytes (multipart field `wasm`, or the raw body) and the optional multipart field
/// `symbol_map` (lines `INDEX:NAME`).
async fn upload_body(request: Request, max_upload: usize) -> Result<Upload, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("upload larger than {max_upload} bytes"),
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
            return Err(ApiError::bad_request(
                "empty upload: send the module as multipart field `wasm` or as the body",
            ));
        }
        return Ok(Upload {
            wasm: body,
            symbol_map: None,
        });
    }
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let malformed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        }
    };
    let (mut wasm, mut symbol_map) = (None, None);
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        match field.name() {
            Some("wasm") if wasm.is_none() => wasm = Some(field.bytes().await.map_err(malformed)?),
            Some("symbol_map") if symbol_map.is_none() => {
                let bytes = field.bytes().await.map_err(malformed)?;
                symbol_map = Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::bad_request("multipart field `symbol_map` is not UTF-8 text")
                })?);
            }
            _ => {}
        }
    }
    let wasm = wasm.ok_or_else(|| ApiError::bad_request("multipart body has no field `wasm`"))?;
    Ok(Upload { wasm, symbol_map })
}

pub(super) async fn delete_module(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&headers, state.tokens.upload.as_deref())?;
    validate_name(&name).map_err(ApiError::bad_request)?;
    match state.registry.delete(&name).await {
        Ok(true) => {
            state.sinks.stats.forget(&name);
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(ApiError::no_module(&name)),
        Err(err) => Err(store_error(err, "the module was not deleted")),
    }
}
