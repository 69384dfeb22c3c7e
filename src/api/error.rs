//! One error type for every route: a status and a JSON `{"error": ...}` body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    extra: serde_json::Value,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            extra: serde_json::Value::Null,
            retry_after_secs: None,
        }
    }

    /// `400 Bad Request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// `404 Not Found` for module `name`.
    pub fn no_module(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no module named `{name}`"))
    }

    /// `503 Service Unavailable` with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// A server-side failure: logged in full, answered as a generic `500`.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {err}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// Adds the fields of `extra` (a JSON object) to the body.
    pub fn with(mut self, extra: serde_json::Value) -> Self {
        match (&mut self.extra, extra) {
            (serde_json::Value::Object(fields), serde_json::Value::Object(more)) => {
                fields.extend(more)
            }
            (fields, more) => *fields = more,
        }
        self
    }

    /// Adds the run's `trace_id` to the body.
    pub fn with_trace_id(self, trace_id: &str) -> Self {
        self.with(json!({ "trace_id": trace_id }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), self.extra) {
            body.extend(extra);
        }
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
