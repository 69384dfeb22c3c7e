//! Which runs are sampled: the standard `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
//! (`always_on`, `always_off`, `traceidratio`, `parentbased_*`; default
//! `parentbased_always_on`), read and applied by the OpenTelemetry SDK's own samplers, with the
//! caller's `traceparent` (its sampled flag) and `tracestate` as the parent.
//!
//! A sampled run records every call it can and exports its spans. An unsampled run records the
//! per-function totals only (no event log, no call tree, no spans exported), the cheapest way
//! to keep exact counts and times for the metrics.

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

/// A parent from `traceparent` and `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParent {
    /// The caller's trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller sampled it.
    pub sampled: bool,
    /// The caller's `tracestate`.
    pub trace_state: TraceState,
}

/// The decision for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampling {
    /// Spans are recorded and exported.
    pub sampled: bool,
    /// The `tracestate` to pass on.
    pub trace_state: TraceState,
}

/// The sampler the environment configures.
#[derive(Debug)]
pub struct Sampler(Box<dyn ShouldSample>);

impl Sampler {
    /// The sampler of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub fn from_env() -> Self {
        Sampler(opentelemetry_sdk::trace::Config::default().sampler)
    }

    /// A given sampler (for tests).
    pub fn new(sampler: impl ShouldSample + 'static) -> Self {
        Sampler(Box::new(sampler))
    }

    /// Decides for a run in trace `trace_id` under `parent`.
    pub fn decide(&self, trace_id: TraceId, parent: Option<&RemoteParent>) -> Sampling {
        let context = parent.map(|p| {
            let flags = if p.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            Context::new().with_remote_span_context(SpanContext::new(
                p.trace_id,
                p.span_id,
                flags,
                true,
                p.trace_state.clone(),
            ))
        });
        let result = self.0.should_sample(
            context.as_ref(),
            trace_id,
            "POST /run",
            &SpanKind::Server,
            &[],
            &[],
        );
        Sampling {
            sampled: result.decision == SamplingDecision::RecordAndSample,
            trace_state: result.trace_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::Sampler as Sdk;

    fn parent(sampled: bool) -> RemoteParent {
        RemoteParent {
            trace_id: TraceId::from_bytes(7u128.to_be_bytes()),
            span_id: SpanId::from_bytes(9u64.to_be_bytes()),
            sampled,
            trace_state: TraceState::from_key_value([("vendor", "x")]).unwrap(),
        }
    }

    #[test]
    fn parent_based_follows_the_caller_and_keeps_its_state() {
        let sampler = Sampler::new(Sdk::ParentBased(Box::new(Sdk::AlwaysOn)));
        let yes = sampler.decide(
            TraceId::from_bytes(7u128.to_be_bytes()),
            Some(&parent(true)),
        );
        assert!(yes.sampled);
        assert_eq!(yes.trace_state.header(), "vendor=x");
        assert!(
            !sampler
                .decide(
                    TraceId::from_bytes(7u128.to_be_bytes()),
                    Some(&parent(false))
                )
                .sampled
        );
        assert!(
            sampler
                .decide(TraceId::from_bytes(8u128.to_be_bytes()), None)
                .sampled
        );
    }

    #[test]
    fn ratio_and_fixed_samplers() {
        let off = Sampler::new(Sdk::AlwaysOff);
        assert!(
            !off.decide(
                TraceId::from_bytes(1u128.to_be_bytes()),
                Some(&parent(true))
            )
            .sampled
        );
        let half = Sampler::new(Sdk::TraceIdRatioBased(0.5));
        let sampled = (1..=1000u128)
            .filter(|i| {
                half.decide(
                    TraceId::from_bytes(
                        i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                            .to_be_bytes(),
                    ),
                    None,
                )
                .sampled
            })
            .count();
        assert!((350..650).contains(&sampled), "{sampled} of 1000");
    }
}
