//! The module registry: uploads instrumented, compiled once and kept on disk.
//!
//! Layout under the data directory:
//!
//! ```text
//! modules/<name>.json                  module info; replacing this file is the version switch
//! blobs/<sha256>.wasm                  original and instrumented modules, by content
//! blobs/<sha256>.names.json            function names by hook id
//! compiled/<sha256>-<engine>.cwasm     precompiled code, by content and engine compatibility
//! ```
//!
//! Every file is written to a temporary name, flushed and renamed into place, so a crash leaves
//! either the old version or the new one, never a partial file that is served.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use iota_instrument::{IfInstrumented, Options};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::{InstancePre, Module};

use crate::runtime::{RunState, Runtime};
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
    /// Imports no host provides are linked as functions that trap if called.
    pub trap_unknown_imports: bool,
    /// Upload time, seconds since the Unix epoch.
    pub uploaded_at: u64,
    /// Span limits chosen at upload (the server's apply to what is unset).
    #[serde(default, skip_serializing_if = "SpanOverrides::is_empty")]
    pub spans: SpanOverrides,
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

/// Why an upload failed: all are the uploader's fault (400) but `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The module could not be instrumented (invalid wasm, a component...).
    #[error("{0}")]
    Instrument(#[from] iota_instrument::Error),
    /// wasmtime cannot compile it (a proposal this host does not enable, say).
    #[error("module does not compile: {0}")]
    Compile(String),
    /// An import is neither WASI nor a hook.
    #[error("{0} (upload with unknown_imports=trap to link such imports as functions that trap)")]
    Link(String),
    /// Storage failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Timings of an upload, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UploadTimings {
    /// Instrumenting.
    pub instrument_ms: f64,
    /// Compiling and linking.
    pub compile_ms: f64,
    /// Writing to disk.
    pub store_ms: f64,
}

/// Stored modules, on disk and loaded.
pub struct Registry {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    engine_key: String,
    modules: RwLock<BTreeMap<String, Arc<LoadedModule>>>,
    /// Serializes the switch to a new version (disk then memory) per registry.
    writes: Mutex<()>,
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

impl Registry {
    /// Opens (creating if needed) the data directory and loads every stored module. A module
    /// that no longer loads is logged and skipped, never fatal.
    ///
    /// # Errors
    ///
    /// If the directories cannot be created or listed.
    pub fn open(dir: &Path, runtime: Arc<Runtime>) -> Result<Self> {
        for sub in ["modules", "blobs", "compiled"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mut hasher = DefaultHasher::new();
        runtime
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let registry = Registry {
            dir: dir.to_path_buf(),
            runtime,
            engine_key: format!("{:016x}", hasher.finish()),
            modules: RwLock::new(BTreeMap::new()),
            writes: Mutex::new(()),
        };
        let mut loaded = BTreeMap::new();
        for entry in std::fs::read_dir(dir.join("modules"))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue; // leftovers of an interrupted write
            }
            match registry.load(&path) {
                Ok(module) => {
                    loaded.insert(module.info.name.clone(), Arc::new(module));
                }
                Err(err) => {
                    tracing::error!(path = %path.display(), "skipping stored module: {err:#}")
                }
            }
        }
        *registry.modules.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(registry)
    }

    fn load(&self, meta: &Path) -> Result<LoadedModule> {
        let info: ModuleInfo = serde_json::from_slice(&std::fs::read(meta)?)?;
        validate_name(&info.name).map_err(anyhow::Error::msg)?;
        let names: Vec<Option<String>> = serde_json::from_slice(&std::fs::read(
            self.blob(&info.runnable_sha256, "names.json"),
        )?)?;
        let module = self.compiled(&info.runnable_sha256)?;
        let pre = self.runtime.prepare(&module, info.trap_unknown_imports)?;
        Ok(LoadedModule {
            info,
            pre,
            names: names.into(),
        })
    }

    /// The module compiled for this engine: the stored artifact, or compiled now and stored.
    fn compiled(&self, sha: &str) -> Result<Module> {
        let path = self.artifact(sha);
        if path.exists() {
            // SAFETY: the artifact was produced by `Module::serialize` of this server into its own
            // data directory, and its name pins the engine's compatibility hash.
            #[allow(unsafe_code)]
            match unsafe { Module::deserialize_file(self.runtime.engine(), &path) } {
                Ok(module) => return Ok(module),
                Err(err) => tracing::warn!(path = %path.display(), "recompiling: {err:#}"),
            }
        }
        let wasm = std::fs::read(self.blob(sha, "wasm"))?;
        let module = Module::new(self.runtime.engine(), &wasm)?;
        write_atomic(&path, &module.serialize()?)?;
        Ok(module)
    }

    /// Where the code of module `sha` compiled for this engine is kept.
    fn artifact(&self, sha: &str) -> PathBuf {
        self.dir
            .join("compiled")
            .join(format!("{sha}-{}.cwasm", self.engine_key))
    }

    fn blob(&self, sha: &str, kind: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{sha}.{kind}"))
    }

    /// Instruments, compiles, links and stores `wasm` under `name`, replacing any previous
    /// version atomically. Runs in flight keep the version they started with; on any error the
    /// previous version stays.
    ///
    /// # Errors
    ///
    /// [`UploadError`] says why.
    pub fn upload(
        &self,
        name: &str,
        wasm: &[u8],
        options: UploadOptions,
    ) -> Result<(ModuleInfo, UploadTimings), UploadError> {
        let clock = Instant::now();
        let (runnable, functions, names, tracing) = if options.instrument {
            let out = iota_instrument::instrument(
                wasm,
                Options::new().if_instrumented(IfInstrumented::PassThrough),
            )?;
            let tracing = if out.passed_through {
                Tracing::Preinstrumented
            } else {
                Tracing::Iota
            };
            (out.wasm, out.functions, true, tracing)
        } else {
            // Validated and named like any upload, left as it is.
            let out = iota_instrument::instrument(
                wasm,
                Options::new().if_instrumented(IfInstrumented::PassThrough),
            )?;
            (wasm.to_vec(), out.functions, false, Tracing::None)
        };
        let instrument_ms = ms(clock);

        let clock = Instant::now();
        let module = Module::new(self.runtime.engine(), &runnable)
            .map_err(|e| UploadError::Compile(format!("{e:#}")))?;
        let pre = self
            .runtime
            .prepare(&module, options.trap_unknown_imports)
            .map_err(|e| UploadError::Link(format!("{e:#}")))?;
        let compile_ms = ms(clock);

        let clock = Instant::now();
        let traced_functions = if tracing == Tracing::None {
            0
        } else {
            functions.iter().filter(|f| f.instrumented).count()
        };
        let mut by_id: Vec<Option<String>> = Vec::new();
        if names {
            let len = functions
                .iter()
                .map(|f| f.id as usize + 1)
                .max()
                .unwrap_or(0);
            by_id.resize(len, None);
            for f in &functions {
                by_id[f.id as usize] = Some(f.name.clone());
            }
        }
        let info = ModuleInfo {
            name: name.to_string(),
            sha256: hex::encode(Sha256::digest(wasm)),
            runnable_sha256: hex::encode(Sha256::digest(&runnable)),
            original_size: wasm.len(),
            runnable_size: runnable.len(),
            functions: functions.len(),
            traced_functions,
            tracing,
            trap_unknown_imports: options.trap_unknown_imports,
            spans: options.spans,
            uploaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let sha = &info.runnable_sha256;
        write_atomic(&self.blob(&info.sha256, "wasm"), wasm)?;
        write_atomic(&self.blob(sha, "wasm"), &runnable)?;
        write_atomic(
            &self.blob(sha, "names.json"),
            &serde_json::to_vec(&by_id).context("names")?,
        )?;
        let compiled = self.artifact(sha);
        let artifact = module
            .serialize()
            .map_err(|e| anyhow::anyhow!("serializing compiled code: {e:#}"))?;
        write_atomic(&compiled, &artifact)?;
        let loaded = Arc::new(LoadedModule {
            info: info.clone(),
            pre,
            names: by_id.into(),
        });
        {
            let _switch = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            let meta = self.dir.join("modules").join(format!("{name}.json"));
            write_atomic(
                &meta,
                &serde_json::to_vec_pretty(&info).context("module info")?,
            )?;
            self.modules
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string(), loaded);
        }
        Ok((
            info,
            UploadTimings {
                instrument_ms,
                compile_ms,
                store_ms: ms(clock),
            },
        ))
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

    /// Removes `name`; returns whether it existed.
    ///
    /// # Errors
    ///
    /// If its file cannot be removed.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let _switch = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let existed = self
            .modules
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some();
        if existed {
            let meta = self.dir.join("modules").join(format!("{name}.json"));
            std::fs::remove_file(&meta).with_context(|| format!("removing {}", meta.display()))?;
        }
        Ok(existed)
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
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
