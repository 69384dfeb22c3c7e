//! Running WASI preview1 commands in wasmtime with the hooks linked.

use wasmtime::{Engine, Linker, Module, Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use crate::hooks::{Event, HasRecorded, Recorded, link_hooks};

struct Guest {
    wasi: WasiP1Ctx,
    recorded: Recorded,
}

impl HasRecorded for Guest {
    fn recorded(&mut self) -> &mut Recorded {
        &mut self.recorded
    }
}

/// How a WASI command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Trap(Trap),
}

impl Exit {
    /// How a run that failed with `error` ended: its `proc_exit` code, or its trap.
    pub fn of_error(error: &wasmtime::Error) -> Exit {
        match (
            error.downcast_ref::<wasmtime_wasi::I32Exit>(),
            error.downcast_ref::<Trap>(),
        ) {
            (Some(exit), _) => Exit::Code(exit.0),
            (_, Some(trap)) => Exit::Trap(*trap),
            _ => panic!("unexpected error: {error:?}"),
        }
    }
}

pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit: Exit,
    pub events: Vec<Event>,
    /// The module's call counters after the run (counted functions): hook id and calls.
    pub counters: Vec<(u32, u64)>,
}

/// Runs a WASI command's `_start` with `args` and `stdin`, recording hook calls. Imports that
/// neither WASI nor the hooks provide trap if called.
pub fn run_command(engine: &Engine, wasm: &[u8], args: &[&str], stdin: &[u8]) -> Outcome {
    let module = Module::new(engine, wasm).expect("module compiles");
    run_module(engine, &module, args, stdin)
}

/// [`run_command`] for a module already compiled.
#[allow(dead_code)] // not every test binary that includes this file uses it
pub fn run_module(engine: &Engine, module: &Module, args: &[&str], stdin: &[u8]) -> Outcome {
    let stdout = MemoryOutputPipe::new(1 << 20);
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(stdin.to_vec()))
        .stdout(stdout.clone())
        .args(args)
        .build_p1();
    let mut store = Store::new(
        engine,
        Guest {
            wasi,
            recorded: Recorded::default(),
        },
    );
    let mut linker: Linker<Guest> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |g| &mut g.wasi).unwrap();
    link_hooks(&mut linker);
    linker.define_unknown_imports_as_traps(module).unwrap();
    let mut instance = None;
    let result = linker
        .instantiate(&mut store, module)
        .inspect(|i| instance = Some(*i))
        .and_then(|i| i.get_typed_func::<(), ()>(&mut store, "_start"))
        .and_then(|start| start.call(&mut store, ()));
    let counters = instance.map_or_else(Vec::new, |instance| {
        let globals: Vec<(u32, wasmtime::Global)> = instance
            .exports(&mut store)
            .filter_map(|e| {
                let id = e
                    .name()
                    .strip_prefix(iota_instrument::COUNTER_EXPORT_PREFIX)?
                    .parse()
                    .ok()?;
                Some((id, e.into_global()?))
            })
            .collect();
        globals
            .into_iter()
            .map(|(id, g)| (id, g.get(&mut store).unwrap_i64() as u64))
            .collect()
    });
    let exit = match result {
        Ok(()) => Exit::Code(0),
        Err(e) => Exit::of_error(&e),
    };
    Outcome {
        stdout: stdout.contents().to_vec(),
        exit,
        events: std::mem::take(&mut store.data_mut().recorded.events),
        counters,
    }
}
