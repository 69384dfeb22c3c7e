//! OTLP export off the request path: runs hand finished traces to a bounded queue; one thread
//! batches them to the collector. A collector that is down or slow costs dropped (and counted)
//! traces, never a slower or failed run.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use opentelemetry::trace::{SpanContext, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter as _;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};

use super::TraceRecord;
use super::metrics::FunctionMetrics;
use super::transport::{TlsFiles, Transport};
use crate::config::OtlpProtocol;

/// Traces waiting for export; past this, new ones are dropped.
const QUEUE: usize = 1024;
/// Spans sent per export call.
const BATCH_SPANS: usize = 4096;
/// How long shutdown keeps sending what is queued; a collector that hangs cannot hold the
/// server longer than this plus one export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Counters of the export pipeline.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported_spans: AtomicU64,
    /// Traces dropped because the queue was full.
    pub dropped_traces: AtomicU64,
    /// Spans in failed export calls.
    pub failed_spans: AtomicU64,
    /// Metric exports the collector accepted.
    pub metric_exports: AtomicU64,
    /// Metric exports that failed.
    pub failed_metric_exports: AtomicU64,
    /// Guest log records the collector accepted.
    pub exported_logs: AtomicU64,
    /// Guest log records in failed exports.
    pub failed_logs: AtomicU64,
}

/// Sends traces to an OTLP collector from a background thread.
pub struct Exporter {
    queue: Option<SyncSender<Arc<TraceRecord>>>,
    worker: Option<JoinHandle<()>>,
    stats: Arc<ExportStats>,
    stop_by: Arc<OnceLock<Instant>>,
}

impl Exporter {
    /// Connects an exporter to `endpoint` (also configured by the standard `OTEL_EXPORTER_OTLP_*`
    /// variables: headers, timeout; the service name comes from `OTEL_SERVICE_NAME`); spans and
    /// metrics carry `service.instance.id` = `instance`. Per-function
    /// metrics go to the same collector every `OTEL_METRIC_EXPORT_INTERVAL` milliseconds
    /// (default 60000), cumulative unless `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`
    /// is `delta`.
    ///
    /// # Errors
    ///
    /// If the exporter cannot be built (a malformed endpoint, say).
    pub fn start(endpoint: &str, protocol: OtlpProtocol, instance: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the exporter runtime")?;
        let temporality = temporality();
        let transport = Transport::new(endpoint, protocol, TlsFiles::from_env()?)?;
        let (mut spans, metrics, mut logs) = runtime.block_on(async {
            Ok::<_, anyhow::Error>((
                transport.spans()?,
                transport.metrics(temporality)?,
                transport.logs()?,
            ))
        })?;
        let resource = base_resource(instance).build();
        spans.set_resource(&resource);
        logs.set_resource(&resource);
        let function_metrics = FunctionMetrics::new(resource, temporality);
        let instance = instance.to_string();
        let stats = Arc::new(ExportStats::default());
        let (queue, traces) = mpsc::sync_channel(QUEUE);
        let worker_stats = stats.clone();
        let stop_by = Arc::new(OnceLock::new());
        let worker_stop_by = stop_by.clone();
        let worker = std::thread::Builder::new()
            .name("iota-otlp-export".into())
            .spawn(move || {
                runtime.block_on(export_loop(
                    Sinks {
                        spans,
                        metrics,
                        logs,
                        logger: SdkLoggerProvider::builder().build().logger("iota"),
                        function_metrics,
                        metrics_interval: metrics_interval(),
                        instance,
                    },
                    traces,
                    &worker_stats,
                    &worker_stop_by,
                ));
            })?;
        Ok(Exporter {
            queue: Some(queue),
            worker: Some(worker),
            stats,
            stop_by,
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

    /// Sends what is queued (for at most [`SHUTDOWN_GRACE`]) and stops the thread.
    pub fn shutdown(&mut self) {
        let _ = self.stop_by.set(Instant::now() + SHUTDOWN_GRACE);
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

/// The resource of everything the server exports: its service name, its instance (and
/// whatever `OTEL_RESOURCE_ATTRIBUTES` adds).
fn base_resource(instance: &str) -> opentelemetry_sdk::resource::ResourceBuilder {
    Resource::builder()
        .with_service_name(service_name())
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
}

/// The resource of a module version's spans and logs: the server's, with the function it ran
/// (`faas.name`: the module; `faas.version`: the start of its SHA-256).
fn function_resource(instance: &str, trace: &TraceRecord) -> Resource {
    base_resource(instance)
        .with_attributes([
            KeyValue::new("faas.name", trace.module.clone()),
            KeyValue::new(
                "faas.version",
                trace.version.chars().take(12).collect::<String>(),
            ),
        ])
        .build()
}

/// `OTEL_SERVICE_NAME`, else `iota`.
fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "iota".into())
}

/// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), else one minute.
fn metrics_interval() -> Duration {
    std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(60), Duration::from_millis)
}

/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: `delta`, else cumulative.
fn temporality() -> Temporality {
    match std::env::var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
        Ok(v) if v.eq_ignore_ascii_case("delta") => Temporality::Delta,
        _ => Temporality::Cumulative,
    }
}

/// Where the export thread sends things.
struct Sinks {
    spans: opentelemetry_otlp::SpanExporter,
    metrics: opentelemetry_otlp::MetricExporter,
    /// The guest's log records go here, correlated with their spans.
    logs: opentelemetry_otlp::LogExporter,
    /// Makes log records (it has no processor: the export thread sends them itself).
    logger: SdkLogger,
    function_metrics: FunctionMetrics,
    metrics_interval: Duration,
    /// The server's `service.instance.id`.
    instance: String,
}

async fn export_loop(
    mut sinks: Sinks,
    traces: Receiver<Arc<TraceRecord>>,
    stats: &ExportStats,
    stop_by: &OnceLock<Instant>,
) {
    // Blocks between batches: this thread and its runtime exist only for the exporter.
    let mut next_metrics = Instant::now() + sinks.metrics_interval;
    loop {
        if stop_by.get().is_some_and(|t| Instant::now() >= *t) {
            let left = traces.try_iter().count() as u64;
            stats.dropped_traces.fetch_add(left, Ordering::Relaxed);
            tracing::warn!(
                traces = left,
                "collector too slow: traces dropped at shutdown"
            );
            break;
        }
        let wait = next_metrics.saturating_duration_since(Instant::now());
        match traces.recv_timeout(wait) {
            Ok(trace) => {
                let mut batch = vec![trace];
                let mut span_count = batch[0].span_count();
                while span_count < BATCH_SPANS
                    && let Ok(trace) = traces.try_recv()
                {
                    span_count += trace.span_count();
                    batch.push(trace);
                }
                for trace in &batch {
                    sinks.function_metrics.record(trace);
                }
                // Each module version is a function of its own: its resource says which.
                batch.retain(|trace| trace.sampled);
                batch.sort_by(|a, b| (&a.module, &a.version).cmp(&(&b.module, &b.version)));
                for group in batch.chunk_by(|a, b| a.module == b.module && a.version == b.version) {
                    let resource = function_resource(&sinks.instance, &group[0]);
                    sinks.spans.set_resource(&resource);
                    sinks.logs.set_resource(&resource);
                    let spans = group.iter().flat_map(|t| span_data(t, false)).collect();
                    export_spans(&sinks.spans, spans, stats).await;
                    export_logs(&sinks, group, stats).await;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_metrics {
            export_metrics(&mut sinks, stats).await;
            next_metrics = Instant::now() + sinks.metrics_interval;
        }
    }
    export_metrics(&mut sinks, stats).await;
    let _ = sinks.spans.shutdown();
    let _ = sinks.metrics.shutdown();
    let _ = sinks.logs.shutdown();
    sinks.function_metrics.shutdown();
}

async fn export_spans(
    exporter: &opentelemetry_otlp::SpanExporter,
    mut spans: Vec<SpanData>,
    stats: &ExportStats,
) {
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

/// Sends the guest's log records of `traces`, each with its trace and span.
async fn export_logs(sinks: &Sinks, traces: &[Arc<TraceRecord>], stats: &ExportStats) {
    let scope = InstrumentationScope::builder("iota")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let records: Vec<SdkLogRecord> = traces
        .iter()
        .filter(|trace| trace.sampled)
        .flat_map(|trace| {
            trace.guest_logs().into_iter().map(|log| {
                let mut record = sinks.logger.create_log_record();
                record.set_timestamp(log.time);
                record.set_observed_timestamp(log.time);
                record.set_severity_text(log.severity.text);
                if let Some(severity) = severity(log.severity.number) {
                    record.set_severity_number(severity);
                }
                record.set_body(AnyValue::String(log.message.into()));
                record.set_trace_context(trace.trace_id, log.span_id, Some(TraceFlags::SAMPLED));
                record.add_attribute("iota.module", trace.module.clone());
                record
            })
        })
        .collect();
    if records.is_empty() {
        return;
    }
    let batch: Vec<(&SdkLogRecord, &InstrumentationScope)> =
        records.iter().map(|r| (r, &scope)).collect();
    match sinks.logs.export(LogBatch::new(&batch)).await {
        Ok(()) => stats
            .exported_logs
            .fetch_add(records.len() as u64, Ordering::Relaxed),
        Err(err) => {
            tracing::warn!(%err, logs = records.len(), "OTLP log export failed");
            stats
                .failed_logs
                .fetch_add(records.len() as u64, Ordering::Relaxed)
        }
    };
}

/// The OpenTelemetry severity of a severity number.
fn severity(number: i32) -> Option<Severity> {
    Some(match number {
        1 => Severity::Trace,
        5 => Severity::Debug,
        9 => Severity::Info,
        13 => Severity::Warn,
        17 => Severity::Error,
        _ => return None,
    })
}

async fn export_metrics(sinks: &mut Sinks, stats: &ExportStats) {
    let Some(metrics) = sinks.function_metrics.collect() else {
        return;
    };
    match sinks.metrics.export(&metrics).await {
        Ok(()) => stats.metric_exports.fetch_add(1, Ordering::Relaxed),
        Err(err) => {
            tracing::warn!(%err, "OTLP metrics export failed");
            stats.failed_metric_exports.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// The OTLP form of a trace's spans; the guest's log records stay span events only with
/// `log_events` (they are exported as log records otherwise).
pub fn span_data(trace: &TraceRecord, log_events: bool) -> Vec<SpanData> {
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
                trace.trace_state.clone(),
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
                    .filter(|e| log_events || e.name != "log")
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
