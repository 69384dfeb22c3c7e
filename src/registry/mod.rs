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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use iota_instrument::FunctionEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::{InstancePre, Module};

use crate::compile::{Admission, CompileError, Compiled, Compiler, Stage};
use crate::runtime::entry::EntryPoints;
use crate::runtime::{RunState, Runtime};
use crate::store::cache::Cache;
use crate::store::collect::Policy;
use crate::store::local::write_atomic;
use crate::store::{ContentKey, Expect, Pointers, Store, StoreError, Swap, Tag, dir_bytes};
use crate::trace::SpanOverrides;

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
    /// Functions reporting enter/exit.
    pub traced_functions: usize,
    /// How the module reports calls: `iota` (instrumented here), `preinstrumented` (it already
    /// called the hooks), or `none` (uploaded with `instrument=false`).
    pub tracing: Tracing,
    /// How it is run: a WASI command, or a reactor and the functions a run may call.
    #[serde(default = "command")]
    pub entry: EntryPoints,
    /// Imports no host provides are linked as functions that trap if called.
    pub trap_unknown_imports: bool,
    /// Upload time, seconds since the Unix epoch.
    pub uploaded_at: u64,
    /// Span limits chosen at upload (the server's apply to what is unset).
    #[serde(default, skip_serializing_if = "SpanOverrides::is_empty")]
    pub spans: SpanOverrides,
}

fn command() -> EntryPoints {
    EntryPoints::Command
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
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    /// Instrument the module (default).
    pub instrument: bool,
    /// Link unknown imports as trapping functions instead of refusing the module.
    pub trap_unknown_imports: bool,
    /// Span limits for this module's runs.
    pub spans: SpanOverrides,
}

/// A module ready to run.
pub struct LoadedModule {
    /// Its info.
    pub info: ModuleInfo,
    /// Linked once; each run instantiates it in a fresh store.
    pub pre: InstancePre<RunState>,
    /// Function names indexed by hook id.
    pub names: Arc<[Option<String>]>,
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

    fn deserialize(&self, artifact: &Path) -> Result<Module> {
        // SAFETY: artifacts are produced by `Module::serialize` in compile workers of this
        // program, on this server or on another sharing the store, and read from this server's
        // data directory, its cache, or the store; their names pin the engine's compatibility
        // hash, which wasmtime checks again. Whoever can write to the store can run native code
        // here: it is protected like the binary (SECURITY.md).
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize_file(self.runtime.engine(), artifact)? };
        Ok(module)
    }

    /// Instruments, compiles, links and stores `wasm` under `name`, replacing any previous
    /// version atomically. Runs in flight keep the version they started with; on any error the
    /// previous version stays. `admission` is the upload's place in the compile queue.
    ///
    /// # Errors
    ///
    /// [`UploadError`] says why.
    pub async fn upload(
        &self,
        admission: &Admission,
        name: &str,
        wasm: &[u8],
        options: UploadOptions,
    ) -> Result<(ModuleInfo, UploadTimings), UploadError> {
        self.ensure_available()?;
        let compiled = self
            .compiler
            .compile(admission, wasm, options.instrument)
            .await?;
        let clock = Instant::now();
        let sha256 = sha256_hex(wasm);
        let (module, names_file) =
            tokio::task::block_in_place(|| self.prepare(name, sha256, &compiled, options))?;
        let info = module.info.clone();
        self.install(name, module, &compiled, &names_file).await?;
        let timings = UploadTimings {
            instrument_ms: compiled.instrument_ms,
            compile_ms: compiled.compile_ms,
            store_ms: clock.elapsed().as_secs_f64() * 1e3,
        };
        self.collect_garbage().await;
        Ok((info, timings))
    }

    /// Links and checks a compiled upload, and writes its names file beside it.
    fn prepare(
        &self,
        name: &str,
        sha256: String,
        compiled: &Compiled,
        options: UploadOptions,
    ) -> Result<(LoadedModule, PathBuf), UploadError> {
        let runnable = std::fs::read(&compiled.runnable).context("reading the compiled module")?;
        let runnable_sha256 = sha256_hex(&runnable);
        let module = self.deserialize(&compiled.artifact)?;
        let pre = self
            .runtime
            .prepare(&module, options.trap_unknown_imports)
            .map_err(|e| UploadError::Link(format!("{e:#}")))?;
        let entry = EntryPoints::of(&module).map_err(UploadError::NotRunnable)?;
        let tracing = match (options.instrument, compiled.passed_through) {
            (false, _) => Tracing::None,
            (true, true) => Tracing::Preinstrumented,
            (true, false) => Tracing::Iota,
        };
        let names = names_by_id(&compiled.functions, tracing);
        let names_file = compiled.artifact.with_file_name("names.json");
        write_atomic(&names_file, &serde_json::to_vec(&names).context("names")?)?;
        let info = ModuleInfo {
            name: name.to_string(),
            original_size: std::fs::metadata(&compiled.original).map_or(0, |m| m.len() as usize),
            runnable_size: runnable.len(),
            functions: compiled.functions.len(),
            traced_functions: match tracing {
                Tracing::None => 0,
                _ => compiled.functions.iter().filter(|f| f.instrumented).count(),
            },
            tracing,
            entry,
            trap_unknown_imports: options.trap_unknown_imports,
            spans: options.spans,
            uploaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sha256,
            runnable_sha256,
        };
        Ok((
            LoadedModule {
                info,
                pre,
                names: names.into(),
            },
            names_file,
        ))
    }

    /// Writes an upload's content to the store, then switches `name` to it and serves it.
    async fn install(
        &self,
        name: &str,
        module: LoadedModule,
        compiled: &Compiled,
        names_file: &Path,
    ) -> Result<(), UploadError> {
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
            (ContentKey::Names(runnable.clone()), names_file),
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
        let tag = self.swap_version(name, Some(value)).await?;
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

    /// Sets `name`'s pointer to `value` by compare-and-swap against what it holds now,
    /// retrying when another server switched it in between. Returns the new value's tag.
    async fn swap_version(
        &self,
        name: &str,
        value: Option<Bytes>,
    ) -> Result<Option<Tag>, StoreError> {
        for _ in 0..SWAP_ATTEMPTS {
            let current = self.health(self.store.read(Pointers::Modules, name).await)?;
            let expected = match &current {
                Some(pointer) => Expect::Tag(&pointer.tag),
                None => Expect::Absent,
            };
            match self
                .store
                .swap(Pointers::Modules, name, expected, value.clone())
                .await
            {
                Ok(Swap::Done(tag)) => {
                    self.health(Ok(()))?;
                    return Ok(tag);
                }
                Ok(Swap::Conflict) => continue,
                Err(err) => {
                    // A write that timed out may still have happened: if the pointer now
                    // holds this value, it did.
                    if let Ok(Some(now)) = self.store.read(Pointers::Modules, name).await
                        && now.value == value
                    {
                        return Ok(Some(now.tag));
                    }
                    return Err(self.failed(err));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "module {name} kept being switched by other servers ({SWAP_ATTEMPTS} tries)"
        )))
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

/// Function names indexed by hook id (none for a module that reports no calls).
fn names_by_id(functions: &[FunctionEntry], tracing: Tracing) -> Vec<Option<String>> {
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
        by_id[f.id as usize] = Some(f.name.clone());
    }
    by_id
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
