//! Optional bearer tokens for uploads, runs and reads.

use axum::http::{HeaderMap, StatusCode, header};

use super::error::ApiError;

/// The tokens the server requires; `None` leaves that kind of request open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// `POST /upload`, `DELETE /modules/{name}`.
    pub upload: Option<String>,
    /// `POST /run`.
    pub run: Option<String>,
    /// `GET /modules*`, `/traces*`, `/metrics`.
    pub read: Option<String>,
}

/// Checks `Authorization: Bearer <token>` against `expected` (if a token is required), in
/// constant time.
///
/// # Errors
///
/// `401` with `WWW-Authenticate: Bearer` when the token is missing or wrong.
pub fn authorize(headers: &HeaderMap, expected: Option<&str>) -> Result<(), ApiError> {
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
