//! Components: WASI 0.2 commands (`wasi:cli/run`) and HTTP handlers
//! (`wasi:http/incoming-handler`), run like core modules: a fresh store per run with the
//! run's memory budget, deadline and cancellation, and the hook interface
//! (`dylibso:observe/instrument`) recording into the same [`Recorder`] as a core module's hooks.
//!
//! Unlike a core module's WASI preview 1 calls, WASI 0.2 calls are not timed as host-call spans.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Module, Store, StoreContextMut};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::entry::EntryPoints;
use super::http::{self, OutgoingPolicy};
use super::limiter::BudgetLimiter;
use super::stdio::{self, CapturedOutput};
use super::{Invocation, RunOutcome, RunState, Runtime, guest_ending, instantiation_ending};
use crate::budget::MemoryBudget;
use crate::trace::recorder::Recorder;
use crate::trace::{Cancel, Ending};

/// What a component run's store holds.
pub struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    outgoing: OutgoingPolicy,
    /// The hooks' event log.
    pub recorder: Recorder,
    limiter: BudgetLimiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}

/// Whether an upload is a core module or a component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A core module (WASI preview 1).
    #[default]
    Module,
    /// A component (WASI 0.2).
    Component,
}

/// Compiled code of either kind.
pub enum Program {
    /// A core module.
    Module(Module),
    /// A component.
    Component(Component),
}

impl Program {
    /// Compiles `wasm`, a core module or a component.
    ///
    /// # Errors
    ///
    /// If wasmtime cannot compile it.
    pub fn new(engine: &Engine, wasm: &[u8]) -> Result<Self> {
        Ok(if iota_instrument::is_component(wasm) {
            Program::Component(Component::new(engine, wasm)?)
        } else {
            Program::Module(Module::new(engine, wasm)?)
        })
    }

    /// Loads precompiled code written by [`serialize`](Self::serialize) of this program.
    ///
    /// # Errors
    ///
    /// If the file cannot be read or was compiled for another engine.
    pub fn deserialize_file(engine: &Engine, path: &std::path::Path, kind: Kind) -> Result<Self> {
        // SAFETY: artifacts are produced by `serialize` in compile workers of this program, on
        // this server or on another sharing the store, and read from this server's data
        // directory, its cache, or the store; their names pin the engine's compatibility hash,
        // which wasmtime checks again. Whoever can write to the store can run native code here:
        // it is protected like the binary (SECURITY.md).
        #[allow(unsafe_code)]
        let program = unsafe {
            match kind {
                Kind::Module => Program::Module(Module::deserialize_file(engine, path)?),
                Kind::Component => Program::Component(Component::deserialize_file(engine, path)?),
            }
        };
        Ok(program)
    }

    /// Precompiled code for this engine.
    ///
    /// # Errors
    ///
    /// If wasmtime cannot serialize it.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        Ok(match self {
            Program::Module(module) => module.serialize()?,
            Program::Component(component) => component.serialize()?,
        })
    }

    /// Which kind it is.
    pub fn kind(&self) -> Kind {
        match self {
            Program::Module(_) => Kind::Module,
            Program::Component(_) => Kind::Component,
        }
    }
}

/// A module or component linked once for all its runs.
pub enum Prepared {
    /// A core module.
    Module(wasmtime::InstancePre<RunState>),
    /// A component.
    Component(PreparedComponent),
}

/// A component linked once for all its runs.
pub enum PreparedComponent {
    /// Exports `wasi:cli/run`.
    Command(CommandPre<ComponentState>),
    /// Exports `wasi:http/incoming-handler`.
    Http(ProxyPre<ComponentState>),
}

/// The linker of every component: WASI 0.2, `wasi:http` (outgoing requests as each module's
/// policy allows) and the hook interface.
pub(super) fn linker(engine: &Engine) -> Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let mut hooks = linker.instance(iota_instrument::HOOK_MODULE)?;
    hooks.func_wrap(
        iota_instrument::ENTER,
        |mut store: StoreContextMut<'_, ComponentState>, (id,): (u32,)| {
            store.data_mut().recorder.enter(id);
            Ok(())
        },
    )?;
    hooks.func_wrap(
        iota_instrument::EXIT,
        |mut store: StoreContextMut<'_, ComponentState>, (id,): (u32,)| {
            store.data_mut().recorder.exit(id);
            Ok(())
        },
    )?;
    hooks.func_wrap(
        iota_instrument::MEMORY_GROW,
        |mut store: StoreContextMut<'_, ComponentState>, (pages,): (u32,)| {
            store.data_mut().recorder.memory_grow(pages);
            Ok(())
        },
    )?;
    Ok(linker)
}

/// How a component is run, from its exports.
///
/// # Errors
///
/// If it exports neither `wasi:cli/run` nor `wasi:http/incoming-handler` (0.2): the message
/// lists its exports.
pub fn component_entry(engine: &Engine, component: &Component) -> Result<EntryPoints, String> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let has = |interface: &str| {
        exports
            .iter()
            .any(|name| name.starts_with(&format!("{interface}@0.2")))
    };
    if has("wasi:http/incoming-handler") {
        Ok(EntryPoints::HttpHandler)
    } else if has("wasi:cli/run") {
        Ok(EntryPoints::Command)
    } else {
        let exports = if exports.is_empty() {
            "none".to_string()
        } else {
            exports
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "component cannot be run: it exports neither `wasi:cli/run` (a command) nor \
             `wasi:http/incoming-handler` (an HTTP handler) of WASI 0.2; its exports: {exports}"
        ))
    }
}

impl Runtime {
    /// Links `component` once for all its runs. With `trap_unknown_imports`, imports that
    /// neither WASI 0.2, `wasi:http` nor the hooks provide are defined as functions that trap
    /// when called.
    ///
    /// # Errors
    ///
    /// Names the first import that cannot be satisfied, or says why the component cannot be
    /// run.
    pub fn prepare_component(
        &self,
        component: &Component,
        trap_unknown_imports: bool,
    ) -> Result<PreparedComponent> {
        let pre = if trap_unknown_imports {
            let mut linker = self.components.clone();
            linker.define_unknown_imports_as_traps(component)?;
            linker.instantiate_pre(component)?
        } else {
            self.components.instantiate_pre(component)?
        };
        match component_entry(&self.engine, component) {
            Ok(EntryPoints::HttpHandler) => Ok(PreparedComponent::Http(ProxyPre::new(pre)?)),
            Ok(_) => Ok(PreparedComponent::Command(CommandPre::new(pre)?)),
            Err(message) => bail!(message),
        }
    }

    /// Runs a component as [`Runtime::run`] runs a core module.
    pub(super) async fn run_component(
        &self,
        pre: &PreparedComponent,
        invocation: Invocation<'_>,
        cancelled: impl Future<Output = Cancel>,
    ) -> RunOutcome {
        let budget = Arc::new(MemoryBudget::new(self.limits.memory));
        budget.charge(stdio::STDIN_HELD);
        let stdout = CapturedOutput::new(self.limits.stdout, budget.clone());
        let stderr = CapturedOutput::new(self.limits.stderr, budget.clone());
        let mut argv = Vec::with_capacity(invocation.args.len() + 1);
        argv.push(invocation.program.to_string());
        argv.extend(invocation.args.iter().cloned());
        // WASI 0.2 calls are not timed.
        let recorder = self.recorder(&invocation, 0, &budget);
        let wasi = WasiCtxBuilder::new()
            .stdin(invocation.stdin)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&argv)
            // No sockets, as for core modules (WASI's default checks deny every address too);
            // HTTP requests go out only as the module's `OutgoingPolicy` allows.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = ComponentState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outgoing: OutgoingPolicy::new(invocation.outgoing_http.to_vec()),
            recorder,
            limiter: BudgetLimiter::new(budget.clone()),
        };
        let mut store = self.store(state, |s| &mut s.limiter);

        let started = SystemTime::now();
        store.data_mut().recorder.start();
        let mut response = None;
        let ending = {
            let guest = async {
                match (pre, invocation.http) {
                    (PreparedComponent::Command(pre), _) => run_command(&mut store, pre).await,
                    (PreparedComponent::Http(pre), Some(request)) => {
                        let (ending, collected) = http::handle(
                            &mut store,
                            pre,
                            request,
                            self.limits.stdout,
                            budget.clone(),
                        )
                        .await;
                        response = collected;
                        ending
                    }
                    (PreparedComponent::Http(_), None) => {
                        Ending::HostError("an HTTP handler needs a request".into())
                    }
                }
            };
            tokio::select! {
                result = guest => result,
                () = tokio::time::sleep(self.limits.timeout) => Ending::Timeout,
                cancel = cancelled => Ending::Cancelled(cancel),
            }
        };
        // The store's resources go first: a response body the guest never finished ends.
        let ComponentState { mut recorder, .. } = store.into_data();
        let run_ns = recorder.now();
        recorder.finish(run_ns);
        let (stdout, stdout_truncated) = stdout.contents();
        let (stderr, _) = stderr.contents();
        let response = match response {
            Some(pending) => Some(pending.finish().await),
            None => None,
        };
        RunOutcome {
            stdout,
            stdout_truncated,
            stderr,
            ending,
            recorder,
            started,
            run_ns,
            memory_bytes: budget.used(),
            response,
        }
    }
}

/// Instantiates a command and calls `wasi:cli/run`'s `run`.
async fn run_command(
    store: &mut Store<ComponentState>,
    pre: &CommandPre<ComponentState>,
) -> Ending {
    let command = match pre.instantiate_async(&mut *store).await {
        Ok(command) => command,
        Err(error) => return instantiation_ending(error),
    };
    match command.wasi_cli_run().call_run(&mut *store).await {
        Ok(Ok(())) => Ending::Exit(0),
        // WASI 0.2's `run` says only that it failed: exit status 1.
        Ok(Err(())) => Ending::Exit(1),
        Err(error) => guest_ending(error),
    }
}
