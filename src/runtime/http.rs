//! HTTP handlers: a request handed to a component's `wasi:http/incoming-handler`, its response
//! collected, and the outgoing requests it may make.
//!
//! The response is collected whole (its body within the run's stdout cap and memory budget)
//! and answered once `handle` has returned, so a handler that traps after sending its headers
//! is still answered `500` with its trace, as a command would be.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks, WasiHttpView};

use super::component::ComponentState;
use super::{guest_ending, instantiation_ending};
use crate::budget::MemoryBudget;
use crate::trace::{Cancel, Ending};

/// What a handler answered.
#[derive(Debug)]
pub enum HandlerResponse {
    /// A response: status, headers and the body as far as it was kept.
    Sent {
        /// Its status.
        status: StatusCode,
        /// Its headers.
        headers: HeaderMap,
        /// Its body (up to the cap).
        body: Bytes,
        /// Some of the body was dropped (its cap or the memory limit).
        truncated: bool,
        /// The body did not end properly: why.
        incomplete: Option<String>,
    },
    /// The handler answered with an error code instead of a response.
    Failed(String),
    /// The handler returned without answering.
    Missing,
}

/// A response being collected while the handler runs.
pub struct PendingResponse(tokio::task::JoinHandle<HandlerResponse>);

impl PendingResponse {
    /// The response, once its body has ended (the store is gone by then: the body cannot wait
    /// for more).
    pub async fn finish(self) -> HandlerResponse {
        self.0.await.unwrap_or(HandlerResponse::Missing)
    }
}

/// Hands `request` to the handler in `store` and collects its response (body up to `cap`
/// bytes, charged to `budget`). The ending is the guest's.
pub(super) async fn handle(
    store: &mut Store<ComponentState>,
    pre: &ProxyPre<ComponentState>,
    request: axum::http::Request<LimitedBody>,
    cap: usize,
    budget: Arc<MemoryBudget>,
) -> (Ending, Option<PendingResponse>) {
    let (sender, receiver) = oneshot::channel();
    let pending = PendingResponse(tokio::spawn(collect(receiver, cap, budget)));
    let resources = {
        let mut http = store.data_mut().http();
        http.new_incoming_request(Scheme::Http, request)
            .and_then(|request| Ok((request, http.new_response_outparam(sender)?)))
    };
    let (request, out) = match resources {
        Ok(resources) => resources,
        Err(error) => return (Ending::HostError(format!("{error:#}")), Some(pending)),
    };
    let proxy = match pre.instantiate_async(&mut *store).await {
        Ok(proxy) => proxy,
        Err(error) => return (instantiation_ending(error), Some(pending)),
    };
    let ending = match proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, request, out)
        .await
    {
        Ok(()) => Ending::Exit(0),
        Err(error) => guest_ending(error),
    };
    (ending, Some(pending))
}

/// Waits for the handler's response and reads its body as the handler writes it.
async fn collect(
    receiver: oneshot::Receiver<Result<axum::http::Response<HyperOutgoingBody>, ErrorCode>>,
    cap: usize,
    budget: Arc<MemoryBudget>,
) -> HandlerResponse {
    let response = match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return HandlerResponse::Failed(format!("{code:?}")),
        Err(_) => return HandlerResponse::Missing,
    };
    let (parts, mut body) = response.into_parts();
    let mut kept = BytesMut::new();
    let (mut truncated, mut incomplete) = (false, None);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    let room = cap.saturating_sub(kept.len()).min(data.len());
                    let keep = budget.charge_up_to(room);
                    kept.extend_from_slice(&data[..keep]);
                    truncated |= keep < data.len();
                }
            }
            Err(error) => {
                incomplete = Some(error.to_string());
                break;
            }
        }
    }
    HandlerResponse::Sent {
        status: parts.status,
        headers: parts.headers,
        body: kept.freeze(),
        truncated,
        incomplete,
    }
}

/// A request body under a size limit, as the handler reads it. Going past the limit, or the
/// client going away, cancels the run through `stop`.
pub struct LimitedBody {
    inner: Body,
    seen: usize,
    limit: usize,
    stop: Option<oneshot::Sender<Cancel>>,
}

impl LimitedBody {
    /// `inner`, at most `limit` bytes of it; `stop` hears why the body failed.
    pub fn new(inner: Body, limit: usize, stop: oneshot::Sender<Cancel>) -> Self {
        LimitedBody {
            inner,
            seen: 0,
            limit,
            stop: Some(stop),
        }
    }

    fn fail(
        &mut self,
        cancel: Cancel,
        error: Error,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(cancel);
        }
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.seen = self.seen.saturating_add(data.len());
                    if self.seen > self.limit {
                        let limit = self.limit;
                        return self.fail(
                            Cancel::BodyTooLarge(limit),
                            Error::HttpRequestBodySize(Some(limit as u64)),
                        );
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(_)) => self.fail(Cancel::ClientDisconnected, Error::ConnectionTerminated),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The hosts a module may send requests to: none unless its upload named them
/// (`outgoing_http=HOST[:PORT],...`, or `*` for any).
pub struct OutgoingPolicy {
    allowed: Vec<String>,
}

impl OutgoingPolicy {
    /// Requests to `allowed` authorities (`host` or `host:port`; `*` allows every host) may
    /// leave; every other is denied.
    pub fn new(allowed: Vec<String>) -> Self {
        OutgoingPolicy { allowed }
    }

    fn allows(&self, authority: &str) -> bool {
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(host, _)| host);
        self.allowed
            .iter()
            .any(|allowed| allowed == "*" || allowed == authority || allowed == host)
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    axum::http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutgoingPolicy {
    fn send_request(
        &mut self,
        request: axum::http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        if !self.allows(&authority) {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::OutgoingPolicy;

    #[test]
    fn outgoing_requests_go_only_where_allowed() {
        let none = OutgoingPolicy::new(Vec::new());
        assert!(!none.allows("example.com"));
        let some = OutgoingPolicy::new(vec!["example.com".into(), "127.0.0.1:8080".into()]);
        assert!(some.allows("example.com"));
        assert!(some.allows("example.com:443"));
        assert!(some.allows("127.0.0.1:8080"));
        assert!(!some.allows("127.0.0.1:8081"));
        assert!(!some.allows("example.org"));
        assert!(OutgoingPolicy::new(vec!["*".into()]).allows("anything:1"));
    }
}
