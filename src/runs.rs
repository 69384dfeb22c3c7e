//! Runs as tasks that own what they hold: a run slot, a store (and so an instance from the
//! pool), its stdin pump and its trace. The HTTP handler only waits for the answer; if it goes
//! away (the client hung up), the run is cancelled and still records its trace.
//!
//! A run of a module whose runs are short starts on the thread that took its request, and most
//! end there: handing a 20 µs run to the run threads and its answer back costs two thread
//! wake-ups, a large share of such a request. A run still going after the inline budget moves
//! to the run threads at its next yield (a wait, or an epoch tick while it computes), so a
//! computing guest holds up the HTTP side for at most the budget and one epoch tick.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanId, TraceId, TraceState};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::learning::{LearnRequest, Learner};
use crate::registry::LoadedModule;
use crate::runtime::entry::Call;
use crate::runtime::http::{HandlerResponse, LimitedBody};
use crate::runtime::{Invocation, Runtime, stdio};
use crate::trace::export::Exporter;
use crate::trace::recent::RecentTraces;
use crate::trace::{Cancel, Ending, RequestLine, RunFacts, SpanVolume, TraceRecord};

/// Slots for runs executing at once; a request waits a bounded time for one.
pub struct RunSlots {
    slots: Arc<Semaphore>,
    wait: Duration,
}

/// No run slot freed up within the wait.
#[derive(Debug)]
pub struct Overloaded {
    /// How long the request waited.
    pub waited: Duration,
}

impl RunSlots {
    /// `count` slots; a request waits at most `wait` for one.
    pub fn new(count: usize, wait: Duration) -> Self {
        RunSlots {
            slots: Arc::new(Semaphore::new(count)),
            wait,
        }
    }

    /// A slot, once one is free.
    ///
    /// # Errors
    ///
    /// [`Overloaded`] when none frees up within the wait.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one is as good as full.
            Ok(Err(_)) | Err(_) => Err(Overloaded { waited: self.wait }),
        }
    }
}

/// Counters of runs, for `/metrics`.
#[derive(Debug, Default)]
pub struct RunCounters {
    /// Runs that ended (any way).
    pub finished: AtomicU64,
    /// Runs that trapped, timed out, exited non-zero, failed in the host or were cancelled.
    pub failed: AtomicU64,
    /// Runs cancelled (client gone, body too large).
    pub cancelled: AtomicU64,
    /// Requests refused because no run slot freed up in time.
    pub rejected: AtomicU64,
    /// Runs executing now.
    pub active: AtomicU64,
    /// Runs that ran from start to end on the thread that took their request.
    pub inline: AtomicU64,
    /// Runs that started on the thread that took their request and moved to the run threads.
    pub moved: AtomicU64,
    /// Spans produced.
    pub spans: AtomicU64,
}

/// Where finished runs go: the recent-trace buffer, the exporter and the counters.
pub struct TraceSinks {
    /// The last traces, for `GET /traces`.
    pub recent: RecentTraces,
    /// The OTLP exporter, if a collector is configured.
    pub exporter: Option<Exporter>,
    /// Run counters.
    pub counters: RunCounters,
    /// Runs, failures and durations by module.
    pub stats: crate::stats::RunStats,
}

/// Everything a run needs, owned.
pub struct RunJob {
    /// The module version to run (kept alive by the run, whatever happens to its name).
    pub module: Arc<LoadedModule>,
    /// What to call.
    pub call: Call,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The request body: the guest's stdin, streamed.
    pub body: Body,
    /// Largest body accepted.
    pub max_body: usize,
    /// The trace to record the run in.
    pub trace: TraceContext,
    /// Span limits of this run.
    pub volume: SpanVolume,
    /// Where to send what the module's runs taught about its short calls.
    pub learner: Option<Learner>,
    /// For an HTTP handler: the request's head (the path the handler sees); `body` is its
    /// body.
    pub request: Option<axum::http::request::Parts>,
    /// The request line the trace tells.
    pub request_line: RequestLine,
    /// The inline budget: a run shorter than this lets the module's next runs start on the
    /// HTTP side (see [`run`]).
    pub inline: Duration,
}

/// Where the run's spans go in the caller's trace.
#[derive(Debug, Clone)]
pub struct TraceContext {
    /// The caller's trace, or a new one.
    pub trace_id: TraceId,
    /// The caller's span, from `traceparent`.
    pub remote_parent: Option<SpanId>,
    /// The request span.
    pub request_span: SpanId,
    /// When the request arrived.
    pub request_start: SystemTime,
    /// Spans are recorded and exported (else the per-function totals only).
    pub sampled: bool,
    /// The `tracestate` to pass on.
    pub trace_state: TraceState,
}

/// What the handler needs to answer.
pub struct Finished {
    /// How the run ended.
    pub ending: Ending,
    /// stdout, capped.
    pub stdout: Bytes,
    /// Some stdout was dropped.
    pub stdout_truncated: bool,
    /// What an HTTP handler answered.
    pub response: Option<HandlerResponse>,
}

/// Runs `job` holding `permit`, and answers; `None` if the run was lost (the executor shut
/// down).
///
/// A run of a version whose recent runs took less than the job's inline budget starts here, on
/// the caller's thread, and moves to `executor` (the run threads) once it has been going for
/// that long (see the module's doc). Every other run starts on `executor`: a version's first, and those of one
/// whose last [`INLINE_CREDIT`] runs all took longer. If the caller is dropped (its client
/// hung up), the run goes on on `executor`, is cancelled there and still records its trace.
pub async fn run(
    executor: &tokio::runtime::Handle,
    runtime: Arc<Runtime>,
    sinks: Arc<TraceSinks>,
    job: RunJob,
    permit: OwnedSemaphorePermit,
) -> Option<Finished> {
    let (reply, answer) = oneshot::channel();
    // With no budget no run is short, and the credit stays at 0.
    let short = job.module.inline_credit.load(Ordering::Relaxed) > 0;
    let budget = job.inline;
    let run = Box::pin(execute(runtime, sinks.clone(), job, permit, reply));
    if short {
        Inline {
            run: Some(run),
            executor: executor.clone(),
            sinks,
            since: Instant::now(),
            budget,
        }
        .await;
    } else {
        executor.spawn(run);
    }
    answer.await.ok()
}

/// A run polled by the task that took its request, until it ends or has been going for
/// `budget` when it yields: then it moves to `executor`. Dropped before either, it moves too.
struct Inline {
    run: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    executor: tokio::runtime::Handle,
    sinks: Arc<TraceSinks>,
    since: Instant,
    budget: Duration,
}

impl Inline {
    fn move_to_executor(&mut self) {
        if let Some(run) = self.run.take() {
            self.sinks.counters.moved.fetch_add(1, Ordering::Relaxed);
            self.executor.spawn(run);
        }
    }
}

impl Future for Inline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(run) = self.run.as_mut() else {
            return Poll::Ready(());
        };
        if run.as_mut().poll(cx).is_ready() {
            self.run = None;
            self.sinks.counters.inline.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(());
        }
        if self.since.elapsed() < self.budget {
            return Poll::Pending;
        }
        self.move_to_executor();
        Poll::Ready(())
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        self.move_to_executor();
    }
}

async fn execute(
    runtime: Arc<Runtime>,
    sinks: Arc<TraceSinks>,
    job: RunJob,
    permit: OwnedSemaphorePermit,
    mut reply: oneshot::Sender<Finished>,
) {
    let counters = &sinks.counters;
    counters.active.fetch_add(1, Ordering::Relaxed);
    let (to_guest, stdin) = stdio::stdin_pipe();
    let (stdin_failed, stdin_failure) = oneshot::channel();
    // A command reads the body on stdin; a handler reads it from its request.
    let (pump, http) = match job.request {
        Some(parts) => {
            drop(to_guest);
            let body = LimitedBody::new(job.body, job.max_body, stdin_failed);
            (None, Some(axum::http::Request::from_parts(parts, body)))
        }
        None => {
            let pump = tokio::spawn(async move {
                let mut to_guest = to_guest;
                if let Err(cancel) = pump_body(job.body, &mut to_guest, job.max_body).await {
                    let _ = stdin_failed.send(cancel);
                    // The guest must not read an end of a body that has none: its stdin stays
                    // open until the run is cancelled (and this task aborted).
                    std::future::pending::<()>().await;
                }
            });
            (Some(pump), None)
        }
    };
    let module = &job.module;
    let switched = module.switches_for_next_run();
    let min_span_ns = job.volume.min_span_us.saturating_mul(1000);
    let outcome = runtime
        .run(
            Invocation {
                pre: &module.pre,
                program: &module.info.name,
                args: &job.args,
                call: &job.call,
                stdin,
                functions: module.names.len(),
                host_spans: module.host_spans,
                record_calls: job.trace.sampled,
                counters: &module.counters.counted,
                switched: &switched,
                min_span_ns,
                http,
                outgoing_http: &module.info.outgoing_http,
            },
            cancelled(&mut reply, stdin_failure),
        )
        .await;
    if let Some(pump) = pump {
        pump.abort();
    }
    // The store and its instance are gone: the slot is free for the next run.
    drop(permit);
    update_inline_credit(
        &module.inline_credit,
        Duration::from_nanos(outcome.run_ns) < job.inline,
    );
    counters.active.fetch_sub(1, Ordering::Relaxed);

    let trace = Arc::new(TraceRecord::new(
        RunFacts {
            module: module.info.name.clone(),
            names: module.names.clone(),
            locations: module.locations.clone(),
            host_functions: crate::runtime::wasi::WASI_FUNCTIONS,
            trace_id: job.trace.trace_id,
            remote_parent: job.trace.remote_parent,
            request_span: job.trace.request_span,
            request_start: job.trace.request_start,
            request_end: SystemTime::now(),
            run_start: outcome.started,
            run_ns: outcome.run_ns,
            ending: outcome.ending.clone(),
            stderr: outcome.stderr,
            max_spans: job.volume.max_spans,
            memory_bytes: outcome.memory_bytes,
            sampled: job.trace.sampled,
            trace_state: job.trace.trace_state.clone(),
            coldstart: !module.warm.swap(true, Ordering::Relaxed),
            audited: switched.len(),
            version: module.info.runnable_sha256.clone(),
            request: job.request_line,
            response_status: match &outcome.response {
                Some(HandlerResponse::Sent { status, .. }) => Some(status.as_u16()),
                _ => None,
            },
        },
        &outcome.recorder,
    ));
    drop(outcome.recorder);
    if let Some(ids) = module.observe(&trace, !switched.is_empty(), min_span_ns)
        && let Some(learner) = &job.learner
    {
        let _ = learner.send(LearnRequest {
            name: module.info.name.clone(),
            from: module.clone(),
            ids,
        });
    }
    counters.finished.fetch_add(1, Ordering::Relaxed);
    if outcome.ending.error().is_some() {
        counters.failed.fetch_add(1, Ordering::Relaxed);
    }
    if matches!(outcome.ending, Ending::Cancelled(_)) {
        counters.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    counters
        .spans
        .fetch_add(trace.span_count() as u64, Ordering::Relaxed);
    sinks.stats.record(
        &trace.module,
        trace
            .start()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
        trace.run_duration_ns(),
        outcome.ending.error().is_some(),
    );
    sinks.recent.push(trace.clone());
    if let Some(exporter) = &sinks.exporter {
        exporter.send(trace);
    }
    let _ = reply.send(Finished {
        ending: outcome.ending,
        stdout: outcome.stdout,
        stdout_truncated: outcome.stdout_truncated,
        response: outcome.response,
    });
}

/// Credit a module's runs get from one shorter than the inline budget: so many longer runs in
/// a row (a short run that lost its core for a while looks long) before its runs start on the
/// run threads again.
const INLINE_CREDIT: u8 = 4;

/// Counts a finished run in a module's credit for starting runs on the HTTP side.
fn update_inline_credit(credit: &AtomicU8, short: bool) {
    if short {
        credit.store(INLINE_CREDIT, Ordering::Relaxed);
    } else {
        let _ = credit.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
    }
}

/// Resolves when the run must stop early: the handler went away (its client hung up), or the
/// body could not be read to the end.
async fn cancelled(
    reply: &mut oneshot::Sender<Finished>,
    stdin_failure: oneshot::Receiver<Cancel>,
) -> Cancel {
    tokio::select! {
        () = reply.closed() => Cancel::ClientDisconnected,
        // Once the body is read to its end, only the client can cancel.
        Ok(cancel) = stdin_failure => cancel,
    }
}

/// Copies the request body into the guest's stdin as it arrives, at most `limit` bytes.
/// Ends when the body does, or when the guest no longer reads (its run ended).
async fn pump_body(
    mut body: Body,
    to_guest: &mut tokio::io::DuplexStream,
    limit: usize,
) -> Result<(), Cancel> {
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Cancel::ClientDisconnected)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(Cancel::BodyTooLarge(limit));
        }
        if to_guest.write_all(&data).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_earns_inline_starts_that_long_runs_use_up() {
        let credit = AtomicU8::new(0);
        update_inline_credit(&credit, false);
        assert_eq!(credit.load(Ordering::Relaxed), 0, "no credit to lose");
        update_inline_credit(&credit, true);
        for left in (0..INLINE_CREDIT).rev() {
            update_inline_credit(&credit, false);
            assert_eq!(credit.load(Ordering::Relaxed), left);
        }
        update_inline_credit(&credit, false);
        assert_eq!(credit.load(Ordering::Relaxed), 0);
        update_inline_credit(&credit, false);
        update_inline_credit(&credit, true);
        assert_eq!(
            credit.load(Ordering::Relaxed),
            INLINE_CREDIT,
            "one short run is enough"
        );
    }
}
