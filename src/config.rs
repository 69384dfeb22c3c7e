//! `iota serve` settings: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How spans are sent to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over HTTP with protobuf bodies (port 4318).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// OTLP over gRPC (port 4317).
    #[value(name = "grpc")]
    Grpc,
}

/// Settings for the server, validated before it binds.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, env = "IOTA_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// Directory holding uploaded modules and their compiled artifacts (with `--store`: the
    /// local cache of the store and the compile workers' scratch space).
    #[arg(long, env = "IOTA_DATA_DIR", default_value = "./iota-data")]
    pub data_dir: PathBuf,

    /// Module store shared by several servers: `s3://bucket` or `s3://bucket/prefix` in any
    /// S3-compatible store, configured by the standard `AWS_*` variables (endpoint, region,
    /// credentials, `AWS_ALLOW_HTTP`). Default: the data directory, for this server alone.
    #[arg(long, env = "IOTA_STORE")]
    pub store: Option<String>,

    /// How often the store is checked for modules other servers uploaded, replaced or deleted,
    /// in milliseconds.
    #[arg(long, env = "IOTA_STORE_POLL_MS", default_value_t = 1000)]
    pub store_poll_ms: u64,

    /// Limit of one request to the store, retries included, in milliseconds; an upload or
    /// delete that cannot reach the store in time is refused with `503`.
    #[arg(long, env = "IOTA_STORE_TIMEOUT_MS", default_value_t = 10_000)]
    pub store_timeout_ms: u64,

    /// Content of a shared store that nothing refers to is removed once it is this old, in
    /// milliseconds; an upload must switch its version before its first write to the store is
    /// this old, less a collection pass's limit (a quarter of it, 30 s at most).
    #[arg(long, env = "IOTA_STORE_GRACE_MS", default_value_t = 600_000)]
    pub store_grace_ms: u64,

    /// Local copies of a shared store's content kept in the data directory, in MiB, least
    /// recently used dropped first (those of the loaded modules are kept whatever this says).
    #[arg(long, env = "IOTA_CACHE_MAX_MB", default_value_t = 2048)]
    pub cache_max_mb: u64,

    /// This server's `service.instance.id` on its spans and metrics, and the name of its lease
    /// in a shared store (default: the host name and a random suffix).
    #[arg(long, env = "IOTA_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// OTLP collector endpoint; without one, traces are kept in memory only (GET /traces).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: OtlpProtocol,

    /// Wall-clock limit of one run, in milliseconds.
    #[arg(long, env = "IOTA_RUN_TIMEOUT_MS", default_value_t = 10_000)]
    pub run_timeout_ms: u64,

    /// Memory one run may make the server hold, in MiB: its linear memories and tables, and
    /// the host buffers it fills (stdin in flight, stdout, stderr, its trace log).
    #[arg(long, env = "IOTA_MEMORY_LIMIT_MB", default_value_t = 512)]
    pub memory_limit_mb: usize,

    /// Largest stdout a run may produce, in bytes.
    #[arg(long, env = "IOTA_MAX_STDOUT", default_value_t = 16 << 20)]
    pub max_stdout: usize,

    /// Largest captured stderr of a run, in bytes (attached to the trace).
    #[arg(long, env = "IOTA_MAX_STDERR", default_value_t = 64 << 10)]
    pub max_stderr: usize,

    /// Largest upload, in bytes.
    #[arg(long, env = "IOTA_MAX_UPLOAD", default_value_t = 128 << 20)]
    pub max_upload: usize,

    /// Largest `/run` request body (the guest's stdin), in bytes.
    #[arg(long, env = "IOTA_MAX_RUN_BODY", default_value_t = 16 << 20)]
    pub max_run_body: usize,

    /// Runs executing at once; more wait their turn, up to `--run-queue-timeout-ms`.
    #[arg(long, env = "IOTA_MAX_CONCURRENT_RUNS", default_value_t = default_concurrency())]
    pub max_concurrent_runs: usize,

    /// Longest a run waits for a slot before it is refused with `503` and `Retry-After`, in
    /// milliseconds.
    #[arg(long, env = "IOTA_RUN_QUEUE_TIMEOUT_MS", default_value_t = 1000)]
    pub run_queue_timeout_ms: u64,

    /// Runs of a module whose recent runs took less than this (microseconds) start on the
    /// thread that took their request, without a hand-over to the run threads and back; one
    /// still going after it moves to the run threads at its next yield. After four longer runs
    /// in a row, the module's runs start on the run threads again. 0: every run starts there.
    #[arg(long, env = "IOTA_INLINE_RUN_US", default_value_t = 1000)]
    pub inline_run_us: u64,

    /// Uploads instrumented and compiled at once (each in a worker process).
    #[arg(long, env = "IOTA_MAX_CONCURRENT_UPLOADS", default_value_t = 1)]
    pub max_concurrent_uploads: usize,

    /// Uploads waiting for a compile slot; more are refused with `503` and `Retry-After`.
    #[arg(long, env = "IOTA_MAX_QUEUED_UPLOADS", default_value_t = 4)]
    pub max_queued_uploads: usize,

    /// Threads of each compile worker (default: half the cores, at least one).
    #[arg(long, env = "IOTA_COMPILE_THREADS", default_value_t = default_compile_threads())]
    pub compile_threads: usize,

    /// Longest an upload may take to instrument and compile, in milliseconds; the worker is
    /// stopped and the upload refused with `422` past it.
    #[arg(long, env = "IOTA_COMPILE_TIMEOUT_MS", default_value_t = 300_000)]
    pub compile_timeout_ms: u64,

    /// Address space a compile worker may take beyond what it holds as it starts, in MiB
    /// (0: no limit).
    #[arg(long, env = "IOTA_COMPILE_MEMORY_LIMIT_MB", default_value_t = 8192)]
    pub compile_memory_limit_mb: u64,

    /// Hook events (16 bytes each) a run's log holds. A full log drops its shorter calls to keep
    /// the longest of the run; the per-function totals stay exact either way.
    #[arg(long, env = "IOTA_MAX_EVENTS", default_value_t = 1 << 20)]
    pub max_events: usize,

    /// Function spans exported per run: the calls open at a trap first, then the longest, with
    /// their ancestors. Also the most a module may ask for at upload.
    #[arg(long, env = "IOTA_MAX_SPANS", default_value_t = 10_000)]
    pub max_spans: usize,

    /// Calls shorter than this (microseconds) are not spans: their time shows in the caller's
    /// self time, and they still count in the per-function totals. Modules may set their own.
    #[arg(long, env = "IOTA_MIN_SPAN_US", default_value_t = 0)]
    pub min_span_us: u64,

    /// Bearer token required by `POST /upload` and `DELETE /modules/{name}` (none: open).
    #[arg(long, env = "IOTA_UPLOAD_TOKEN", hide_env_values = true)]
    pub upload_token: Option<String>,

    /// Bearer token required by `POST /run` (none: open).
    #[arg(long, env = "IOTA_RUN_TOKEN", hide_env_values = true)]
    pub run_token: Option<String>,

    /// Bearer token required by `GET /modules*`, `/traces*` and `/metrics` (none: open).
    /// `/healthz` stays open.
    #[arg(long, env = "IOTA_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// Time each WASI call the guest makes as a host-call span (`wasi:fd_write`, ...) under
    /// the calling function; `false` turns them off for every module.
    #[arg(long, env = "IOTA_HOST_SPANS", default_value_t = true, action = clap::ArgAction::Set)]
    pub host_spans: bool,

    /// Learn from each module's first runs which functions' calls are short (many calls, a
    /// short mean) and count them from then on instead of timing them, in a version
    /// re-instrumented in the background. Modules may opt out at upload (`learn=false`).
    #[arg(long, env = "IOTA_LEARN", default_value_t = true, action = clap::ArgAction::Set)]
    pub learn: bool,

    /// Runs of a module version to watch before learning.
    #[arg(long, env = "IOTA_LEARN_AFTER_RUNS", default_value_t = 3)]
    pub learn_after_runs: u64,

    /// Timed calls of a module version to watch before learning.
    #[arg(long, env = "IOTA_LEARN_AFTER_CALLS", default_value_t = 100_000)]
    pub learn_after_calls: u64,

    /// Functions whose mean call was at most this long (nanoseconds) are counted after learning.
    #[arg(long, env = "IOTA_LEARN_MEAN_NS", default_value_t = 1_000)]
    pub learn_mean_ns: u64,

    /// ... if they made at least this many calls while watched.
    #[arg(long, env = "IOTA_LEARN_MIN_CALLS", default_value_t = 1_000)]
    pub learn_min_calls: u64,

    /// In each run of a learned version, each learned function is timed again with a chance of
    /// one in this many, to check that it stays short (0: never; learned versions then carry no
    /// switch, so a learned call costs no more than a counted one).
    #[arg(long, env = "IOTA_LEARN_AUDIT_EVERY", default_value_t = 100)]
    pub learn_audit_every: u64,

    /// Traces kept in memory for GET /traces.
    #[arg(long, env = "IOTA_RECENT_TRACES", default_value_t = 100)]
    pub recent_traces: usize,
}

fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn default_compile_threads() -> usize {
    (default_concurrency() / 2).max(1)
}

impl ServeConfig {
    /// Checks what flags cannot say alone.
    ///
    /// # Errors
    ///
    /// Names the flag whose value cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_runs == 0 {
            return Err("--max-concurrent-runs must be at least 1".into());
        }
        if self.max_concurrent_uploads == 0 {
            return Err("--max-concurrent-uploads must be at least 1".into());
        }
        if self.compile_threads == 0 {
            return Err("--compile-threads must be at least 1".into());
        }
        if self.memory_limit_mb == 0 {
            return Err("--memory-limit-mb must be at least 1".into());
        }
        if self.store_poll_ms == 0 || self.store_timeout_ms == 0 {
            return Err("--store-poll-ms and --store-timeout-ms must be at least 1".into());
        }
        if self.store_grace_ms < 1000 {
            return Err("--store-grace-ms must be at least 1000".into());
        }
        if let Some(id) = &self.instance_id {
            check_instance_id(id)?;
        }
        Ok(())
    }

    /// This server's instance id: `--instance-id`, or the host name and a random suffix (a
    /// pod's name on Kubernetes, unique among processes on one machine).
    pub fn instance_id(&self) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| {
                h.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
                    .take(64)
                    .collect::<String>()
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "iota".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    }
}

/// An instance id names an object in the store: `[A-Za-z0-9_.-]{1,128}`.
fn check_instance_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--instance-id {id:?}: use 1 to 128 characters from A-Z a-z 0-9 _ . -"
        ))
    }
}
