//! The compile worker: the child side of [`Compiler`](super::Compiler), run as
//! `iota compile-worker --dir DIR`. It reads `DIR/input.wasm`, instruments it (or only validates
//! it), compiles it for the server's engine, writes `DIR/runnable.wasm` (when instrumented) and
//! `DIR/module.cwasm`, and prints a [`WorkerReport`] as JSON on stdout.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use iota_instrument::{CallTiming, FunctionEntry, IfInstrumented, Options, SymbolMap, UnwindExits};
use serde::{Deserialize, Serialize};
use wasmtime::Engine;

use crate::runtime::component::{Kind, Program};

/// The instrumented module, in the worker's directory.
pub const RUNNABLE: &str = "runnable.wasm";
/// The precompiled code, in the worker's directory.
pub const ARTIFACT: &str = "module.cwasm";
/// The upload, in the worker's directory.
pub const INPUT: &str = "input.wasm";
/// The upload's symbol map, if it came with one.
pub const SYMBOL_MAP: &str = "symbols.map";
/// Hook ids of functions to count though the cost model would time them, one a line.
pub const COUNT_ALSO: &str = "count_also.txt";

/// Scheduling priority of a worker: below the server's runs.
const NICE: i32 = 10;

/// Arguments of `iota compile-worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Directory holding `input.wasm`, where the outputs are written.
    #[arg(long)]
    pub dir: PathBuf,
    /// Only validate and name the functions; compile the input as it is.
    #[arg(long)]
    pub validate_only: bool,
    /// Time every call, instead of counting the calls of provably short functions.
    #[arg(long)]
    pub time_every_call: bool,
    /// The functions of `count_also.txt` count without a switch back to the hooks.
    #[arg(long)]
    pub no_learned_switch: bool,
    /// Address-space limit of this process, in MiB (0: none).
    #[arg(long, default_value_t = 0)]
    pub memory_limit_mb: u64,
}

/// Which stage refused an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Validation or instrumentation.
    Instrument,
    /// wasmtime's compiler.
    Compile,
}

/// What a worker reports on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerReport {
    /// The outputs are written.
    Compiled {
        /// Every defined function, by hook id.
        functions: Vec<FunctionEntry>,
        /// The input was already instrumented.
        passed_through: bool,
        /// `runnable.wasm` was written (else the input is what runs).
        instrumented: bool,
        /// Milliseconds instrumenting or validating.
        instrument_ms: f64,
        /// Milliseconds compiling.
        compile_ms: f64,
        /// A core module or a component.
        #[serde(default)]
        kind: Kind,
        /// What the instrumenter could not use (parts of a `name` section, DWARF), said once.
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// The input is refused.
    Refused {
        /// Where.
        stage: Stage,
        /// Why.
        message: String,
    },
}

/// Runs the worker; errors are the worker's own failures (I/O), not the module's.
///
/// # Errors
///
/// If the directory cannot be read or written.
pub fn run(args: &WorkerArgs) -> Result<()> {
    confine(args.memory_limit_mb);
    let wasm = std::fs::read(args.dir.join(INPUT)).context("reading the upload")?;
    let report = compile(args, &wasm)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Lowers this process's priority and caps the address space it may add to what it holds
/// now. Best effort: where the system refuses, the worker still runs (it is still bounded in
/// time and killed on abandon).
fn confine(memory_limit_mb: u64) {
    use rustix::process::{Resource, Rlimit, setpriority_process, setrlimit};
    if let Err(err) = setpriority_process(None, NICE) {
        eprintln!("warning: cannot lower the compile worker's priority: {err}");
    }
    if memory_limit_mb > 0 {
        // The allocator has reserved address space for its heaps before `main`, none of it
        // used yet: the limit counts from there.
        let bytes = memory_limit_mb
            .saturating_mul(1 << 20)
            .saturating_add(address_space().unwrap_or(0));
        let limit = Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        };
        if let Err(err) = setrlimit(Resource::As, limit) {
            eprintln!("warning: cannot limit the compile worker's memory: {err}");
        }
    }
}

/// This process's address space in bytes (`VmSize`), where `/proc` tells it.
fn address_space() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

fn compile(args: &WorkerArgs, wasm: &[u8]) -> Result<WorkerReport> {
    let clock = Instant::now();
    let mut options = Options::new();
    // In this host nothing outside a module can throw into it: its imports are WASI, the hooks,
    // the Observe API or functions that trap, and its tables hold only its own functions and
    // those. So only a module that throws itself needs the handlers that exit on unwind.
    options
        .if_instrumented(IfInstrumented::PassThrough)
        .unwind_exits(UnwindExits::IfModuleUsesExceptions)
        // The host takes the counters from one call as `_start` returns (see
        // `runtime::read_counters`) rather than reading them global by global.
        .report_counts(true);
    if args.time_every_call {
        options.call_timing(CallTiming::EveryCall);
    }
    if let Ok(text) = std::fs::read_to_string(args.dir.join(COUNT_ALSO)) {
        options
            .count_also(text.lines().filter_map(|line| line.trim().parse().ok()))
            .count_also_switch(!args.no_learned_switch);
    }
    if let Ok(text) = std::fs::read_to_string(args.dir.join(SYMBOL_MAP)) {
        match SymbolMap::parse(&text) {
            Ok(map) => {
                options.symbol_map(map);
            }
            Err(err) => {
                return Ok(WorkerReport::Refused {
                    stage: Stage::Instrument,
                    message: err.to_string(),
                });
            }
        }
    }
    let out = match iota_instrument::instrument(wasm, &options) {
        Ok(out) => out,
        Err(err) => {
            return Ok(WorkerReport::Refused {
                stage: Stage::Instrument,
                message: err.to_string(),
            });
        }
    };
    let instrumented = !args.validate_only && !out.passed_through;
    let runnable: &[u8] = if instrumented { &out.wasm } else { wasm };
    let instrument_ms = clock.elapsed().as_secs_f64() * 1e3;

    let clock = Instant::now();
    let engine = Engine::new(&crate::runtime::engine_config())?;
    let program = match Program::new(&engine, runnable) {
        Ok(program) => program,
        Err(err) => {
            return Ok(WorkerReport::Refused {
                stage: Stage::Compile,
                message: format!("{err:#}"),
            });
        }
    };
    let artifact = program.serialize()?;
    let compile_ms = clock.elapsed().as_secs_f64() * 1e3;
    if instrumented {
        std::fs::write(args.dir.join(RUNNABLE), runnable).context("writing the module")?;
    }
    std::fs::write(args.dir.join(ARTIFACT), artifact).context("writing the compiled code")?;
    Ok(WorkerReport::Compiled {
        functions: out.functions,
        passed_through: out.passed_through,
        instrumented,
        instrument_ms,
        compile_ms,
        kind: program.kind(),
        warnings: out.warnings.iter().map(ToString::to_string).collect(),
    })
}
