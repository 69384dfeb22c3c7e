//! Query parameters and request headers: names, flags, numbers, `traceparent`.

use std::str::FromStr;

use axum::http::HeaderMap;
use opentelemetry::trace::{SpanId, TraceId, TraceState};

use super::error::ApiError;
use crate::registry::validate_name;
use crate::trace::sampling::RemoteParent;

/// Query parameters, repeated keys kept in order (`arg=a&arg=b`).
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(query: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of the last `key=`, if any.
    pub fn last(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The module name in `name=`, checked.
    ///
    /// # Errors
    ///
    /// `400` when missing or invalid.
    pub fn module_name(&self) -> Result<String, ApiError> {
        let name = self
            .0
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| ApiError::bad_request("missing query parameter `name`"))?;
        validate_name(&name).map_err(ApiError::bad_request)?;
        Ok(name)
    }

    /// The last `key=` if it is one of `values`.
    ///
    /// # Errors
    ///
    /// `400` naming the values allowed.
    pub fn flag(&self, key: &str, values: &[&str]) -> Result<Option<String>, ApiError> {
        match self.last(key) {
            None => Ok(None),
            Some(v) if values.contains(&v) => Ok(Some(v.to_string())),
            Some(v) => Err(ApiError::bad_request(format!(
                "invalid `{key}={v}`: expected one of {}",
                values.join(", ")
            ))),
        }
    }

    /// The last `key=` as a number no larger than `max`, if present.
    ///
    /// # Errors
    ///
    /// `400` when it is not a whole number or too large.
    pub fn number(&self, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.last(key) else {
            return Ok(None);
        };
        match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(Some(n)),
            Ok(_) => Err(ApiError::bad_request(format!(
                "invalid `{key}={v}`: at most {max} allowed"
            ))),
            Err(_) => Err(ApiError::bad_request(format!(
                "invalid `{key}={v}`: expected a whole number"
            ))),
        }
    }
}

/// The caller's W3C trace context: `traceparent` (if well formed) and its `tracestate`.
pub fn remote_parent(headers: &HeaderMap) -> Option<RemoteParent> {
    let (trace_id, span_id, sampled) = parse_traceparent(headers)?;
    let trace_state = headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| TraceState::from_str(v).ok())
        .unwrap_or_default();
    Some(RemoteParent {
        trace_id,
        span_id,
        sampled,
        trace_state,
    })
}

/// A W3C `traceparent`: trace id, parent span id and the sampled flag, if well formed.
fn parse_traceparent(headers: &HeaderMap) -> Option<(TraceId, SpanId, bool)> {
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
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, span, flags & 1 == 1))
}
