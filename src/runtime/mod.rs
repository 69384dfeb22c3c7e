//! wasmtime: one engine for all modules, a linker with WASI and the hooks, a fresh store per run.
//!
//! A run is async: WASI calls that wait (a sleep, a read of stdin) are futures, and compute
//! yields to the executor at every epoch tick. So a run ends at its deadline, or when it is
//! cancelled, whatever the guest is doing: the run's future is dropped, which unwinds the guest,
//! and the store is still there to read its trace from.

pub mod component;
pub mod entry;
pub mod http;
pub mod limiter;
pub mod observe;
pub mod stdio;
pub mod wasi;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bytes::Bytes;
use iota_instrument as abi;
use wasmtime::{
    Caller, Config, Enabled, Engine, Extern, Instance, InstanceAllocationStrategy, InstancePre,
    Linker, Module, ModuleExport, PoolingAllocationConfig, Store, Trap, Val, WasmBacktrace,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::AsyncStdinStream;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::budget::MemoryBudget;
use crate::config::ServeConfig;
use crate::trace::recorder::Recorder;
use crate::trace::{Cancel, Ending};
use component::{ComponentState, Prepared};
use entry::Call;
use limiter::{BudgetLimiter, LimitExceeded};
use stdio::CapturedOutput;

/// How often the epoch advances: how often a computing guest yields, and so the resolution of
/// the run timeout and of cancellation.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a run's store holds.
pub struct RunState {
    wasi: WasiP1Ctx,
    /// The hooks' event log.
    pub recorder: Recorder,
    limiter: BudgetLimiter,
}

/// Limits applied to every run.
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Memory a run may make the server hold: memories, tables and host buffers together.
    pub memory: usize,
    /// Largest stdout kept.
    pub stdout: usize,
    /// Largest stderr kept.
    pub stderr: usize,
    /// Events logged per run.
    pub max_events: usize,
    /// Runs executing at once (sizes the instance pool).
    pub concurrency: usize,
    /// WASI calls may be timed as host-call spans (modules may still opt out).
    pub host_spans: bool,
}

impl RunLimits {
    /// The limits of `config`.
    pub fn from_config(config: &ServeConfig) -> Self {
        RunLimits {
            timeout: Duration::from_millis(config.run_timeout_ms),
            memory: config.memory_limit_mb << 20,
            stdout: config.max_stdout,
            stderr: config.max_stderr,
            max_events: config.max_events,
            concurrency: config.max_concurrent_runs,
            host_spans: config.host_spans,
        }
    }
}

/// The engine and linkers shared by every module and run.
pub struct Runtime {
    engine: Engine,
    /// WASI with every call timed as a host call.
    traced: Linker<RunState>,
    /// WASI as it is.
    plain: Linker<RunState>,
    /// Components: WASI 0.2, `wasi:http` and the hook interface.
    components: wasmtime::component::Linker<ComponentState>,
    limits: RunLimits,
}

/// What one run executes.
pub struct Invocation<'a> {
    /// The linked module or component.
    pub pre: &'a Prepared,
    /// `argv[0]`: the module's name.
    pub program: &'a str,
    /// `argv[1..]`.
    pub args: &'a [String],
    /// What to call.
    pub call: &'a Call,
    /// The guest's stdin.
    pub stdin: AsyncStdinStream,
    /// Hook ids the recorder accepts are below this.
    pub functions: usize,
    /// The module was linked with WASI calls timed (see [`Runtime::prepare`]).
    pub host_spans: bool,
    /// Log calls for spans (a sampled run); else keep the per-function totals only.
    pub record_calls: bool,
    /// The module's call counters (functions counted, not timed), by hook id.
    pub counters: &'a [(u32, ModuleExport)],
    /// Switches of learned functions to time in this run, as when first watched (an audit;
    /// see [`crate::learning`]).
    pub switched: &'a [(u32, ModuleExport)],
    /// Calls shorter than this count in the aggregates only.
    pub min_span_ns: u64,
    /// For an HTTP handler: the request.
    pub http: Option<axum::http::Request<http::LimitedBody>>,
    /// Authorities the guest may send HTTP requests to (components only).
    pub outgoing_http: &'a [String],
}

/// A module's call counters, by hook id.
#[derive(Default)]
pub struct Counters {
    /// Every counted function's counter.
    pub counted: Vec<(u32, ModuleExport)>,
    /// The same globals, for the functions counted only because runs showed their calls short
    /// ([`iota_instrument::Timing::Learned`]): set negative, they time the function again.
    pub switches: Vec<(u32, ModuleExport)>,
}

/// The result of one run.
pub struct RunOutcome {
    /// Everything the guest wrote to stdout (up to the cap).
    pub stdout: Bytes,
    /// stderr, capped.
    pub stderr: Bytes,
    /// How it ended.
    pub ending: Ending,
    /// The hooks' log.
    pub recorder: Recorder,
    /// Wall-clock time when the run started.
    pub started: SystemTime,
    /// Nanoseconds from start to end.
    pub run_ns: u64,
    /// Some of stdout was dropped (its cap or the memory limit).
    pub stdout_truncated: bool,
    /// Peak bytes the run held: memories, tables and host buffers.
    pub memory_bytes: usize,
    /// What an HTTP handler answered.
    pub response: Option<http::HandlerResponse>,
}

/// The engine settings every compiled module must share: the WebAssembly proposals the server
/// runs (exceptions, tail calls, function references, GC, multi-memory, memory64, SIMD, relaxed
/// SIMD, extended constants, wide arithmetic) and epoch interruption.
pub fn engine_config() -> Config {
    let mut config = proposals();
    config.epoch_interruption(true);
    // Component runs call their exports one at a time (no `run_concurrent`); without the
    // concurrent machinery a component's call of a host function (a hook, a WASI 0.2 call)
    // creates no host task in the store's tables.
    config.concurrency_support(false);
    config
}

/// The WebAssembly proposals the server runs: exceptions, tail calls, function references, GC,
/// multi-memory, memory64, SIMD (relaxed too), extended constants, wide arithmetic.
pub fn proposals() -> Config {
    let mut config = Config::new();
    config
        .wasm_exceptions(true)
        .wasm_tail_call(true)
        .wasm_function_references(true)
        .wasm_gc(true)
        .wasm_multi_memory(true)
        .wasm_memory64(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(true)
        .wasm_extended_const(true)
        .wasm_wide_arithmetic(true);
    config
}

impl Runtime {
    /// Builds the engine (see [`engine_config`]), the linker (async WASI preview 1 and the
    /// hooks), and starts the epoch ticker.
    ///
    /// # Errors
    ///
    /// If wasmtime rejects the configuration.
    pub fn new(limits: RunLimits) -> Result<Arc<Self>> {
        let mut config = engine_config();
        // Instances come from a pre-reserved pool (fast to create and reset) when the machine
        // lets us reserve it; otherwise they are allocated on demand.
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(&limits)));
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(err) => {
                tracing::warn!("instance pool unavailable, allocating on demand: {err:#}");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&config)?
            }
        };
        let mut traced = Linker::new(&engine);
        wasi::add_traced_wasi(&mut traced)?;
        let mut plain = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut plain, |s: &mut RunState| &mut s.wasi)?;
        for linker in [&mut traced, &mut plain] {
            link_hooks(linker, |s: &mut RunState| &mut s.recorder)?;
            observe::add_observe_api(linker)?;
        }
        let components = component::linker(&engine)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("iota-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(Runtime {
            engine,
            traced,
            plain,
            components,
            limits,
        }))
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits of every run.
    pub fn limits(&self) -> &RunLimits {
        &self.limits
    }

    /// Whether WASI calls may be timed as host-call spans.
    pub fn host_spans(&self) -> bool {
        self.limits.host_spans
    }

    /// The counters of `module`'s counted functions, and the switches of its learned ones.
    pub fn counters(module: &Module) -> Counters {
        let by_prefix = |prefix: &str| -> Vec<(u32, ModuleExport)> {
            module
                .exports()
                .filter_map(|export| {
                    let id = export.name().strip_prefix(prefix)?.parse().ok()?;
                    Some((id, module.get_export_index(export.name())?))
                })
                .collect()
        };
        Counters {
            counted: by_prefix(abi::COUNTER_EXPORT_PREFIX),
            switches: by_prefix(abi::SWITCH_EXPORT_PREFIX),
        }
    }

    /// Links `module` once for all its runs: with every WASI call timed as a host call when
    /// `host_spans`. With `trap_unknown_imports`, imports that neither WASI, the hooks nor the
    /// Observe API provide are defined as functions that trap when called.
    ///
    /// # Errors
    ///
    /// Names the first import that cannot be satisfied.
    pub fn prepare(
        &self,
        module: &Module,
        trap_unknown_imports: bool,
        host_spans: bool,
    ) -> Result<InstancePre<RunState>> {
        let linker = if host_spans {
            &self.traced
        } else {
            &self.plain
        };
        if trap_unknown_imports {
            let mut linker = linker.clone();
            linker.define_unknown_imports_as_traps(module)?;
            return Ok(linker.instantiate_pre(module)?);
        }
        Ok(linker.instantiate_pre(module)?)
    }

    /// The event log of a run of `invocation` with `host_functions` host functions timed,
    /// within `budget`.
    fn recorder(
        &self,
        invocation: &Invocation<'_>,
        host_functions: usize,
        budget: &Arc<MemoryBudget>,
    ) -> Recorder {
        let mut recorder = Recorder::with_budget(
            invocation.functions,
            host_functions,
            if invocation.record_calls {
                self.limits.max_events
            } else {
                0
            },
            invocation.min_span_ns,
            budget.clone(),
        );
        recorder.expect_reports(invocation.counters.len());
        recorder
    }

    /// A fresh store for one run holding `state`: its memory and tables within the budget of
    /// the limiter `limiter` finds in it, and yielding to the executor at every epoch tick (so
    /// the run's deadline and cancellation can end it).
    fn store<T: 'static>(&self, state: T, limiter: fn(&mut T) -> &mut BudgetLimiter) -> Store<T> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(move |s| limiter(s));
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// Runs `invocation` in a fresh store until it ends, its deadline passes, or `cancelled`
    /// resolves, whichever comes first. Frames left open are closed by the recorder.
    pub async fn run(
        &self,
        invocation: Invocation<'_>,
        cancelled: impl Future<Output = Cancel>,
    ) -> RunOutcome {
        let pre = match invocation.pre {
            Prepared::Module(pre) => pre,
            Prepared::Component(component) => {
                return self.run_component(component, invocation, cancelled).await;
            }
        };
        let budget = Arc::new(MemoryBudget::new(self.limits.memory));
        // The stdin path's buffers are held whatever the guest reads.
        budget.charge(stdio::STDIN_HELD);
        let stdout = CapturedOutput::new(self.limits.stdout, budget.clone());
        let stderr = CapturedOutput::new(self.limits.stderr, budget.clone());
        let mut argv = Vec::with_capacity(invocation.args.len() + 1);
        argv.push(invocation.program.to_string());
        argv.extend(invocation.args.iter().cloned());
        let host_functions = if invocation.host_spans {
            wasi::WASI_FUNCTIONS.len()
        } else {
            0
        };
        let recorder = self.recorder(&invocation, host_functions, &budget);
        let wasi = WasiCtxBuilder::new()
            .stdin(invocation.stdin)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&argv)
            .build_p1();
        let state = RunState {
            wasi,
            recorder,
            limiter: BudgetLimiter::new(budget.clone()),
        };
        let mut store = self.store(state, |s| &mut s.limiter);

        let started = SystemTime::now();
        store.data_mut().recorder.start();
        let mut instance = None;
        let ending = {
            let guest = call(
                &mut store,
                pre,
                invocation.call,
                invocation.switched,
                &mut instance,
            );
            tokio::select! {
                result = guest => result,
                () = tokio::time::sleep(self.limits.timeout) => Ending::Timeout,
                cancel = cancelled => Ending::Cancelled(cancel),
            }
        };
        if let Some(instance) = instance {
            read_counters(&mut store, instance, invocation.counters);
        }
        // The run ends on the recorder's clock, so no event can fall after it.
        let mut recorder = store.into_data().recorder;
        let run_ns = recorder.now();
        recorder.finish(run_ns);
        let (stdout, stdout_truncated) = stdout.contents();
        let (stderr, _) = stderr.contents();
        RunOutcome {
            stdout,
            stdout_truncated,
            stderr,
            ending,
            recorder,
            started,
            run_ns,
            memory_bytes: budget.used(),
            response: None,
        }
    }
}

/// Adds the calls the module counted to the recorder's totals: as it reported them when
/// `_start` returned, or else (a trap, an exit, another entry point) from its exported counter
/// globals.
fn read_counters(
    store: &mut Store<RunState>,
    instance: Instance,
    counters: &[(u32, ModuleExport)],
) {
    let recorder = &mut store.data_mut().recorder;
    recorder.expect_counted(counters.len());
    let reported = recorder.take_reported();
    // The report names the counters in the order of their exports.
    let complete = reported.len() == counters.len()
        && (reported.iter().zip(counters)).all(|((id, _), (counter, _))| id == counter);
    for (k, (id, export)) in counters.iter().enumerate() {
        let count = if complete {
            Some(reported[k].1)
        } else {
            match instance.get_module_export(&mut *store, export) {
                Some(Extern::Global(global)) => global.get(&mut *store).i64(),
                _ => None,
            }
        };
        if let Some(count) = count.filter(|c| *c > 0) {
            store.data_mut().recorder.count_calls(*id, count as u64);
        }
    }
}

/// Switches the learned functions `switches` name back to the enter and exit hooks for this
/// run. A function that was already counted (by the module's start function) stays counted,
/// so its count stays exact.
fn switch_to_hooks(
    store: &mut Store<RunState>,
    instance: Instance,
    switches: &[(u32, ModuleExport)],
) {
    for (_, export) in switches {
        if let Some(Extern::Global(global)) = instance.get_module_export(&mut *store, export)
            && global.get(&mut *store).i64() == Some(0)
        {
            // A mutable i64 of this store: setting it cannot fail.
            let _ = global.set(&mut *store, Val::I64(-1));
        }
    }
}

/// Instantiates the module, switches `switched` to the hooks and calls what the run asked
/// for; the instance, once made, is left in `made` (for its counters, however the call ends).
async fn call(
    store: &mut Store<RunState>,
    pre: &InstancePre<RunState>,
    call: &Call,
    switched: &[(u32, ModuleExport)],
    made: &mut Option<Instance>,
) -> Ending {
    let instance = match pre.instantiate_async(&mut *store).await {
        Ok(instance) => instance,
        Err(error) => return instantiation_ending(error),
    };
    *made = Some(instance);
    switch_to_hooks(store, instance, switched);
    let result = async {
        match call {
            Call::Start => {
                let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                start.call_async(&mut *store, ()).await
            }
            Call::Reactor {
                initialize,
                function,
            } => {
                if *initialize {
                    let init = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
                    init.call_async(&mut *store, ()).await?;
                }
                let function = instance.get_typed_func::<(), ()>(&mut *store, function)?;
                function.call_async(&mut *store, ()).await
            }
            // Entry points of components: a core module never has them.
            Call::Handle => wasmtime::bail!("a core module has no HTTP handler"),
        }
    }
    .await;
    match result {
        Ok(()) => Ending::Exit(0),
        Err(error) => guest_ending(error),
    }
}

/// Core instances budgeted per run slot: enough for components made of several core modules.
const COMPONENT_CORE_INSTANCES: u32 = 16;

/// Bytes of each pooled memory and table reset in place rather than returned to the kernel.
const KEEP_RESIDENT: usize = 4 << 20;

/// A pool for the runs that may execute at once, with room for modules as large as real ones
/// get (CPython, yosys): many functions, big tables, a few memories and tables each.
fn pool(limits: &RunLimits) -> PoolingAllocationConfig {
    // A run frees its slot before its permit, so `concurrency` slots suffice; the rest is
    // headroom for stores still being torn down by the allocator.
    let slots = (limits.concurrency as u32)
        .saturating_mul(2)
        .saturating_add(8);
    let mut pool = PoolingAllocationConfig::new();
    // A component holds several core instances (a Rust command: its program, wit-component's
    // shim and fixup, the hooks' gate and wrappers), and a few tables.
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(COMPONENT_CORE_INSTANCES))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(4))
        .total_stacks(slots)
        .max_memories_per_module(2)
        .max_tables_per_module(2)
        .max_memory_size(limits.memory)
        .table_elements(1 << 20)
        .max_core_instance_size(64 << 20)
        // Resetting a slot with memset (only the pages a run touched, where the kernel can
        // say which) instead of madvise spares the next run its page faults and the TLB
        // shootdowns that come with them.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);
    pool
}

/// How a run ended whose instantiation failed: the module's start function trapped or went
/// past the memory limit (the guest's doing), or the host could not provide an instance.
fn instantiation_ending(error: wasmtime::Error) -> Ending {
    if error.downcast_ref::<Trap>().is_some()
        || error.downcast_ref::<LimitExceeded>().is_some()
        || error.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
    {
        return guest_ending(error);
    }
    Ending::HostError(format!("{error:#}"))
}

/// How a run ended whose guest returned `error`: an exit, or a trap.
fn guest_ending(error: wasmtime::Error) -> Ending {
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Ending::Exit(exit.0);
    }
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| bt.to_string())
        .unwrap_or_default();
    let message = match error.downcast_ref::<Trap>() {
        // `Trap`'s text starts with "wasm trap: "; the API already says the guest trapped.
        Some(trap) => {
            let text = trap.to_string();
            text.strip_prefix("wasm trap: ")
                .unwrap_or(&text)
                .to_string()
        }
        // Errors raised by host functions for the guest (the memory limit, a WASI call it
        // misused) carry the backtrace as context.
        None => error.root_cause().to_string(),
    };
    Ending::Trap { message, backtrace }
}

/// Defines the hooks (current and legacy Observe names) in `linker`, recording into the
/// [`Recorder`] that `recorder` finds in the store's data.
///
/// # Errors
///
/// If the names are already defined in `linker`.
pub fn link_hooks<T: 'static>(
    linker: &mut Linker<T>,
    recorder: fn(&mut T) -> &mut Recorder,
) -> Result<()> {
    for (module, enter, exit, grow) in [
        (abi::HOOK_MODULE, abi::ENTER, abi::EXIT, abi::MEMORY_GROW),
        (
            abi::LEGACY_HOOK_MODULE,
            abi::LEGACY_ENTER,
            abi::LEGACY_EXIT,
            abi::LEGACY_MEMORY_GROW,
        ),
    ] {
        linker.func_wrap(module, enter, move |mut c: Caller<'_, T>, id: i32| {
            recorder(c.data_mut()).enter(id as u32)
        })?;
        linker.func_wrap(module, exit, move |mut c: Caller<'_, T>, id: i32| {
            recorder(c.data_mut()).exit(id as u32)
        })?;
        linker.func_wrap(module, grow, move |mut c: Caller<'_, T>, pages: i32| {
            recorder(c.data_mut()).memory_grow(pages as u32)
        })?;
    }
    const _: () = assert!(abi::COUNTS_PER_CALL == 7);
    linker.func_wrap(
        abi::COUNTS_MODULE,
        abi::COUNTS,
        move |mut c: Caller<'_, T>,
              i0: i32,
              n0: i64,
              i1: i32,
              n1: i64,
              i2: i32,
              n2: i64,
              i3: i32,
              n3: i64,
              i4: i32,
              n4: i64,
              i5: i32,
              n5: i64,
              i6: i32,
              n6: i64| {
            recorder(c.data_mut()).report_counts(&[
                (i0, n0),
                (i1, n1),
                (i2, n2),
                (i3, n3),
                (i4, n4),
                (i5, n5),
                (i6, n6),
            ]);
        },
    )?;
    Ok(())
}

/// A store's state for tests of the linkers.
#[cfg(test)]
fn test_state() -> RunState {
    let budget = Arc::new(MemoryBudget::new(usize::MAX));
    RunState {
        wasi: WasiCtxBuilder::new().build_p1(),
        recorder: Recorder::new(0, 16, 0),
        limiter: BudgetLimiter::new(budget),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart() {
        let exit = instantiation_ending(wasmtime_wasi::I32Exit(3).into());
        assert!(matches!(exit, Ending::Exit(3)));
        let trap = instantiation_ending(wasmtime::Error::from(Trap::UnreachableCodeReached));
        assert!(matches!(trap, Ending::Trap { .. }));
        let host = instantiation_ending(wasmtime::format_err!(
            "maximum concurrent limit of 12 for core instances reached"
        ));
        assert!(matches!(host, Ending::HostError(m) if m.contains("concurrent limit")));
    }
}
