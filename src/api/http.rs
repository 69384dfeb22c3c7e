//! Requests to HTTP handlers: `ANY /{name}` and `ANY /{name}/{*path}` hand the request to the
//! component stored as `name` (one exporting `wasi:http/incoming-handler`), with the path
//! after the name (`/` when there is none) and the query; the handler's response comes back,
//! with the trace headers of a run. `POST /run?name=N` hands it `POST /` with the body.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::authorize;
use super::error::ApiError;
use super::run::{Run, start_run};
use crate::runtime::entry::{Call, EntryPoints};
use crate::runtime::http::HandlerResponse;
use crate::trace::RequestLine;

/// The route that reaches a handler, as traces name it.
const ROUTE: &str = "/{name}/{*path}";

/// `ANY /{name}` and `ANY /{name}/{*path}`.
pub(super) async fn handle(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let request_start = SystemTime::now();
    let (parts, body) = request.into_parts();
    authorize(&parts.headers, state.tokens.run.as_deref())?;
    let path = parts.uri.path().to_string();
    let rest = path.strip_prefix('/').unwrap_or(&path);
    let (name, inner) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let module = state.module(name)?;
    if module.info.entry != EntryPoints::HttpHandler {
        return Err(ApiError::bad_request(format!(
            "module `{name}` is not an HTTP handler (a component exporting \
             `wasi:http/incoming-handler`); run it with POST /run?name={name}"
        )));
    }
    let target = match parts.uri.query() {
        Some(query) => format!("{inner}?{query}"),
        None => inner.to_string(),
    };
    let run = Run {
        module,
        call: Call::Handle,
        args: Vec::new(),
        request: Some(handler_head(&parts, &target)),
        request_line: RequestLine {
            method: parts.method.to_string(),
            route: ROUTE.into(),
            path,
        },
        request_start,
    };
    start_run(&state, run, &parts.headers, body).await
}

/// The head of the request a handler sees: `parts` with `target` (path and query) as its URI.
pub(super) fn handler_head(
    parts: &axum::http::request::Parts,
    target: &str,
) -> axum::http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = target
        .parse()
        .unwrap_or_else(|_| "/".parse().expect("a path"));
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// The answer to a handler run that returned: its response, with the trace headers.
pub(super) fn handler_response(
    response: HandlerResponse,
    mut trace_headers: HeaderMap,
    trace_id: &str,
) -> Response {
    let failure = match response {
        HandlerResponse::Sent {
            status,
            headers,
            body,
            truncated,
            incomplete: None,
        } => {
            let mut answer = Response::new(axum::body::Body::from(body));
            *answer.status_mut() = status;
            let out = answer.headers_mut();
            for (name, value) in &headers {
                // The body was collected: its length is now known, its framing is ours.
                if name != header::TRANSFER_ENCODING && name != header::CONTENT_LENGTH {
                    out.append(name, value.clone());
                }
            }
            if truncated {
                trace_headers.insert("x-iota-body-truncated", HeaderValue::from_static("true"));
            }
            out.extend(trace_headers);
            return answer;
        }
        HandlerResponse::Sent {
            incomplete: Some(why),
            ..
        } => format!("the handler's response body did not end: {why}"),
        HandlerResponse::Failed(code) => format!("the handler answered with an error: {code}"),
        HandlerResponse::Missing => "the handler returned without a response".to_string(),
    };
    let error = ApiError::new(StatusCode::BAD_GATEWAY, failure).with_trace_id(trace_id);
    (trace_headers, error).into_response()
}
