//! The module registry: names mapped to loaded module versions, backed by the data directory.
//!
//! An upload is instrumented and compiled by a worker process ([`crate::compile`]), checked
//! (linkable, runnable), its files moved into the content-addressed store, and only then made
//! the name's version. Runs hold the version they started with. Content no version refers to,
//! and no run holds, is collected at startup and after every replacement or deletion.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::runtime::component::{Kind, Prepared, Program, component_entry};
use anyhow::{Context, Result};
use iota_instrument::FunctionEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compile::{Admission, CompileError, Compiled, Compiler, Stage};
use crate::runtime::Runtime;
use crate::runtime::entry::EntryPoints;
use crate::store::{Collected, DiskStore, write_atomic};
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
}

fn command() -> EntryPoints {
    EntryPoints::Command
}

fn yes() -> bool {
    true
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
    pub pre: Prepared,
    /// Function names indexed by hook id.
    pub names: Arc<[Option<String>]>,
    /// Functions' source locations indexed by hook id (from DWARF).
    pub locations: Arc<[Option<SourceLocation>]>,
    /// Its WASI calls are timed as host calls (the module asks for it and the server allows).
    pub host_spans: bool,
    /// A run of it has started in this process (the next is no cold start).
    pub warm: AtomicBool,
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
    /// Linking, checking and writing to disk.
    pub store_ms: f64,
}

/// Stored modules, on disk and loaded.
pub struct Registry {
    store: DiskStore,
    runtime: Arc<Runtime>,
    compiler: Compiler,
    modules: RwLock<BTreeMap<String, Arc<LoadedModule>>>,
    /// Serializes version switches and collections.
    writes: Mutex<()>,
    /// Versions loaded at some point; those still alive (held by a run) are not collected.
    loaded: Mutex<Vec<Weak<LoadedModule>>>,
    /// Content being installed by uploads, not yet referred to by a version.
    installing: Mutex<HashMap<String, usize>>,
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

impl Registry {
    /// Opens (creating if needed) the data directory, loads every stored module, and removes
    /// what interrupted writes and unreferenced content left. A module that no longer loads is
    /// logged and skipped, never fatal.
    ///
    /// # Errors
    ///
    /// If the directories cannot be created or listed.
    pub fn open(
        dir: &Path,
        runtime: Arc<Runtime>,
        compiler: impl FnOnce(&Path) -> Compiler,
    ) -> Result<Self> {
        let mut hasher = DefaultHasher::new();
        runtime
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let store = DiskStore::open(dir, format!("{:016x}", hasher.finish()))?;
        let registry = Registry {
            compiler: compiler(&store.scratch()),
            store,
            runtime,
            modules: RwLock::new(BTreeMap::new()),
            writes: Mutex::new(()),
            loaded: Mutex::new(Vec::new()),
            installing: Mutex::new(HashMap::new()),
        };
        let mut modules = BTreeMap::new();
        for path in registry.store.versions()? {
            match registry.load(&path) {
                Ok(module) => {
                    let module = Arc::new(module);
                    lock(&registry.loaded).push(Arc::downgrade(&module));
                    modules.insert(module.info.name.clone(), module);
                }
                Err(err) => {
                    tracing::error!(path = %path.display(), "skipping stored module: {err:#}")
                }
            }
        }
        *registry.modules.write().unwrap_or_else(|e| e.into_inner()) = modules;
        registry.collect_garbage(true);
        Ok(registry)
    }

    /// Uploads compiling and waiting.
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    fn load(&self, meta: &Path) -> Result<LoadedModule> {
        let mut info: ModuleInfo = serde_json::from_slice(&std::fs::read(meta)?)?;
        validate_name(&info.name).map_err(anyhow::Error::msg)?;
        let names: Vec<Option<StoredName>> = serde_json::from_slice(&std::fs::read(
            self.store.blob(&info.runnable_sha256, "names.json"),
        )?)?;
        let (names, locations) = split_names(names);
        let program = self.compiled(&info.runnable_sha256, info.kind)?;
        let host_spans = info.host_spans && self.runtime.host_spans();
        let (pre, entry) = self
            .prepare(&program, info.trap_unknown_imports, host_spans)?
            .map_err(anyhow::Error::msg)?;
        info.entry = entry;
        Ok(LoadedModule {
            info,
            pre,
            names,
            locations,
            host_spans,
            warm: AtomicBool::new(false),
        })
    }

    /// The stored module or component `sha` compiled for this engine: its artifact, or
    /// compiled now (after an engine upgrade) and stored.
    fn compiled(&self, sha: &str, kind: Kind) -> Result<Program> {
        let path = self.store.artifact(sha);
        if path.exists() {
            match self.deserialize(&path, kind) {
                Ok(program) => return Ok(program),
                Err(err) => tracing::warn!(path = %path.display(), "recompiling: {err:#}"),
            }
        }
        let wasm = std::fs::read(self.store.blob(sha, "wasm"))?;
        let program = Program::new(self.runtime.engine(), &wasm)?;
        write_atomic(&path, &program.serialize()?)?;
        Ok(program)
    }

    fn deserialize(&self, artifact: &Path, kind: Kind) -> Result<Program> {
        Program::deserialize_file(self.runtime.engine(), artifact, kind)
    }

    /// Links `program` and finds how it runs (the error says why it cannot).
    fn prepare(
        &self,
        program: &Program,
        trap_unknown_imports: bool,
        host_spans: bool,
    ) -> Result<Result<(Prepared, EntryPoints), String>> {
        Ok(match program {
            Program::Module(module) => {
                let pre = self
                    .runtime
                    .prepare(module, trap_unknown_imports, host_spans)?;
                EntryPoints::of(module).map(|entry| (Prepared::Module(pre), entry))
            }
            Program::Component(component) => {
                match component_entry(self.runtime.engine(), component) {
                    Ok(entry) => {
                        let pre = self
                            .runtime
                            .prepare_component(component, trap_unknown_imports)?;
                        Ok((Prepared::Component(pre), entry))
                    }
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
        let compiled = self
            .compiler
            .compile(admission, wasm, symbol_map, options.instrument)
            .await?;
        let sha256 = sha256_hex(wasm);
        // File work, not to be cut short by an abandoned request.
        let result = tokio::task::block_in_place(|| self.install(name, sha256, compiled, options));
        if result.is_ok() {
            self.collect_garbage(false);
        }
        result
    }

    fn install(
        &self,
        name: &str,
        sha256: String,
        compiled: Compiled,
        options: UploadOptions,
    ) -> Result<(ModuleInfo, UploadTimings), UploadError> {
        let clock = Instant::now();
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
        let host_spans = options.host_spans && self.runtime.host_spans();
        let (pre, entry) = self
            .prepare(&program, options.trap_unknown_imports, host_spans)
            .map_err(|e| UploadError::Link(format!("{e:#}")))?
            .map_err(UploadError::NotRunnable)?;
        if !options.outgoing_http.is_empty() && program.kind() == Kind::Module {
            return Err(UploadError::NotRunnable(
                "`outgoing_http` is for components: a core module cannot make HTTP requests".into(),
            ));
        }
        let tracing = match (options.instrument, compiled.passed_through) {
            (false, _) => Tracing::None,
            (true, true) => Tracing::Preinstrumented,
            (true, false) => Tracing::Iota,
        };
        let names = names_by_id(&compiled.functions, tracing);
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
            // WASI 0.2 calls are not timed.
            host_spans: options.host_spans && program.kind() == Kind::Module,
            spans: options.spans,
            kind: program.kind(),
            outgoing_http: options.outgoing_http,
            uploaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sha256,
            runnable_sha256,
        };

        let _installing = self.installing([&info.sha256, &info.runnable_sha256]);
        let store = &self.store;
        store.install(&compiled.original, &store.blob(&info.sha256, "wasm"))?;
        store.install(
            &compiled.runnable,
            &store.blob(&info.runnable_sha256, "wasm"),
        )?;
        store.install(&compiled.artifact, &store.artifact(&info.runnable_sha256))?;
        write_atomic(
            &store.blob(&info.runnable_sha256, "names.json"),
            &serde_json::to_vec(&names).context("names")?,
        )?;
        let (names, locations) = split_names(names);
        let loaded = Arc::new(LoadedModule {
            info: info.clone(),
            pre,
            names,
            locations,
            host_spans,
            warm: AtomicBool::new(false),
        });
        {
            let _switch = lock(&self.writes);
            write_atomic(
                &store.version(name),
                &serde_json::to_vec_pretty(&info).context("module info")?,
            )?;
            lock(&self.loaded).push(Arc::downgrade(&loaded));
            self.modules
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string(), loaded);
        }
        let timings = UploadTimings {
            instrument_ms: compiled.instrument_ms,
            compile_ms: compiled.compile_ms,
            store_ms: clock.elapsed().as_secs_f64() * 1e3,
        };
        Ok((info, timings))
    }

    /// Marks content as being installed until the guard drops, so no collection removes it
    /// before its version refers to it.
    fn installing<'a>(&'a self, shas: [&String; 2]) -> impl Drop + 'a {
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

    /// Removes content no version refers to, no upload is installing and no run holds; with
    /// `at_startup`, also what interrupted writes left. Failures are logged: collection is
    /// retried at the next replacement, deletion or start.
    fn collect_garbage(&self, at_startup: bool) -> Collected {
        let _switch = lock(&self.writes);
        let mut in_use: HashSet<String> = lock(&self.installing).keys().cloned().collect();
        lock(&self.loaded).retain(|version| match version.upgrade() {
            Some(module) => {
                in_use.insert(module.info.sha256.clone());
                in_use.insert(module.info.runnable_sha256.clone());
                true
            }
            None => false,
        });
        match self.store.collect(&in_use, at_startup) {
            Ok(collected) => {
                if collected.files > 0 {
                    tracing::info!(
                        files = collected.files,
                        bytes = collected.bytes,
                        "removed unreferenced content"
                    );
                }
                collected
            }
            Err(err) => {
                tracing::error!("collecting unreferenced content: {err:#}");
                Collected::default()
            }
        }
    }

    /// The module stored under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModule>> {
        self.modules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every stored module's info, by name.
    pub fn list(&self) -> Vec<ModuleInfo> {
        self.modules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|m| m.info.clone())
            .collect()
    }

    /// Removes `name`; returns whether it existed. Its content goes once no run holds it.
    ///
    /// # Errors
    ///
    /// If its file cannot be removed.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let existed = {
            let _switch = lock(&self.writes);
            let existed = self
                .modules
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name)
                .is_some();
            if existed {
                let meta = self.store.version(name);
                std::fs::remove_file(&meta)
                    .with_context(|| format!("removing {}", meta.display()))?;
            }
            existed
        };
        if existed {
            self.collect_garbage(false);
        }
        Ok(existed)
    }

    /// Bytes in the data directory.
    pub fn disk_bytes(&self) -> u64 {
        self.store.bytes()
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
