//! Shared test support: a wasmtime engine with every proposal iota supports, and host
//! hooks that record the enter/exit sequence and check that it nests.

use wasmtime::{Caller, Config, Engine, Linker};

/// An engine with the proposals real modules use, metering fuel so generated loops end.
pub fn engine() -> Engine {
    let mut config = config();
    config.consume_fuel(true);
    Engine::new(&config).expect("engine configuration is valid")
}

/// The server's proposals, plus those only the instrumenter's tests need: threads with shared
/// memory, custom page sizes. (Cranelift in wasmtime 48 cannot run legacy exception handling;
/// that rewrite is validated only.)
pub fn config() -> Config {
    let mut config = iota::runtime::proposals();
    config
        .wasm_threads(true)
        .shared_memory(true)
        .wasm_custom_page_sizes(true);
    config
}

/// One hook call as the guest made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Enter(u32),
    Exit(u32),
    MemoryGrow(u32),
}

/// What a store records: every hook call, in order.
#[derive(Default)]
pub struct Recorded {
    pub events: Vec<Event>,
}

pub trait HasRecorded {
    fn recorded(&mut self) -> &mut Recorded;
}

impl HasRecorded for Recorded {
    fn recorded(&mut self) -> &mut Recorded {
        self
    }
}

/// Defines the three hooks in `linker`, recording into the store's [`Recorded`].
pub fn link_hooks<T: HasRecorded + 'static>(linker: &mut Linker<T>) {
    let hooks = [
        (iota_instrument::ENTER, Event::Enter as fn(u32) -> Event),
        (iota_instrument::EXIT, Event::Exit),
        (iota_instrument::MEMORY_GROW, Event::MemoryGrow),
    ];
    for (name, event) in hooks {
        linker
            .func_wrap(
                iota_instrument::HOOK_MODULE,
                name,
                move |mut c: Caller<'_, T>, arg: i32| {
                    c.data_mut().recorded().events.push(event(arg as u32))
                },
            )
            .unwrap();
    }
}

/// Checks that `events` nest properly: every exit matches the innermost open enter.
/// With `complete`, nothing may be left open at the end. Returns the number of calls.
pub fn check_nesting(events: &[Event], complete: bool) -> Result<usize, String> {
    let mut stack = Vec::new();
    let mut calls = 0;
    for (i, event) in events.iter().enumerate() {
        match *event {
            Event::Enter(id) => {
                stack.push(id);
                calls += 1;
            }
            Event::Exit(id) => match stack.pop() {
                Some(open) if open == id => {}
                other => {
                    return Err(format!(
                        "event {i}: exit({id}) but innermost open is {other:?}"
                    ));
                }
            },
            Event::MemoryGrow(_) => {}
        }
    }
    if complete && !stack.is_empty() {
        return Err(format!("{} frames never exited: {stack:?}", stack.len()));
    }
    Ok(calls)
}
