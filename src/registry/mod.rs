//! The module registry: names mapped to loaded module versions, kept in step with the module
//! store ([`crate::store`]), whichever it is.
//!
//! An upload is instrumented and compiled by a worker process ([`crate::compile`]), checked
//! (linkable, runnable), its content written to the store, and only then made the name's
//! version, by a compare-and-swap of the name's pointer. Runs never touch the store: they take
//! the loaded version from memory and hold it until they end. A maintenance task reads the
//! store's pointers every `--store-poll-ms` and loads what other servers changed (their
//! precompiled code when the store has it for this engine; otherwise it compiles and stores
//! it), publishes this server's lease, checks its recent uploads, collects unreferenced
//! content and trims the local cache. When the store fails, runs go on with what is loaded and
//! uploads and deletes are refused until it answers again.

mod sync;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use iota_instrument::FunctionEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::ModuleExport;

use crate::compile::{Admission, CompileError, Compiled, Compiler, Stage};
use crate::learning::{LearnSettings, Learning};
use crate::runtime::component::{Kind, Prepared as Linked, Program, component_entry};
use crate::runtime::entry::EntryPoints;
use crate::runtime::{Counters, Runtime};
use crate::store::cache::Cache;
use crate::store::collect::Policy;
use crate::store::local::write_atomic;
use crate::store::{ContentKey, Expect, Pointers, Store, StoreError, Swap, Tag, dir_bytes};
use crate::trace::SpanOverrides;
use crate::trace::names::SourceLocation;

/// What the registry knows about a stored module.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Registry name.
    pub name: String,
    /// SHA-256 of the uploaded bytes.
    pub sha256: String,
    /// SHA-256 of the module that runs (instrumented, unless uploaded with `instrument=false`).
    pub runnable_sha256: String,
    /// Size of the upload.
    pub original_size: usize,
    /// Size of the module that runs.
    pub runnable_size: usize,
    /// Defined functions.
    pub functions: usize,
    /// Functions reporting enter/exit, or counting their calls.
    pub traced_functions: usize,
    /// Of those, functions whose calls are only counted, not timed (provably short).
    #[serde(default)]
    pub counted_functions: usize,
    /// `counted` (provably short functions count their calls, the rest are timed: the
    /// default) or `every_call` (every call timed).
    #[serde(default = "every_call")]
    pub timing: String,
    /// Functions counted because earlier runs showed their calls short (see
    /// [`crate::learning`]).
    #[serde(default)]
    pub learned_functions: usize,
    /// 0 as uploaded; 1 once re-instrumented with what its runs taught.
    #[serde(default)]
    pub generation: u32,
    /// Learn from its runs which calls to count (unless the server does not).
    #[serde(default = "yes")]
    pub learn: bool,
    /// How the module reports calls: `iota` (instrumented here), `preinstrumented` (it already
    /// called the hooks), or `none` (uploaded with `instrument=false`).
    pub tracing: Tracing,
    /// How it is run: a WASI command, or a reactor and the functions a run may call.
    #[serde(default = "command")]
    pub entry: EntryPoints,
    /// Imports no host provides are linked as functions that trap if called.
    pub trap_unknown_imports: bool,
    /// WASI calls are timed as host-call spans (unless the server turns them off for all).
    #[serde(default = "yes")]
    pub host_spans: bool,
    /// Upload time, seconds since the Unix epoch.
    pub uploaded_at: u64,
    /// Span limits chosen at upload (the server's apply to what is unset).
    #[serde(default, skip_serializing_if = "SpanOverrides::is_empty")]
    pub spans: SpanOverrides,
    /// A core module or a component.
    #[serde(default)]
    pub kind: Kind,
    /// Authorities a component may send HTTP requests to (`*`: any); none when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outgoing_http: Vec<String>,
    /// What instrumenting it could not use (parts of a `name` section, DWARF that matches no
    /// function): the module runs, with less readable traces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn command() -> EntryPoints {
    EntryPoints::Command
}

fn yes() -> bool {
    true
}

fn every_call() -> String {
    "every_call".into()
}

/// How a module's function calls reach the recorder.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tracing {
    /// Instrumented at upload.
    Iota,
    /// Uploaded already instrumented (by `iota-instrument` or Observe SDK tools).
    Preinstrumented,
    /// Not instrumented: runs get only the request and run spans.
    None,
}

/// Options of an upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Instrument the module (default).
    pub instrument: bool,
    /// Link unknown imports as trapping functions instead of refusing the module.
    pub trap_unknown_imports: bool,
    /// Time WASI calls as host-call spans.
    pub host_spans: bool,
    /// Time every call of every function, rather than counting provably short ones.
    pub time_every_call: bool,
    /// Learn from the first runs which calls are short, and count those too.
    pub learn: bool,
    /// Span limits for this module's runs.
    pub spans: SpanOverrides,
    /// Authorities a component may send HTTP requests to (none by default; `*` for any).
    pub outgoing_http: Vec<String>,
}

/// A module ready to run.
pub struct LoadedModule {
    /// Its info.
    pub info: ModuleInfo,
    /// Linked once; each run instantiates it in a fresh store.
    pub pre: Linked,
    /// Function names indexed by hook id.
    pub names: Arc<[Option<String>]>,
    /// Functions' source locations indexed by hook id (from DWARF).
    pub locations: Arc<[Option<SourceLocation>]>,
    /// Its WASI calls are timed as host calls (the module asks for it and the server allows).
    pub host_spans: bool,
    /// The counters of its counted functions, and the switches of its learned ones.
    pub counters: Counters,
    /// A run of it has started in this process (the next is no cold start).
    pub warm: AtomicBool,
    /// Its runs start on the HTTP side while this is above 0: set by a short run, less one for
    /// each long one (see [`crate::runs::run`]).
    pub inline_credit: AtomicU8,
    /// What its runs showed, while it is learning which calls are short.
    pub learning: Option<Mutex<Learning>>,
}

impl LoadedModule {
    /// Where learning which calls are short stands for this version (see
    /// [`Learning::state`]): `learned` for a version made from what its predecessor learned
    /// that no longer learns (the server's learning turned off since), `off` where it does not
    /// learn.
    pub fn learning_state(&self) -> &'static str {
        match &self.learning {
            Some(learning) => lock(learning).state(),
            None if self.info.generation > 0 => "learned",
            None => "off",
        }
    }

    /// The switches to turn on for the run about to start: those of the learned functions it
    /// audits, each with a chance of one in the audit rate (see [`crate::learning`]).
    pub fn switches_for_next_run(&self) -> Vec<(u32, ModuleExport)> {
        let Some(learning) = &self.learning else {
            return Vec::new();
        };
        let switches = &self.counters.switches;
        if switches.is_empty() {
            return Vec::new();
        }
        let audited = lock(learning).audited_next_run(switches.len());
        audited.into_iter().map(|k| switches[k]).collect()
    }

    /// Adds a finished run (`audited`: some of its learned functions were switched to the
    /// hooks) to what the version learns; the hook ids to count from now on, once (see
    /// [`crate::learning`]).
    pub fn observe(
        &self,
        trace: &crate::trace::TraceRecord,
        audited: bool,
        min_span_ns: u64,
    ) -> Option<Vec<u32>> {
        let functions = trace.names().functions();
        // The module's own timed functions (not host calls or manual spans).
        let timed = trace
            .function_totals()
            .filter(|&(id, _)| id < functions && !trace.is_counted(id));
        lock(self.learning.as_ref()?).observe(timed, audited, min_span_ns)
    }
}

/// A program linked for its runs, with how it runs.
struct Link {
    pre: Linked,
    entry: EntryPoints,
    counters: Counters,
}

/// Where a version being installed comes from.
enum Origin<'a> {
    /// An upload of `sha256` with `options`.
    Upload {
        sha256: String,
        options: UploadOptions,
    },
    /// The version `from`, re-instrumented with what its runs taught.
    Learned { from: &'a LoadedModule },
}

impl Origin<'_> {
    fn options(&self) -> UploadOptions {
        match self {
            Origin::Upload { options, .. } => options.clone(),
            Origin::Learned { from } => UploadOptions {
                instrument: true,
                trap_unknown_imports: from.info.trap_unknown_imports,
                host_spans: from.info.host_spans,
                time_every_call: false,
                learn: false,
                spans: from.info.spans,
                outgoing_http: from.info.outgoing_http.clone(),
            },
        }
    }
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The module could not be instrumented (invalid wasm, a component...).
    #[error("{0}")]
    Instrument(String),
    /// wasmtime cannot compile it (a proposal this host does not enable, say).
    #[error("module does not compile: {0}")]
    Compile(String),
    /// An import is neither WASI nor a hook.
    #[error("{0} (upload with unknown_imports=trap to link such imports as functions that trap)")]
    Link(String),
    /// Neither a command nor a reactor.
    #[error("{0}")]
    NotRunnable(String),
    /// The compile worker ran out of time or memory.
    #[error(transparent)]
    TooCostly(CompileError),
    /// Too many uploads in progress.
    #[error(transparent)]
    Busy(CompileError),
    /// The module store failed or is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Storage or the worker failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<CompileError> for UploadError {
    fn from(error: CompileError) -> Self {
        match error {
            CompileError::Refused {
                stage: Stage::Instrument,
                message,
            } => UploadError::Instrument(message),
            CompileError::Refused {
                stage: Stage::Compile,
                message,
            } => UploadError::Compile(message),
            CompileError::TimedOut(_) | CompileError::OutOfMemory(_) => {
                UploadError::TooCostly(error)
            }
            CompileError::Busy(_) => UploadError::Busy(error),
            CompileError::Worker(_) => UploadError::Internal(error.into()),
        }
    }
}

/// Timings of an upload, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UploadTimings {
    /// Instrumenting.
    pub instrument_ms: f64,
    /// Compiling.
    pub compile_ms: f64,
    /// Linking, checking, writing to the store and switching the version.
    pub store_ms: f64,
}

/// How the registry keeps in step with its store.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The server's data directory: compile workers' scratch space and the local cache.
    pub data_dir: PathBuf,
    /// This server's `service.instance.id`, which names its lease in the store.
    pub instance: String,
    /// How often the store is read for changes.
    pub poll: Duration,
    /// Unreferenced content of a shared store is kept this long.
    pub grace: Duration,
    /// The longest one store request may take.
    pub request_timeout: Duration,
    /// Bytes of local copies of the store's content.
    pub cache_max_bytes: u64,
}

/// Uploads switched at most this many times in a row by other servers give up.
const SWAP_ATTEMPTS: usize = 16;

/// A name's loaded version and the tag of the pointer value it came from.
struct Current {
    module: Arc<LoadedModule>,
    /// `None` when the store did not say (the next poll loads it again).
    tag: Option<Tag>,
}

/// A name as this server last saw it: absent (`None`), or at a pointer tag.
type Seen = Option<Option<Tag>>;

/// An upload whose content is checked once no collection pass that began before its swap can
/// still be deleting.
struct Unverified {
    due: Instant,
    keys: Vec<ContentKey>,
}

/// A compiled version, linked and checked, with its names and function map written beside it.
struct Prepared {
    module: LoadedModule,
    names_file: PathBuf,
    functions_file: PathBuf,
}

/// Which version a switch replaces.
enum Replacing<'a> {
    /// Whatever the name holds when it switches (an upload).
    Current,
    /// Only the version with this tag (a version learned from it).
    Only(&'a Tag),
}

/// A version that failed to load, and when to try it again.
struct Failure {
    tag: Tag,
    retry_at: Instant,
    wait: Duration,
}

/// Counters of store activity, for `/metrics`.
#[derive(Debug, Default)]
struct StoreCounters {
    versions_loaded: AtomicU64,
    artifacts_fetched: AtomicU64,
    artifacts_compiled: AtomicU64,
    errors: AtomicU64,
    collected: AtomicU64,
}

/// Whether the store answered the last request, and what it said if not (whether it refused
/// this server, and the message).
struct Health {
    available: AtomicBool,
    last_error: Mutex<(bool, String)>,
}

/// Stored modules: the store, and the versions loaded from it.
pub struct Registry {
    store: Arc<dyn Store>,
    cache: Cache,
    policy: Policy,
    settings: RegistrySettings,
    engine_key: String,
    runtime: Arc<Runtime>,
    compiler: Compiler,
    modules: RwLock<BTreeMap<String, Current>>,
    /// Serializes this server's version switches: a pointer swap and its local install.
    switch: tokio::sync::Mutex<()>,
    /// Versions loaded at some point; those still alive (held by a run) are kept.
    loaded: Mutex<Vec<Weak<LoadedModule>>>,
    /// Content being stored by uploads, not yet referred to by a version.
    installing: Mutex<HashMap<String, usize>>,
    unverified: Mutex<Vec<Unverified>>,
    failures: Mutex<HashMap<String, Failure>>,
    /// The holdings last published in the lease, and when.
    lease: tokio::sync::Mutex<Option<(HashSet<String>, Instant)>>,
    last_collection: Mutex<Instant>,
    cache_changed: AtomicBool,
    health: Health,
    counters: StoreCounters,
    learn: LearnSettings,
}

/// Checks a module name: `[A-Za-z0-9_.-]{1,64}`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if name.is_empty() || name.len() > 64 || !ok_chars || name == "." || name == ".." {
        return Err(format!(
            "invalid module name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . -"
        ));
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Registry {
    /// Opens the registry on `store`: cleans the scratch space, loads every stored module
    /// (a module that does not load is logged and retried later, never fatal), publishes the
    /// lease and collects unreferenced content. A store that cannot be reached is no error: the
    /// server starts with no modules and loads them once the store answers.
    ///
    /// # Errors
    ///
    /// If the data directory cannot be prepared, or the store refuses this server
    /// (credentials, permissions, no such bucket).
    pub async fn open(
        store: Arc<dyn Store>,
        settings: RegistrySettings,
        runtime: Arc<Runtime>,
        learn: LearnSettings,
        compiler: impl FnOnce(&Path) -> Compiler,
    ) -> Result<Self> {
        let mut hasher = DefaultHasher::new();
        runtime
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let scratch = settings.data_dir.join("scratch");
        // Compile workers' leftovers: nothing runs yet.
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let registry = Registry {
            compiler: compiler(&scratch),
            cache: Cache::open(&settings.data_dir.join("cache"), settings.cache_max_bytes),
            policy: Policy::for_store(store.as_ref(), settings.grace, settings.request_timeout),
            store,
            settings,
            engine_key: format!("{:016x}", hasher.finish()),
            runtime,
            modules: RwLock::new(BTreeMap::new()),
            switch: tokio::sync::Mutex::new(()),
            loaded: Mutex::new(Vec::new()),
            installing: Mutex::new(HashMap::new()),
            unverified: Mutex::new(Vec::new()),
            failures: Mutex::new(HashMap::new()),
            lease: tokio::sync::Mutex::new(None),
            last_collection: Mutex::new(Instant::now()),
            cache_changed: AtomicBool::new(true),
            health: Health {
                available: AtomicBool::new(true),
                last_error: Mutex::new((false, String::new())),
            },
            counters: StoreCounters::default(),
            learn,
        };
        match registry.sync().await {
            Ok(()) => {}
            Err(StoreError::Refused(message)) => {
                anyhow::bail!(
                    "module store {} refused this server: {message}",
                    registry.store.location()
                )
            }
            Err(err) => tracing::warn!(
                store = registry.store.location(),
                "starting without the store's modules, loading them once it answers: {err}"
            ),
        }
        registry.refresh_lease().await;
        registry.collect_garbage().await;
        Ok(registry)
    }

    /// Uploads compiling and waiting.
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// This server's instance id.
    pub fn instance(&self) -> &str {
        &self.settings.instance
    }

    /// Where modules are stored.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Records the outcome of a store request: counts failures and logs the store going away
    /// and coming back (once each, not at every request).
    fn health<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        result
            .map_err(|err| self.failed(err))
            .inspect(|_| self.answered())
    }

    /// Records that the store answered.
    fn answered(&self) {
        if !self.health.available.swap(true, Ordering::Relaxed) {
            tracing::info!(
                store = self.store.location(),
                "module store available again"
            );
        }
    }

    /// Records a failed store request; returns its error.
    fn failed(&self, err: StoreError) -> StoreError {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let last = match &err {
            StoreError::Unavailable(message) => Some((false, message.clone())),
            StoreError::Refused(message) => Some((true, message.clone())),
            StoreError::Other(_) => None,
        };
        if let Some(last) = last {
            *lock(&self.health.last_error) = last;
            if self.health.available.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    store = self.store.location(),
                    "module store failing; runs go on with the modules loaded, uploads \
                     and deletes are refused: {err}"
                );
            }
        }
        err
    }

    /// Refuses at once while the store is known to be failing (the maintenance task finds out
    /// when it is back).
    fn ensure_available(&self) -> Result<(), StoreError> {
        if self.health.available.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (refused, message) = lock(&self.health.last_error).clone();
        Err(if refused {
            StoreError::Refused(message)
        } else {
            StoreError::Unavailable(message)
        })
    }

    /// The module stored under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModule>> {
        self.modules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|c| c.module.clone())
    }

    /// Every stored module's info, by name.
    pub fn list(&self) -> Vec<ModuleInfo> {
        self.modules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|c| c.module.info.clone())
            .collect()
    }

    /// The function map of `name`'s current version: every defined function, its id, names,
    /// source location and how its calls are recorded (`None` for a module stored before
    /// function maps were kept). Read from the store the first time it is asked for.
    ///
    /// # Errors
    ///
    /// If the store fails or the stored map cannot be read.
    pub async fn function_map(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let Some(module) = self.get(name) else {
            return Ok(None);
        };
        let key = ContentKey::Functions(module.info.runnable_sha256.clone());
        let Some(file) = self.health(self.cache.file(self.store.as_ref(), &key).await)? else {
            return Ok(None);
        };
        Ok(Some(read_json(&file)?))
    }

    /// Bytes in the data directory (the cache and compile scratch space; with a directory
    /// store, the modules too).
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.settings.data_dir)
    }

    /// The registry's figures for `/metrics`: name, kind, help, value.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let c = &self.counters;
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
        vec![
            (
                "iota_store_versions_loaded_total",
                "counter",
                "Module versions loaded from the store: at startup and when another server changed a module.",
                count(&c.versions_loaded),
            ),
            (
                "iota_store_artifacts_fetched_total",
                "counter",
                "Precompiled artifacts read from the store rather than compiled here.",
                count(&c.artifacts_fetched),
            ),
            (
                "iota_store_artifacts_compiled_total",
                "counter",
                "Stored modules compiled here because the store had no artifact for this engine (then stored for the others).",
                count(&c.artifacts_compiled),
            ),
            (
                "iota_store_errors_total",
                "counter",
                "Store requests that failed.",
                count(&c.errors),
            ),
            (
                "iota_store_collected_objects_total",
                "counter",
                "Unreferenced objects this server removed from the store.",
                count(&c.collected),
            ),
            (
                "iota_store_available",
                "gauge",
                "1 if the module store answered the last request, else 0.",
                u64::from(self.health.available.load(Ordering::Relaxed)),
            ),
            (
                "iota_modules_loaded",
                "gauge",
                "Modules this server serves.",
                self.modules.read().unwrap_or_else(|e| e.into_inner()).len() as u64,
            ),
        ]
    }

    fn deserialize(&self, artifact: &Path, kind: Kind) -> Result<Program> {
        Program::deserialize_file(self.runtime.engine(), artifact, kind)
    }

    /// Links `program` once for all its runs and finds how it runs (the inner error says why
    /// it cannot): the linked code, its entry points and its call counters.
    fn link(
        &self,
        program: &Program,
        trap_unknown_imports: bool,
        host_spans: bool,
    ) -> Result<Result<Link, String>> {
        Ok(match program {
            Program::Module(module) => {
                let pre = self
                    .runtime
                    .prepare(module, trap_unknown_imports, host_spans)?;
                EntryPoints::of(module).map(|entry| Link {
                    pre: Linked::Module(pre),
                    entry,
                    counters: Runtime::counters(module),
                })
            }
            Program::Component(component) => {
                match component_entry(self.runtime.engine(), component) {
                    Ok(entry) => Ok(Link {
                        pre: Linked::Component(
                            self.runtime
                                .prepare_component(component, trap_unknown_imports)?,
                        ),
                        entry,
                        counters: Counters::default(),
                    }),
                    Err(message) => Err(message),
                }
            }
        })
    }

    /// Instruments, compiles, links and stores `wasm` under `name`, replacing any previous
    /// version atomically. Runs in flight keep the version they started with; on any error the
    /// previous version stays. `admission` is the upload's place in the compile queue; a
    /// `symbol_map` (lines `INDEX:NAME`) names functions first.
    ///
    /// # Errors
    ///
    /// [`UploadError`] says why.
    pub async fn upload(
        &self,
        admission: &Admission,
        name: &str,
        wasm: &[u8],
        symbol_map: Option<&str>,
        options: UploadOptions,
    ) -> Result<(ModuleInfo, UploadTimings), UploadError> {
        self.ensure_available()?;
        let compiled = self
            .compiler
            .compile(
                admission,
                wasm,
                symbol_map,
                options.instrument,
                options.time_every_call,
                &[],
            )
            .await?;
        let clock = Instant::now();
        let origin = Origin::Upload {
            sha256: sha256_hex(wasm),
            options,
        };
        let prepared = tokio::task::block_in_place(|| self.prepare(name, &origin, &compiled))?;
        let info = prepared.module.info.clone();
        self.install(name, prepared, &compiled, Replacing::Current)
            .await?;
        let timings = UploadTimings {
            instrument_ms: compiled.instrument_ms,
            compile_ms: compiled.compile_ms,
            store_ms: clock.elapsed().as_secs_f64() * 1e3,
        };
        self.collect_garbage().await;
        Ok((info, timings))
    }

    /// Links and checks a compiled version, and writes its names and function map beside it.
    fn prepare(
        &self,
        name: &str,
        origin: &Origin<'_>,
        compiled: &Compiled,
    ) -> Result<Prepared, UploadError> {
        let runnable = std::fs::read(&compiled.runnable).context("reading the compiled module")?;
        let runnable_sha256 = sha256_hex(&runnable);
        // The engine checks the code against its instance pool here: a memory whose minimum
        // is over the run memory limit cannot be run.
        let program = self
            .deserialize(&compiled.artifact, compiled.kind)
            .map_err(|e| {
                UploadError::NotRunnable(format!(
                    "module cannot run within this server's limits: {e:#}"
                ))
            })?;
        let kind = program.kind();
        let options = origin.options();
        if !options.outgoing_http.is_empty() && kind == Kind::Module {
            return Err(UploadError::NotRunnable(
                "`outgoing_http` is for components: a core module cannot make HTTP requests".into(),
            ));
        }
        // WASI 0.2 calls are not timed.
        let host_spans = options.host_spans && kind == Kind::Module && self.runtime.host_spans();
        let Link {
            pre,
            entry,
            counters,
        } = self
            .link(&program, options.trap_unknown_imports, host_spans)
            .map_err(|e| UploadError::Link(format!("{e:#}")))?
            .map_err(UploadError::NotRunnable)?;
        let tracing = match (options.instrument, compiled.passed_through) {
            (false, _) => Tracing::None,
            (true, true) => Tracing::Preinstrumented,
            (true, false) => Tracing::Iota,
        };
        let mut functions = compiled.functions.clone();
        let counted = |functions: &[FunctionEntry]| match tracing {
            Tracing::None => 0,
            _ => functions.iter().filter(|f| f.timing.is_counted()).count(),
        };
        let info = match origin {
            Origin::Upload { sha256, options } => ModuleInfo {
                name: name.to_string(),
                original_size: std::fs::metadata(&compiled.original)
                    .map_or(0, |m| m.len() as usize),
                runnable_size: runnable.len(),
                functions: functions.len(),
                traced_functions: match tracing {
                    Tracing::None => 0,
                    _ => functions.iter().filter(|f| f.instrumented).count(),
                },
                counted_functions: counted(&functions),
                learned_functions: 0,
                generation: 0,
                // A component's calls are all timed: its counters are out of the host's reach.
                learn: options.learn && kind == Kind::Module,
                tracing,
                entry,
                trap_unknown_imports: options.trap_unknown_imports,
                host_spans: options.host_spans && kind == Kind::Module,
                timing: if options.time_every_call || kind == Kind::Component {
                    every_call()
                } else {
                    "counted".into()
                },
                spans: options.spans,
                kind,
                outgoing_http: options.outgoing_http.clone(),
                warnings: compiled.warnings.clone(),
                uploaded_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                sha256: sha256.clone(),
                runnable_sha256,
            },
            Origin::Learned { from } => {
                // The same input and options give the same ids: the names stay the earlier
                // version's (a symbol map sent at upload included).
                for f in &mut functions {
                    if let Some(Some(name)) = from.names.get(f.id as usize) {
                        f.name = name.clone();
                    }
                }
                ModuleInfo {
                    runnable_size: runnable.len(),
                    counted_functions: counted(&functions),
                    learned_functions: functions
                        .iter()
                        .filter(|f| f.timing == iota_instrument::Timing::Learned)
                        .count(),
                    generation: from.info.generation + 1,
                    entry,
                    runnable_sha256,
                    ..from.info.clone()
                }
            }
        };
        if let Origin::Upload { .. } = origin {
            for warning in &info.warnings {
                tracing::warn!(module = name, "{warning}");
            }
        }
        let (names, locations) = match origin {
            Origin::Upload { .. } => split_names(names_by_id(&functions, tracing)),
            Origin::Learned { from } => (from.names.clone(), from.locations.clone()),
        };
        let names_file = compiled.artifact.with_file_name("names.json");
        write_atomic(
            &names_file,
            &serde_json::to_vec(&joined_names(&names, &locations)).context("names")?,
        )?;
        let functions_file = compiled.artifact.with_file_name("functions.json");
        write_atomic(
            &functions_file,
            &serde_json::to_vec(&functions).context("function map")?,
        )?;
        Ok(Prepared {
            module: LoadedModule {
                learning: self.learning_for(&info, learned_ids(&functions)),
                info,
                pre,
                names,
                locations,
                host_spans,
                counters,
                warm: AtomicBool::new(false),
                inline_credit: AtomicU8::new(0),
            },
            names_file,
            functions_file,
        })
    }

    /// Writes a prepared version's content to the store, then switches `name` to it (from
    /// whatever version, or only from one: `replacing`) and serves it.
    async fn install(
        &self,
        name: &str,
        prepared: Prepared,
        compiled: &Compiled,
        replacing: Replacing<'_>,
    ) -> Result<(), UploadError> {
        let Prepared {
            module,
            names_file,
            functions_file,
        } = prepared;
        let info = &module.info;
        let _installing = self.installing([&info.sha256, &info.runnable_sha256]);
        let runnable = &info.runnable_sha256;
        let mut content = vec![
            (
                ContentKey::Wasm(info.sha256.clone()),
                compiled.original.as_path(),
            ),
            (
                ContentKey::Artifact {
                    sha: runnable.clone(),
                    engine: self.engine_key.clone(),
                },
                compiled.artifact.as_path(),
            ),
            (ContentKey::Names(runnable.clone()), names_file.as_path()),
            (
                ContentKey::Functions(runnable.clone()),
                functions_file.as_path(),
            ),
        ];
        // Uploaded with instrument=false (or already instrumented), it is its own runnable.
        if *runnable != info.sha256 {
            content.push((
                ContentKey::Wasm(runnable.clone()),
                compiled.runnable.as_path(),
            ));
        }
        let first_write = Instant::now();
        for (key, file) in &content {
            self.health(self.cache.put(self.store.as_ref(), key, file).await)?;
        }
        self.cache_changed.store(true, Ordering::Relaxed);
        let value: Bytes = serde_json::to_vec_pretty(info)
            .context("module info")?
            .into();
        let _switch = self.switch.lock().await;
        if let Some(budget) = self.policy.upload_budget()
            && first_write.elapsed() > budget
        {
            return Err(StoreError::Unavailable(format!(
                "storing the module took {:.1} s, longer than an upload may take with a \
                 collection grace of {} s",
                first_write.elapsed().as_secs_f64(),
                self.policy.grace.as_secs()
            ))
            .into());
        }
        let Swap::Done(tag) = self.swap_version(name, value, replacing).await? else {
            return Err(UploadError::Internal(anyhow::anyhow!(
                "`{name}` changed while its learned version was compiled"
            )));
        };
        let module = Arc::new(module);
        lock(&self.loaded).push(Arc::downgrade(&module));
        self.modules
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Current { module, tag });
        if self.policy.pass_limit.is_some() {
            lock(&self.unverified).push(Unverified {
                due: Instant::now() + self.policy.verify_after,
                keys: content.into_iter().map(|(key, _)| key).collect(),
            });
        }
        Ok(())
    }

    /// Sets `name`'s pointer to `value` by compare-and-swap: against what it holds now,
    /// retrying when another server switched it in between, or only against one version's
    /// tag ([`Swap::Conflict`] if it holds another). Returns the new value's tag.
    async fn swap_version(
        &self,
        name: &str,
        value: Bytes,
        replacing: Replacing<'_>,
    ) -> Result<Swap, StoreError> {
        let value = Some(value);
        for _ in 0..SWAP_ATTEMPTS {
            let current = match replacing {
                Replacing::Current => {
                    self.health(self.store.read(Pointers::Modules, name).await)?
                }
                Replacing::Only(_) => None,
            };
            let expected = match (&replacing, &current) {
                (Replacing::Only(tag), _) => Expect::Tag(tag),
                (Replacing::Current, Some(pointer)) => Expect::Tag(&pointer.tag),
                (Replacing::Current, None) => Expect::Absent,
            };
            match self
                .store
                .swap(Pointers::Modules, name, expected, value.clone())
                .await
            {
                Ok(Swap::Done(tag)) => {
                    self.health(Ok(()))?;
                    return Ok(Swap::Done(tag));
                }
                Ok(Swap::Conflict) if matches!(replacing, Replacing::Only(_)) => {
                    return Ok(Swap::Conflict);
                }
                Ok(Swap::Conflict) => continue,
                Err(err) => {
                    // A write that timed out may still have happened: if the pointer now
                    // holds this value, it did.
                    if let Ok(Some(now)) = self.store.read(Pointers::Modules, name).await
                        && now.value == value
                    {
                        return Ok(Swap::Done(Some(now.tag)));
                    }
                    return Err(self.failed(err));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "module {name} kept being switched by other servers ({SWAP_ATTEMPTS} tries)"
        )))
    }

    /// The learning state of a new version, if it learns (see [`crate::learning`]): a first
    /// version watches its runs; a learned one (counting the functions `learned` because an
    /// earlier version learned so) audits what it learned and watches what it times.
    fn learning_for(&self, info: &ModuleInfo, learned: Vec<u32>) -> Option<Mutex<Learning>> {
        let learns = self.learn.enabled
            && info.learn
            && info.timing == "counted"
            && info.tracing == Tracing::Iota;
        if !learns {
            return None;
        }
        if info.generation == 0 {
            return Some(Mutex::new(Learning::new(self.learn)));
        }
        Some(Mutex::new(Learning::auditing(self.learn, learned)))
    }

    /// Re-instruments `name`'s version `from` with the functions `ids` counted, and makes it
    /// the current version if `from` still is, in the store too (a compare-and-swap against
    /// `from`'s pointer: of several servers learning from one version, the first to finish
    /// switches it, and the others load that). Waits for no one: if the upload queue is full,
    /// or anything fails, the version learns again from a new window of runs.
    pub async fn learn(&self, name: &str, from: Arc<LoadedModule>, ids: Vec<u32>) {
        let outcome = async {
            let tag = self
                .modules
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .filter(|current| Arc::ptr_eq(&current.module, &from))
                .and_then(|current| current.tag.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!("`{name}` changed while its runs were learned from")
                })?;
            let admission = self.compiler.admit()?;
            let key = ContentKey::Wasm(from.info.sha256.clone());
            let original = self
                .cache
                .file(self.store.as_ref(), &key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{} is missing from the store", key.path()))?;
            let wasm = tokio::fs::read(&original)
                .await
                .with_context(|| format!("reading {}", original.display()))?;
            let compiled = self
                .compiler
                .compile(&admission, &wasm, None, true, false, &ids)
                .await?;
            let origin = Origin::Learned { from: &from };
            let prepared = tokio::task::block_in_place(|| self.prepare(name, &origin, &compiled))?;
            self.install(name, prepared, &compiled, Replacing::Only(&tag))
                .await
        }
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(
                    module = name,
                    learned = ids.len(),
                    generation = from.info.generation + 1,
                    "re-instrumented with the short calls its runs showed counted"
                );
                self.collect_garbage().await;
            }
            Err(err) => {
                tracing::warn!(module = name, "learning short calls: {err}");
                if let Some(learning) = &from.learning {
                    lock(learning).retry();
                }
            }
        }
    }

    /// Marks content as being installed until the guard drops, so no collection removes it
    /// before its version refers to it.
    fn installing<'a>(&'a self, shas: [&String; 2]) -> impl Drop + Send + 'a {
        struct Installing<'a>(&'a Registry, [String; 2]);
        impl Drop for Installing<'_> {
            fn drop(&mut self) {
                let mut installing = lock(&self.0.installing);
                for sha in &self.1 {
                    if let Some(count) = installing.get_mut(sha) {
                        *count -= 1;
                        if *count == 0 {
                            installing.remove(sha);
                        }
                    }
                }
            }
        }
        let mut installing = lock(&self.installing);
        for sha in shas {
            *installing.entry(sha.clone()).or_default() += 1;
        }
        Installing(self, shas.map(String::clone))
    }

    /// Removes `name`; returns whether the store had a version of it. Its content goes once
    /// no server holds it.
    ///
    /// # Errors
    ///
    /// If the store fails.
    pub async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        self.ensure_available()?;
        let existed = {
            let _switch = self.switch.lock().await;
            let existed = self.delete_version(name).await?;
            // Whatever the store said, this server no longer serves it.
            self.modules
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            existed
        };
        if existed {
            self.collect_garbage().await;
        }
        Ok(existed)
    }

    /// Removes `name`'s version in the store by compare-and-swap; whether it had one.
    async fn delete_version(&self, name: &str) -> Result<bool, StoreError> {
        for _ in 0..SWAP_ATTEMPTS {
            let Some(current) = self.health(self.store.read(Pointers::Modules, name).await)? else {
                return Ok(false);
            };
            if current.value.is_none() {
                return Ok(false);
            }
            let swapped = self
                .store
                .swap(Pointers::Modules, name, Expect::Tag(&current.tag), None)
                .await;
            match swapped {
                Ok(Swap::Done(_)) => return self.health(Ok(true)),
                Ok(Swap::Conflict) => continue,
                Err(err) => {
                    if let Ok(now) = self.store.read(Pointers::Modules, name).await
                        && now.is_none_or(|p| p.value.is_none())
                    {
                        return Ok(true);
                    }
                    return Err(self.failed(err));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "module {name} kept being switched by other servers ({SWAP_ATTEMPTS} tries)"
        )))
    }
}

/// A function's name as `names.json` keeps it: the name alone (as older versions wrote), or
/// with its source location.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredName {
    Plain(String),
    Located {
        name: String,
        #[serde(flatten)]
        location: SourceLocation,
    },
}

/// Names and locations as `names.json` keeps them.
fn joined_names(
    names: &[Option<String>],
    locations: &[Option<SourceLocation>],
) -> Vec<Option<StoredName>> {
    names
        .iter()
        .enumerate()
        .map(|(id, name)| {
            let name = name.clone()?;
            Some(match locations.get(id).cloned().flatten() {
                Some(location) => StoredName::Located { name, location },
                None => StoredName::Plain(name),
            })
        })
        .collect()
}

/// The hook ids of the functions `functions` (a function map) counts because runs showed them
/// short.
fn learned_ids(functions: &[FunctionEntry]) -> Vec<u32> {
    functions
        .iter()
        .filter(|f| f.timing == iota_instrument::Timing::Learned)
        .map(|f| f.id)
        .collect()
}

/// Reads the JSON file `path` (the store's copy, in the cache) as a `T`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    std::fs::read(path)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
        .with_context(|| format!("reading {}", path.display()))
}

/// Function names and locations indexed by hook id (none for a module that reports no calls).
fn names_by_id(functions: &[FunctionEntry], tracing: Tracing) -> Vec<Option<StoredName>> {
    if tracing == Tracing::None {
        return Vec::new();
    }
    let len = functions
        .iter()
        .map(|f| f.id as usize + 1)
        .max()
        .unwrap_or(0);
    let mut by_id = vec![None; len];
    for f in functions {
        by_id[f.id as usize] = Some(match &f.file {
            Some(file) => StoredName::Located {
                name: f.name.clone(),
                location: SourceLocation {
                    file: file.clone(),
                    line: f.line,
                    column: f.column,
                },
            },
            None => StoredName::Plain(f.name.clone()),
        });
    }
    by_id
}

type NameTables = (Arc<[Option<String>]>, Arc<[Option<SourceLocation>]>);

/// The names and the locations, apart.
fn split_names(stored: Vec<Option<StoredName>>) -> NameTables {
    let (names, locations): (Vec<_>, Vec<_>) = stored
        .into_iter()
        .map(|entry| match entry {
            Some(StoredName::Plain(name)) => (Some(name), None),
            Some(StoredName::Located { name, location }) => (Some(name), Some(location)),
            None => (None, None),
        })
        .unzip();
    (names.into(), locations.into())
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names_are_checked() {
        for good in ["count_vowels", "a", "v1.2-beta", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "naïve",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
