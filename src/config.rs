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

    /// Directory holding uploaded modules and their compiled artifacts.
    #[arg(long, env = "IOTA_DATA_DIR", default_value = "./iota-data")]
    pub data_dir: PathBuf,

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

    /// Linear memory limit of one run, in MiB.
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

    /// Runs executing at once; more wait their turn.
    #[arg(long, env = "IOTA_MAX_CONCURRENT_RUNS", default_value_t = default_concurrency())]
    pub max_concurrent_runs: usize,

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

    /// Traces kept in memory for GET /traces.
    #[arg(long, env = "IOTA_RECENT_TRACES", default_value_t = 100)]
    pub recent_traces: usize,
}

fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
