//! `GET /stats`: runs, failures and duration percentiles by module (behind the read token).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::read::authorize_read;

pub(super) async fn module_stats(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&state, &headers)?;
    Ok(Json(json!({
        "window": crate::stats::WINDOW,
        "modules": state.sinks.stats.snapshot(),
    })))
}
