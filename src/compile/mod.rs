//! Instrumenting and compiling uploads, in a worker process per upload.
//!
//! Uploads are untrusted input to the instrumenter and to Cranelift, and compiling a large
//! module takes every core it is given for tens of seconds. So each upload is handled by a
//! child process (`iota compile-worker`) that runs at a lower CPU priority, on a small number of
//! threads, under an address-space limit, and is killed when it outlives the compile time limit
//! or when the upload is abandoned. A bounded number of uploads compile at once; a bounded
//! number more wait; past that, uploads are refused with `503`.

pub mod worker;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use iota_instrument::FunctionEntry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use worker::{Stage, WorkerReport};

/// How uploads are compiled.
#[derive(Debug, Clone)]
pub struct CompileSettings {
    /// Uploads compiling at once.
    pub concurrent: usize,
    /// Uploads waiting for a turn; more are refused.
    pub queued: usize,
    /// Threads of each compile worker.
    pub threads: usize,
    /// Longest a worker may take.
    pub timeout: Duration,
    /// Address space of a worker, in MiB.
    pub memory_limit_mb: u64,
    /// Functions counted because runs showed them short get a switch back to the hooks, for
    /// audits (see [`crate::learning`]).
    pub learned_switches: bool,
}

/// Runs compile workers, a bounded number at a time.
pub struct Compiler {
    program: PathBuf,
    scratch: PathBuf,
    settings: CompileSettings,
    /// One per upload admitted (compiling or waiting).
    admitted: Arc<Semaphore>,
    /// One per upload compiling.
    compiling: Arc<Semaphore>,
}

/// A place in the upload queue; dropping it gives the place back.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

/// What a worker produced, in a scratch directory removed when this is dropped.
pub struct Compiled {
    /// The module that runs: instrumented, or the upload itself.
    pub runnable: PathBuf,
    /// The upload as received.
    pub original: PathBuf,
    /// Precompiled code for this server's engine.
    pub artifact: PathBuf,
    /// Every defined function, by hook id.
    pub functions: Vec<FunctionEntry>,
    /// The upload was already instrumented (it is its own runnable).
    pub passed_through: bool,
    /// Milliseconds instrumenting (or validating).
    pub instrument_ms: f64,
    /// Milliseconds compiling.
    pub compile_ms: f64,
    /// A core module or a component.
    pub kind: crate::runtime::component::Kind,
    /// What the instrumenter could not use (parts of a `name` section, DWARF).
    pub warnings: Vec<String>,
    _dir: ScratchDir,
}

/// Why a compile did not produce a module.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The upload queue is full.
    #[error("too many uploads in progress ({0} compiling or waiting); retry later")]
    Busy(usize),
    /// The module is not valid, cannot be instrumented, or does not compile.
    #[error("{message}")]
    Refused {
        /// Which stage refused it.
        stage: Stage,
        /// Why.
        message: String,
    },
    /// The worker ran past the compile time limit.
    #[error(
        "instrumenting and compiling the module took longer than the limit of {0:?}; it was stopped"
    )]
    TimedOut(Duration),
    /// The worker ran out of its memory limit.
    #[error(
        "instrumenting and compiling the module needed more than the limit of {0} MiB of memory"
    )]
    OutOfMemory(u64),
    /// The worker could not be started or failed for another reason.
    #[error("compile worker failed: {0}")]
    Worker(String),
}

impl Compiler {
    /// A compiler running `program compile-worker` with scratch space under `scratch`.
    pub fn new(program: PathBuf, scratch: PathBuf, settings: CompileSettings) -> Self {
        let concurrent = settings.concurrent.max(1);
        Compiler {
            program,
            scratch,
            admitted: Arc::new(Semaphore::new(concurrent + settings.queued)),
            compiling: Arc::new(Semaphore::new(concurrent)),
            settings,
        }
    }

    /// A place in the queue, if there is one.
    ///
    /// # Errors
    ///
    /// [`CompileError::Busy`] when the queue is full.
    pub fn admit(&self) -> Result<Admission, CompileError> {
        self.admitted
            .clone()
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| CompileError::Busy(self.settings.concurrent + self.settings.queued))
    }

    /// Uploads compiling now and waiting, for `/metrics`.
    pub fn load(&self) -> (usize, usize) {
        let concurrent = self.settings.concurrent.max(1);
        let compiling = concurrent - self.compiling.available_permits();
        let admitted = concurrent + self.settings.queued - self.admitted.available_permits();
        (compiling, admitted.saturating_sub(compiling))
    }

    /// Waits for a turn, then instruments (unless `instrument` is false: then only validates)
    /// and compiles `wasm` in a worker, naming functions from `symbol_map` first and counting
    /// the functions `count_also` lists whatever the cost model says.
    ///
    /// # Errors
    ///
    /// See [`CompileError`].
    pub async fn compile(
        &self,
        _admission: &Admission,
        wasm: &[u8],
        symbol_map: Option<&str>,
        instrument: bool,
        time_every_call: bool,
        count_also: &[u32],
    ) -> Result<Compiled, CompileError> {
        self.run(wasm, symbol_map, instrument, time_every_call, count_also)
            .await
    }

    /// Compiles a stored runnable module for this server's engine (one another server
    /// uploaded, with an engine of its own) in a worker, as uploads are, when a compile turn is
    /// free. The caller is the server itself, so it takes no place in the upload queue.
    ///
    /// # Errors
    ///
    /// See [`CompileError`].
    pub async fn precompile(&self, wasm: &[u8]) -> Result<Compiled, CompileError> {
        self.run(wasm, None, false, false, &[]).await
    }

    async fn run(
        &self,
        wasm: &[u8],
        symbol_map: Option<&str>,
        instrument: bool,
        time_every_call: bool,
        count_also: &[u32],
    ) -> Result<Compiled, CompileError> {
        let _turn = self
            .compiling
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| CompileError::Worker(e.to_string()))?;
        let dir = ScratchDir::new(&self.scratch).map_err(worker_error)?;
        let original = dir.path.join(worker::INPUT);
        tokio::fs::write(&original, wasm)
            .await
            .map_err(worker_error)?;
        if let Some(map) = symbol_map {
            tokio::fs::write(dir.path.join(worker::SYMBOL_MAP), map)
                .await
                .map_err(worker_error)?;
        }
        if !count_also.is_empty() {
            let ids: Vec<String> = count_also.iter().map(u32::to_string).collect();
            tokio::fs::write(dir.path.join(worker::COUNT_ALSO), ids.join("\n"))
                .await
                .map_err(worker_error)?;
        }
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg("compile-worker")
            .arg("--dir")
            .arg(&dir.path)
            .arg("--memory-limit-mb")
            .arg(self.settings.memory_limit_mb.to_string());
        if !instrument {
            command.arg("--validate-only");
        }
        if !count_also.is_empty() && !self.settings.learned_switches {
            command.arg("--no-learned-switch");
        }
        if time_every_call {
            command.arg("--time-every-call");
        }
        command
            .env(
                "RAYON_NUM_THREADS",
                self.settings.threads.max(1).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(worker_error)?;
        let output = tokio::time::timeout(self.settings.timeout, child.wait_with_output())
            .await
            .map_err(|_| CompileError::TimedOut(self.settings.timeout))?
            .map_err(worker_error)?;
        let report: Option<WorkerReport> = serde_json::from_slice(&output.stdout).ok();
        match report {
            Some(WorkerReport::Compiled {
                functions,
                passed_through,
                instrumented,
                instrument_ms,
                compile_ms,
                kind,
                warnings,
            }) if output.status.success() => Ok(Compiled {
                runnable: if instrumented {
                    dir.path.join(worker::RUNNABLE)
                } else {
                    original.clone()
                },
                original,
                artifact: dir.path.join(worker::ARTIFACT),
                functions,
                passed_through,
                instrument_ms,
                compile_ms,
                kind,
                warnings,
                _dir: dir,
            }),
            Some(WorkerReport::Refused { stage, message }) => {
                Err(CompileError::Refused { stage, message })
            }
            _ => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                // Under its address-space cap, a worker runs out of room either allocating or
                // starting its compile threads (whose stacks no longer fit).
                if stderr.contains("memory allocation of")
                    || stderr.contains("ThreadPoolBuildError")
                {
                    Err(CompileError::OutOfMemory(self.settings.memory_limit_mb))
                } else {
                    Err(CompileError::Worker(format!(
                        "{}: {}",
                        output.status,
                        stderr.trim()
                    )))
                }
            }
        }
    }
}

fn worker_error(error: impl std::fmt::Display) -> CompileError {
    CompileError::Worker(error.to_string())
}

/// A directory of its own under the scratch space, removed with what is left in it on drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(scratch: &Path) -> std::io::Result<Self> {
        let path = scratch.join(format!("upload-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
