//! HTTP routes: upload, run, registry, traces, health and metrics.

mod auth;
mod error;
mod http;
mod profile;
mod query;
mod read;
mod run;
mod stats;
mod upload;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};

pub use auth::Tokens;
pub use error::ApiError;

use crate::learning::Learner;
use crate::registry::{LoadedModule, Registry, validate_name};
use crate::runs::{RunSlots, TraceSinks};
use crate::runtime::Runtime;
use crate::trace::SpanVolume;
use crate::trace::sampling::Sampler;

/// Shared state of the server.
pub struct AppState {
    /// Stored modules.
    pub registry: Arc<Registry>,
    /// The engine and linker.
    pub runtime: Arc<Runtime>,
    /// Slots for runs executing at once.
    pub runs: RunSlots,
    /// Where runs execute: threads of their own, apart from the ones serving HTTP.
    pub executor: tokio::runtime::Handle,
    /// The inline budget: runs of a module whose recent runs took less start on the HTTP side
    /// (see [`crate::runs`]).
    pub inline_run: std::time::Duration,
    /// Where finished runs' traces go.
    pub sinks: Arc<TraceSinks>,
    /// Span limits of runs whose module sets none.
    pub spans: SpanVolume,
    /// Largest upload.
    pub max_upload: usize,
    /// Largest run body.
    pub max_run_body: usize,
    /// Upload counters.
    pub uploads: UploadCounters,
    /// Bearer tokens required, by kind of request.
    pub tokens: Tokens,
    /// Which runs are sampled.
    pub sampler: Sampler,
    /// Where runs send what they taught about their module's short calls.
    pub learner: Learner,
}

impl AppState {
    /// The module `name` serves now: `400` for a malformed name, `404` for an unknown one.
    fn module(&self, name: &str) -> Result<Arc<LoadedModule>, error::ApiError> {
        validate_name(name).map_err(error::ApiError::bad_request)?;
        self.registry
            .get(name)
            .ok_or_else(|| error::ApiError::no_module(name))
    }
}

/// Counters of uploads, for `/metrics`.
#[derive(Debug, Default)]
pub struct UploadCounters {
    /// Modules stored.
    pub stored: AtomicU64,
    /// Uploads refused because the compile queue was full.
    pub rejected: AtomicU64,
}

/// The routes over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let upload_limit = state.max_upload;
    Router::new()
        .route(
            "/upload",
            post(upload::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        // The run body is streamed into the guest and limited there.
        .route("/run", post(run::run))
        .route("/modules", get(read::list_modules))
        .route(
            "/modules/{name}",
            get(read::get_module).delete(upload::delete_module),
        )
        .route("/modules/{name}/functions", get(read::get_function_map))
        .route("/traces", get(read::list_traces))
        .route("/modules/{name}/profile", get(profile::module_profile))
        .route("/traces/{id}", get(profile::get_trace))
        .route("/stats", get(stats::module_stats))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(read::metrics))
        .merge(crate::web::routes())
        // HTTP handlers, by module name; the routes above come first.
        .route("/{name}", any(http::handle))
        .route("/{name}/{*path}", any(http::handle))
        .with_state(state)
}
