//! What tracing adds to a whole short run, as `POST /run` executes it (P3 without HTTP): a
//! fresh store, instantiation, count_vowels on "Hello, world!", the counters read, the trace
//! built from the event log. The HTTP work around it is the same whether the module is traced
//! or not, so this is the part of a request that tracing changes, without wrk's noise.
//!
//! - `untraced`: the module as uploaded with `instrument=false`;
//! - `every call timed`: `time_every_call=true`;
//! - `defaults, first runs`: the cost model's short functions counted, the rest timed;
//! - `defaults, learned`: the version the server builds once runs showed which calls are short
//!   (learned here with the server's own [`Learning`], from runs of the version above).
//!
//! `caches cold` runs `untraced` and `defaults, learned` again with 16 MiB written before each
//! run, as a server's run finds the caches after other requests.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use iota::learning::{LearnSettings, Learning};
use iota::runtime::component::Prepared;
use iota::runtime::entry::{Call, EntryPoints};
use iota::runtime::{Counters, Invocation, RunLimits, Runtime, stdio};
use iota::trace::{RunFacts, TraceRecord, new_span_id, new_trace_id};
use iota_instrument::{CallTiming, IfInstrumented, Options, UnwindExits};
use opentelemetry::trace::TraceState;
use tokio::io::AsyncWriteExt;
use wasmtime::Module;

const WASM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/wasm/count_vowels.wasm"
);
const BODY: &[u8] = b"Hello, world!";

/// One way of uploading the module, linked for its runs.
struct Version {
    pre: Prepared,
    call: Call,
    counters: Counters,
    names: Arc<[Option<String>]>,
}

impl Version {
    fn new(runtime: &Runtime, wasm: &[u8], names: Arc<[Option<String>]>) -> Self {
        let module = Module::new(runtime.engine(), wasm).unwrap();
        let call = EntryPoints::of(&module).unwrap().call(None).unwrap();
        Version {
            pre: Prepared::Module(runtime.prepare(&module, false, true).unwrap()),
            call,
            counters: Runtime::counters(&module),
            names,
        }
    }

    /// `wasm` instrumented with `options`, as the compile worker does.
    fn instrumented(runtime: &Runtime, wasm: &[u8], options: &mut Options) -> Self {
        options
            .if_instrumented(IfInstrumented::PassThrough)
            .unwind_exits(UnwindExits::IfModuleUsesExceptions)
            .report_counts(true);
        let out = iota_instrument::instrument(wasm, options).unwrap();
        let len = out
            .functions
            .iter()
            .map(|f| f.id as usize + 1)
            .max()
            .unwrap();
        let mut names = vec![None; len];
        for f in &out.functions {
            names[f.id as usize] = Some(f.name.clone());
        }
        Self::new(runtime, &out.wasm, names.into())
    }

    /// [`Self::run`], then lets the executor finish what the run left: its stdin's reader task,
    /// aborted. A current-thread executor runs other tasks only while `block_on` waits, which a
    /// run that never waits does not do; without this they would pile up, run after run.
    async fn run_to_end(&self, runtime: &Runtime) -> TraceRecord {
        let trace = self.run(runtime).await;
        tokio::task::yield_now().await;
        trace
    }

    /// One run, with its trace built (as a run of the server ends).
    async fn run(&self, runtime: &Runtime) -> TraceRecord {
        let (mut to_guest, stdin) = stdio::stdin_pipe();
        to_guest.write_all(BODY).await.unwrap();
        drop(to_guest);
        let outcome = runtime
            .run(
                Invocation {
                    pre: &self.pre,
                    program: "count_vowels",
                    args: &[],
                    call: &self.call,
                    stdin,
                    functions: self.names.len(),
                    host_spans: true,
                    record_calls: true,
                    counters: &self.counters.counted,
                    switched: &[],
                    min_span_ns: 0,
                    http: None,
                    outgoing_http: &[],
                },
                std::future::pending(),
            )
            .await;
        assert!(outcome.ending.error().is_none(), "{:?}", outcome.ending);
        let now = SystemTime::now();
        let trace = TraceRecord::new(
            RunFacts {
                module: "count_vowels".into(),
                names: self.names.clone(),
                locations: vec![None; self.names.len()].into(),
                host_functions: iota::runtime::wasi::WASI_FUNCTIONS,
                trace_id: new_trace_id(),
                remote_parent: None,
                request_span: new_span_id(),
                request_start: now,
                request_end: now,
                run_start: outcome.started,
                run_ns: outcome.run_ns,
                ending: outcome.ending,
                stderr: outcome.stderr,
                max_spans: 10_000,
                memory_bytes: outcome.memory_bytes,
                sampled: true,
                trace_state: TraceState::default(),
                coldstart: false,
                audited: 0,
                version: String::new(),
                request: Default::default(),
                response_status: None,
            },
            &outcome.recorder,
        );
        assert!(trace.span_count() > 0 || self.names.is_empty());
        trace
    }
}

/// The hook ids the server would learn to count from runs of `first`, with its defaults.
fn learned_ids(runtime: &Runtime, executor: &tokio::runtime::Runtime, first: &Version) -> Vec<u32> {
    let mut learning = Learning::new(LearnSettings {
        enabled: true,
        after_runs: 3,
        after_calls: 100_000,
        mean_ns: 1_000,
        min_calls: 1_000,
        audit_every: 100,
    });
    loop {
        let trace = executor.block_on(first.run(runtime));
        let functions = trace.names().functions();
        let timed = trace
            .function_totals()
            .filter(|&(id, _)| id < functions && !trace.is_counted(id));
        if let Some(ids) = learning.observe(timed, false, 0) {
            return ids;
        }
    }
}

fn whole_run(c: &mut Criterion) {
    let runtime = Runtime::new(RunLimits {
        timeout: Duration::from_secs(10),
        memory: 256 << 20,
        stdout: 1 << 20,
        stderr: 1 << 20,
        max_events: 1 << 20,
        concurrency: 4,
        host_spans: true,
    })
    .unwrap();
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wasm = std::fs::read(WASM).unwrap();
    let first = Version::instrumented(&runtime, &wasm, &mut Options::new());
    let learned = learned_ids(&runtime, &executor, &first);
    let versions = [
        ("untraced", Version::new(&runtime, &wasm, Arc::from(vec![]))),
        (
            "every call timed",
            Version::instrumented(
                &runtime,
                &wasm,
                Options::new().call_timing(CallTiming::EveryCall),
            ),
        ),
        ("defaults, first runs", first),
        (
            "defaults, learned",
            Version::instrumented(&runtime, &wasm, Options::new().count_also(learned)),
        ),
    ];
    let mut group = c.benchmark_group("run/count_vowels");
    for (name, version) in &versions {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| executor.block_on(version.run_to_end(&runtime)))
        });
    }
    group.finish();
    // A server's run rarely finds its data in the core's caches: other requests, wrk and the
    // kernel have been there since. Writing 16 MiB (8 times L2) before each run evicts it.
    let mut group = c.benchmark_group("run/count_vowels, caches cold");
    let mut traffic = vec![0u8; 16 << 20];
    for (name, version) in versions
        .iter()
        .filter(|(name, _)| name.contains("untraced") || name.contains("learned"))
    {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched(
                || evict_caches(&mut traffic),
                |()| executor.block_on(version.run_to_end(&runtime)),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    assert!(
        executor.metrics().num_alive_tasks() < 10,
        "runs left {} tasks behind",
        executor.metrics().num_alive_tasks()
    );
}

/// Writes a byte in each cache line of `traffic`.
fn evict_caches(traffic: &mut [u8]) {
    for line in traffic.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(traffic);
}

criterion_group!(benches, whole_run);
criterion_main!(benches);
