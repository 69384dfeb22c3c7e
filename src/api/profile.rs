//! Profiles of runs: `GET /traces/{id}?format=...` and `GET /modules/{name}/profile?format=...`
//! (behind the read token, if one is set).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::query::Query;
use super::read::{authorize_read, get_trace as trace_json, recent_trace};
use crate::registry::validate_name;
use crate::trace::profile::{FORMATS, Profile};

/// A profile format, as `format=` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Folded,
    Speedscope,
    Pprof,
    Svg,
    Stacks,
}

impl Format {
    fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "folded" => Format::Folded,
            "speedscope" => Format::Speedscope,
            "pprof" => Format::Pprof,
            "svg" => Format::Svg,
            "stacks" => Format::Stacks,
            _ => return None,
        })
    }

    /// The file name extension of a download.
    fn extension(self) -> &'static str {
        match self {
            Format::Folded => "folded.txt",
            Format::Speedscope => "speedscope.json",
            Format::Pprof => "pb.gz",
            Format::Svg => "svg",
            Format::Stacks => "stacks.json",
        }
    }
}

/// The `format=` of a request: `None` for the default, or `400` naming the formats.
fn format(query: &Query, default_name: &str) -> Result<Option<Format>, ApiError> {
    let mut allowed = vec![default_name];
    allowed.extend(FORMATS.iter().filter(|f| **f != default_name));
    let name = query.flag("format", &allowed)?;
    Ok(name.as_deref().and_then(Format::parse))
}

/// `GET /traces/{id}`: the trace as JSON, or its profile in `format`.
pub(super) async fn get_trace(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref());
    let Some(format) = format(&query, "json")? else {
        return trace_json(State(state), Path(id), headers)
            .await
            .map(IntoResponse::into_response);
    };
    authorize_read(&state, &headers)?;
    let trace = recent_trace(&state, &id)?;
    let file = format!("{}-{id}", trace.module);
    render(format, &file, move || Profile::of_trace(&trace)).await
}

/// `GET /modules/{name}/profile`: the profiles of the module's recent runs merged, in `format`
/// (default `stacks`, the JSON the web page draws).
pub(super) async fn module_profile(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_read(&state, &headers)?;
    validate_name(&name).map_err(ApiError::bad_request)?;
    let query = Query::parse(query.as_deref());
    let format = format(&query, "stacks")?.unwrap_or(Format::Stacks);
    let traces: Vec<_> = state
        .sinks
        .recent
        .list()
        .into_iter()
        .filter(|t| t.module == name)
        .collect();
    if traces.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no recent runs of module `{name}`"),
        ));
    }
    let file = format!("{name}-recent");
    render(format, &file, move || {
        let profiles: Vec<Profile> = traces.iter().map(|t| Profile::of_trace(t)).collect();
        Profile::merge(&name, &profiles)
    })
    .await
}

/// Builds the profile off the async threads and answers it in `format`, as a file named
/// `file` plus the format's extension.
async fn render(
    format: Format,
    file: &str,
    profile: impl FnOnce() -> Profile + Send + 'static,
) -> Result<Response, ApiError> {
    let (content_type, body) = tokio::task::spawn_blocking(move || {
        let profile = profile();
        Ok::<_, std::io::Error>(match format {
            Format::Folded => ("text/plain; charset=utf-8", profile.folded().into_bytes()),
            Format::Speedscope => (
                "application/json",
                profile.speedscope().to_string().into_bytes(),
            ),
            Format::Pprof => ("application/octet-stream", profile.pprof()),
            Format::Svg => ("image/svg+xml", profile.svg()?),
            Format::Stacks => (
                "application/json",
                serde_json::to_vec(&profile).map_err(std::io::Error::other)?,
            ),
        })
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "inline; filename=\"{file}.{}\"",
        format.extension()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if format == Format::Svg {
        // The flame graph's own script runs, but in an opaque origin: never with the page's.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox allow-scripts"),
        );
    }
    Ok((headers, body).into_response())
}
