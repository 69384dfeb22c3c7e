//! OTLP export off the request path: runs hand finished traces to a bounded queue; one thread
//! batches them to the collector. A collector that is down or slow costs dropped (and counted)
//! traces, never a slower or failed run.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use opentelemetry::InstrumentationScope;
use opentelemetry::trace::{SpanContext, Status, TraceFlags, TraceState};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use super::TraceRecord;
use crate::config::OtlpProtocol;

/// Traces waiting for export; past this, new ones are dropped.
const QUEUE: usize = 1024;
/// Spans sent per export call.
const BATCH_SPANS: usize = 4096;

/// Counters of the export pipeline.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported_spans: AtomicU64,
    /// Traces dropped because the queue was full.
    pub dropped_traces: AtomicU64,
    /// Spans in failed export calls.
    pub failed_spans: AtomicU64,
}

/// Sends traces to an OTLP collector from a background thread.
pub struct Exporter {
    queue: Option<SyncSender<Arc<TraceRecord>>>,
    worker: Option<JoinHandle<()>>,
    stats: Arc<ExportStats>,
}

impl Exporter {
    /// Connects an exporter to `endpoint` (also configured by the standard `OTEL_EXPORTER_OTLP_*`
    /// variables: headers, timeout; the service name comes from `OTEL_SERVICE_NAME`).
    ///
    /// # Errors
    ///
    /// If the exporter cannot be built (a malformed endpoint, say).
    pub fn start(endpoint: &str, protocol: OtlpProtocol) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the exporter runtime")?;
        let mut exporter = runtime.block_on(async {
            match protocol {
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(http_traces_endpoint(endpoint))
                    .build(),
                OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build(),
            }
        })?;
        let resource = Resource::builder()
            .with_service_name(service_name())
            .build();
        exporter.set_resource(&resource);
        let stats = Arc::new(ExportStats::default());
        let (queue, traces) = mpsc::sync_channel(QUEUE);
        let worker_stats = stats.clone();
        let worker = std::thread::Builder::new()
            .name("iota-otlp-export".into())
            .spawn(move || {
                runtime.block_on(export_loop(exporter, traces, &worker_stats));
            })?;
        Ok(Exporter {
            queue: Some(queue),
            worker: Some(worker),
            stats,
        })
    }

    /// Queues a trace; drops it (and counts it) if the queue is full.
    pub fn send(&self, trace: Arc<TraceRecord>) {
        if let Some(queue) = &self.queue
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                queue.try_send(trace)
        {
            self.stats.dropped_traces.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Export counters.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// Sends what is queued and stops the thread.
    pub fn shutdown(&mut self) {
        self.queue.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `OTEL_SERVICE_NAME`, else `iota`.
fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "iota".into())
}

/// The OTLP/HTTP base endpoint gets the signal path, as the specification asks.
fn http_traces_endpoint(endpoint: &str) -> String {
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    traces: Receiver<Arc<TraceRecord>>,
    stats: &ExportStats,
) {
    // Blocks between batches: this thread and its runtime exist only for the exporter.
    while let Ok(trace) = traces.recv() {
        let mut spans = span_data(&trace);
        while spans.len() < BATCH_SPANS
            && let Ok(trace) = traces.try_recv()
        {
            spans.extend(span_data(&trace));
        }
        while !spans.is_empty() {
            let rest = spans.split_off(spans.len().min(BATCH_SPANS));
            let batch = std::mem::replace(&mut spans, rest);
            let count = batch.len() as u64;
            match exporter.export(batch).await {
                Ok(()) => stats.exported_spans.fetch_add(count, Ordering::Relaxed),
                Err(err) => {
                    tracing::warn!(%err, spans = count, "OTLP export failed");
                    stats.failed_spans.fetch_add(count, Ordering::Relaxed)
                }
            };
        }
    }
    let _ = exporter.shutdown();
}

/// The OTLP form of a trace's spans.
pub fn span_data(trace: &TraceRecord) -> Vec<SpanData> {
    let scope = InstrumentationScope::builder("iota")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let request_span = trace.request_span();
    trace
        .spans()
        .into_iter()
        .map(|span| SpanData {
            span_context: SpanContext::new(
                trace.trace_id,
                span.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: span
                .parent_span_id
                .unwrap_or(opentelemetry::trace::SpanId::INVALID),
            parent_span_is_remote: trace.has_remote_parent() && span.span_id == request_span,
            span_kind: span.kind,
            name: Cow::Owned(span.name),
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: {
                let mut events = SpanEvents::default();
                events.events = span
                    .events
                    .into_iter()
                    .map(|e| opentelemetry::trace::Event::new(e.name, e.time, e.attributes, 0))
                    .collect();
                events
            },
            links: SpanLinks::default(),
            status: match span.error {
                Some(message) => Status::error(message),
                None => Status::Unset,
            },
            instrumentation_scope: scope.clone(),
        })
        .collect()
}
