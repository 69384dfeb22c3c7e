//! Running WASI 0.2 command components in wasmtime with the hook interface linked.

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::hooks::{Event, Recorded};
use crate::wasi::{Exit, Outcome};

pub struct Guest {
    wasi: WasiCtx,
    table: ResourceTable,
    pub recorded: Recorded,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Defines the component hook interface in `linker`, recording into the store's [`Recorded`].
pub fn link_component_hooks(linker: &mut Linker<Guest>) {
    let mut hooks = linker.instance(iota_instrument::HOOK_MODULE).unwrap();
    let record = |event: fn(u32) -> Event| {
        move |mut store: StoreContextMut<'_, Guest>, (arg,): (u32,)| {
            store.data_mut().recorded.events.push(event(arg));
            Ok(())
        }
    };
    hooks
        .func_wrap(iota_instrument::ENTER, record(Event::Enter))
        .unwrap();
    hooks
        .func_wrap(iota_instrument::EXIT, record(Event::Exit))
        .unwrap();
    hooks
        .func_wrap(iota_instrument::MEMORY_GROW, record(Event::MemoryGrow))
        .unwrap();
}

/// A store for a component with `stdin`, capturing stdout.
pub fn store(engine: &Engine, args: &[&str], stdin: &[u8]) -> (Store<Guest>, MemoryOutputPipe) {
    let stdout = MemoryOutputPipe::new(1 << 20);
    let wasi = WasiCtx::builder()
        .stdin(MemoryInputPipe::new(stdin.to_vec()))
        .stdout(stdout.clone())
        .args(args)
        .build();
    let store = Store::new(
        engine,
        Guest {
            wasi,
            table: ResourceTable::new(),
            recorded: Recorded::default(),
        },
    );
    (store, stdout)
}

/// A linker with WASI 0.2 and the hooks.
pub fn linker(engine: &Engine) -> Linker<Guest> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    link_component_hooks(&mut linker);
    linker
}

/// Runs a command component's `wasi:cli/run` with `args` and `stdin`, recording hook calls.
pub fn run_component(engine: &Engine, wasm: &[u8], args: &[&str], stdin: &[u8]) -> Outcome {
    let component = Component::new(engine, wasm).expect("component compiles");
    let (mut store, stdout) = store(engine, args, stdin);
    let result = Command::instantiate(&mut store, &component, &linker(engine))
        .and_then(|command| command.wasi_cli_run().call_run(&mut store));
    let exit = match result {
        Ok(Ok(())) => Exit::Code(0),
        Ok(Err(())) => Exit::Code(1),
        Err(e) => Exit::of_error(&e),
    };
    Outcome {
        stdout: stdout.contents().to_vec(),
        exit,
        events: std::mem::take(&mut store.data_mut().recorded.events),
        // A component's functions are all timed: nothing counts.
        counters: Vec::new(),
    }
}
