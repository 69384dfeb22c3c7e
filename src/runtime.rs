//! wasmtime: one engine for all modules, a linker with WASI and the hooks, a fresh store per run.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bytes::Bytes;
use iota_instrument as abi;
use wasmtime::{
    Caller, Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap, WasmBacktrace,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use crate::config::ServeConfig;
use crate::trace::Ending;
use crate::trace::recorder::Recorder;

/// How often the epoch advances: the resolution of the run timeout.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a run's store holds.
pub struct RunState {
    wasi: WasiP1Ctx,
    /// The hooks' event log.
    pub recorder: Recorder,
    limits: StoreLimits,
}

/// Limits applied to every run.
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Linear memory limit in bytes.
    pub memory: usize,
    /// Largest stdout kept.
    pub stdout: usize,
    /// Largest stderr kept.
    pub stderr: usize,
    /// Events logged per run.
    pub max_events: usize,
    /// Runs executing at once (sizes the instance pool).
    pub concurrency: usize,
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
        }
    }
}

/// The engine and linker shared by every module and run.
pub struct Runtime {
    engine: Engine,
    linker: Linker<RunState>,
    limits: RunLimits,
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
    /// The guest filled the stdout cap.
    pub stdout_full: bool,
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
    /// Builds the engine (exceptions, tail calls, SIMD, multi-memory, memory64 and GC on; epoch
    /// interruption for timeouts) and starts the epoch ticker.
    ///
    /// # Errors
    ///
    /// If wasmtime rejects the configuration.
    pub fn new(limits: RunLimits) -> Result<Arc<Self>> {
        let mut config = proposals();
        config.epoch_interruption(true);
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
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut RunState| &mut s.wasi)?;
        link_hooks(&mut linker, |s: &mut RunState| &mut s.recorder)?;
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
            linker,
            limits,
        }))
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Links `module` once for all its runs. With `trap_unknown_imports`, imports that neither
    /// WASI nor the hooks provide are defined as functions that trap when called.
    ///
    /// # Errors
    ///
    /// Names the first import that cannot be satisfied.
    pub fn prepare(
        &self,
        module: &Module,
        trap_unknown_imports: bool,
    ) -> Result<InstancePre<RunState>> {
        if trap_unknown_imports {
            let mut linker = self.linker.clone();
            linker.define_unknown_imports_as_traps(module)?;
            return Ok(linker.instantiate_pre(module)?);
        }
        Ok(self.linker.instantiate_pre(module)?)
    }

    /// Runs a WASI command's `_start` with `args` (argv[1..]) and `stdin`, in a fresh store.
    /// `functions` bounds the hook ids the recorder accepts; calls shorter than `min_span_ns`
    /// count in the aggregates only.
    pub fn run(
        &self,
        pre: &InstancePre<RunState>,
        name: &str,
        args: &[String],
        stdin: Bytes,
        functions: usize,
        min_span_ns: u64,
    ) -> RunOutcome {
        let stdout = MemoryOutputPipe::new(self.limits.stdout);
        let stderr = MemoryOutputPipe::new(self.limits.stderr);
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(name.to_string());
        argv.extend(args.iter().cloned());
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&argv)
            .build_p1();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory)
            .trap_on_grow_failure(true)
            .build();
        let state = RunState {
            wasi,
            recorder: Recorder::new(functions, self.limits.max_events, min_span_ns),
            limits,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = self
            .limits
            .timeout
            .as_nanos()
            .div_ceil(EPOCH_TICK.as_nanos()) as u64
            + 1;
        store.set_epoch_deadline(ticks);

        let started = SystemTime::now();
        store.data_mut().recorder.start();
        let result = pre
            .instantiate(&mut store)
            .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));
        let ending = ending(result);
        // The run ends on the recorder's clock, so no event can fall after it.
        let mut recorder = store.into_data().recorder;
        let run_ns = recorder.now();
        recorder.finish(run_ns);
        let stdout = stdout.contents();
        RunOutcome {
            stdout_full: stdout.len() >= self.limits.stdout,
            stdout,
            stderr: stderr.contents(),
            ending,
            recorder,
            started,
            run_ns,
        }
    }
}

/// Bytes of each pooled memory and table reset in place rather than returned to the kernel.
const KEEP_RESIDENT: usize = 4 << 20;

/// A pool for the runs that may execute at once, with room for modules as large as real ones
/// get (CPython, yosys): many functions, big tables, a few memories and tables each.
fn pool(limits: &RunLimits) -> PoolingAllocationConfig {
    // Instances may outlive their run briefly (drops race new runs): keep slack.
    let slots = (limits.concurrency as u32)
        .saturating_mul(2)
        .saturating_add(8);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(slots)
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(2))
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

fn ending(result: wasmtime::Result<()>) -> Ending {
    let error = match result {
        Ok(()) => return Ending::Exit(0),
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Ending::Exit(exit.0);
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Ending::Timeout;
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
        // Host errors (the memory limit, a WASI failure) carry the backtrace as context.
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
    Ok(())
}
