//! Per-function totals of runs as OTLP metrics.
//!
//! The export thread adds each run's exact totals into plain maps keyed by module and function
//! id (integer adds, no allocation), and at each collection hands the sums to OpenTelemetry
//! instruments, which the same thread exports next to the spans. Instruments, all with the
//! attributes `iota.module` and `code.function.name`:
//! - `iota.function.calls` (counter): completed calls;
//! - `iota.function.duration` (counter, seconds): time inside, callees included;
//! - `iota.function.self_time` (counter, seconds): time inside, callees excluded;
//! - `iota.function.max_duration` (gauge, seconds): the longest call since the last collection.
//!
//! and `iota.runs` (counter, by `iota.module` and `iota.run.outcome`).
//!
//! Metric lines a guest sends through the Observe API (statsd) become instruments of their own
//! name, with `iota.module` and the line's tags as attributes: `c` a counter, `g` a gauge,
//! `ms`/`h`/`d` a histogram. At most [`MAX_GUEST_METRICS`] names per server; lines past that,
//! or that do not parse, are dropped and counted.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use rustc_hash::FxHashMap;

use super::names::{CallKind, CallNames};
use super::observe::{MetricKind, parse_statsd};
use super::recorder::Aggregate;
use super::{Ending, TraceRecord};

/// Distinct guest metric names the server exports.
pub const MAX_GUEST_METRICS: usize = 256;

/// Instruments made for the guests' own metric lines, by name.
#[derive(Default)]
struct GuestInstruments {
    counters: HashMap<String, Counter<f64>>,
    gauges: HashMap<String, Gauge<f64>>,
    histograms: HashMap<String, Histogram<f64>>,
    dropped: u64,
}

impl GuestInstruments {
    fn names(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.histograms.len()
    }

    /// Records one line of `module`'s guest.
    fn record(&mut self, meter: &Meter, module: &str, line: &str) {
        let metric = match parse_statsd(line) {
            Ok(metric) => metric,
            Err(err) => {
                tracing::debug!(module, "guest metric dropped: {err}");
                self.dropped += 1;
                return;
            }
        };
        let mut attributes = vec![KeyValue::new("iota.module", module.to_string())];
        attributes.extend(metric.tags.into_iter().map(|(k, v)| KeyValue::new(k, v)));
        let room = self.names() < MAX_GUEST_METRICS;
        let name = metric.name;
        match metric.kind {
            MetricKind::Counter => match self.counters.get(&name) {
                Some(counter) => counter.add(metric.value, &attributes),
                None if room => {
                    let counter = meter.f64_counter(name.clone()).build();
                    counter.add(metric.value, &attributes);
                    self.counters.insert(name, counter);
                }
                None => self.dropped += 1,
            },
            MetricKind::Gauge => match self.gauges.get(&name) {
                Some(gauge) => gauge.record(metric.value, &attributes),
                None if room => {
                    let gauge = meter.f64_gauge(name.clone()).build();
                    gauge.record(metric.value, &attributes);
                    self.gauges.insert(name, gauge);
                }
                None => self.dropped += 1,
            },
            MetricKind::Histogram => match self.histograms.get(&name) {
                Some(histogram) => histogram.record(metric.value, &attributes),
                None if room => {
                    let histogram = meter.f64_histogram(name.clone()).build();
                    histogram.record(metric.value, &attributes);
                    self.histograms.insert(name, histogram);
                }
                None => self.dropped += 1,
            },
        }
    }
}

/// Run totals waiting for the next collection, and the instruments they feed.
pub struct FunctionMetrics {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    pending: HashMap<usize, ModuleTotals>,
    calls: Counter<u64>,
    duration: Counter<f64>,
    self_time: Counter<f64>,
    max_duration: Gauge<f64>,
    runs: Counter<u64>,
    meter: Meter,
    guest: GuestInstruments,
}

/// One module version's totals since the last collection.
struct ModuleTotals {
    module: String,
    names: CallNames,
    /// Functions and host calls, by id (the same ids in every run of the version).
    functions: FxHashMap<u32, Aggregate>,
    /// Manual spans, by name (their ids are per run).
    manual: HashMap<String, Aggregate>,
    runs: HashMap<&'static str, u64>,
}

impl FunctionMetrics {
    /// Instruments reporting under `resource`, with the given temporality.
    pub fn new(resource: Resource, temporality: Temporality) -> Self {
        let reader = Arc::new(
            ManualReader::builder()
                .with_temporality(temporality)
                .build(),
        );
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(SharedReader(reader.clone()))
            .build();
        let meter = provider.meter_with_scope(
            opentelemetry::InstrumentationScope::builder("iota")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        FunctionMetrics {
            calls: meter
                .u64_counter("iota.function.calls")
                .with_description("Completed calls of a wasm function")
                .with_unit("{call}")
                .build(),
            duration: meter
                .f64_counter("iota.function.duration")
                .with_description("Time inside a wasm function, callees included")
                .with_unit("s")
                .build(),
            self_time: meter
                .f64_counter("iota.function.self_time")
                .with_description("Time inside a wasm function, callees excluded")
                .with_unit("s")
                .build(),
            max_duration: meter
                .f64_gauge("iota.function.max_duration")
                .with_description("Longest call of a wasm function since the last export")
                .with_unit("s")
                .build(),
            runs: meter
                .u64_counter("iota.runs")
                .with_description("Runs of a module, by outcome")
                .with_unit("{run}")
                .build(),
            provider,
            reader,
            pending: HashMap::new(),
            meter,
            guest: GuestInstruments::default(),
        }
    }

    /// Adds a run's totals.
    pub fn record(&mut self, trace: &TraceRecord) {
        let names = trace.names();
        let totals = self
            .pending
            .entry(Arc::as_ptr(names.module()).cast::<u8>() as usize)
            .or_insert_with(|| ModuleTotals {
                module: trace.module.clone(),
                names: names.clone(),
                functions: FxHashMap::default(),
                manual: HashMap::new(),
                runs: HashMap::new(),
            });
        *totals.runs.entry(outcome(trace.ending())).or_default() += 1;
        for line in trace.metric_lines() {
            self.guest.record(&self.meter, &trace.module, &line.line);
        }
        for (id, run) in trace.function_totals() {
            let sum = match names.kind(id) {
                CallKind::Manual(_) => totals.manual.entry(names.name(id)).or_default(),
                _ => totals.functions.entry(id).or_default(),
            };
            // A counted function's totals hold calls only (its time is in its callers').
            if trace.is_counted(id) {
                sum.calls += run.calls;
                continue;
            }
            sum.calls += run.calls;
            sum.total_ns += run.total_ns;
            sum.self_ns += run.self_ns;
            sum.max_ns = sum.max_ns.max(run.max_ns);
        }
    }

    /// Moves the pending totals into the instruments and collects them for export; `None` when
    /// no run happened since the last collection.
    pub fn collect(&mut self) -> Option<ResourceMetrics> {
        if self.pending.is_empty() {
            return None;
        }
        for totals in std::mem::take(&mut self.pending).into_values() {
            let module = KeyValue::new("iota.module", totals.module.clone());
            for (outcome, runs) in &totals.runs {
                self.runs.add(
                    *runs,
                    &[module.clone(), KeyValue::new("iota.run.outcome", *outcome)],
                );
            }
            let named = totals
                .functions
                .iter()
                .map(|(id, sum)| (totals.names.name(*id), sum))
                .chain(totals.manual.iter().map(|(name, sum)| (name.clone(), sum)));
            for (name, sum) in named {
                let attributes = [module.clone(), KeyValue::new("code.function.name", name)];
                self.calls.add(sum.calls, &attributes);
                if sum.total_ns > 0 {
                    self.duration.add(seconds(sum.total_ns), &attributes);
                    self.self_time.add(seconds(sum.self_ns), &attributes);
                    self.max_duration.record(seconds(sum.max_ns), &attributes);
                }
            }
        }
        let mut metrics = ResourceMetrics::default();
        match self.reader.collect(&mut metrics) {
            Ok(()) => Some(metrics),
            Err(err) => {
                tracing::warn!(%err, "collecting metrics failed");
                None
            }
        }
    }

    /// Stops the instruments.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

fn seconds(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64()
}

fn outcome(ending: &Ending) -> &'static str {
    match ending {
        Ending::Exit(0) => "ok",
        Ending::Exit(_) => "exit",
        Ending::Trap { .. } => "trap",
        Ending::Timeout => "timeout",
        Ending::Cancelled(_) => "cancelled",
        Ending::HostError(_) => "host_error",
    }
}

/// Lets the provider own the reader while the export thread collects from it.
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}
