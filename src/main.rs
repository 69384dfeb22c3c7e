//! `iota`: function-level OpenTelemetry tracing for WebAssembly.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use iota::api::{AppState, Tokens, UploadCounters, app};
use iota::compile::worker::WorkerArgs;
use iota::compile::{CompileSettings, Compiler};
use iota::learning::{LearnRequest, LearnSettings};
use iota::registry::{Registry, RegistrySettings};
use iota::runs::{RunCounters, RunSlots, TraceSinks};
use iota::runtime::{RunLimits, Runtime};
use iota::store::Store;
use iota::store::local::LocalStore;
use iota::store::s3::S3Store;
use iota::trace::SpanVolume;
use iota::trace::export::Exporter;
use iota::trace::recent::RecentTraces;
use iota::trace::sampling::Sampler;
use iota::{ServeConfig, config::OtlpProtocol};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

/// Requests allocate on one thread and free on another (a trace, the request's buffers): with
/// glibc's allocator the HTTP threads sometimes waited on each other's arena locks, and a
/// request cost up to 1.7 times as much CPU. mimalloc's per-thread heaps do not wait.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Function-level tracing for WebAssembly, at the host/guest boundary.
#[derive(Parser, Debug)]
#[command(version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve uploads and runs over HTTP; every run is traced.
    Serve(Box<ServeConfig>),
    /// Instrument and compile one upload (started by `iota serve`).
    #[command(hide = true)]
    CompileWorker(WorkerArgs),
    /// Client commands against a running server.
    #[command(flatten)]
    Client(iota::client::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The store client logs each retry; the registry logs the store going away once.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,object_store=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(config) => serve(*config),
        Command::CompileWorker(args) => iota::compile::worker::run(&args),
        Command::Client(command) => return iota::client::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(config: ServeConfig) -> Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let runtime = Runtime::new(RunLimits::from_config(&config))?;
    let program = std::env::current_exe().context("locating the iota binary")?;
    let compile = CompileSettings {
        concurrent: config.max_concurrent_uploads,
        queued: config.max_queued_uploads,
        threads: config.compile_threads,
        timeout: Duration::from_millis(config.compile_timeout_ms),
        memory_limit_mb: config.compile_memory_limit_mb,
        learned_switches: config.learn_audit_every > 0,
    };
    let learn = LearnSettings {
        enabled: config.learn,
        after_runs: config.learn_after_runs,
        after_calls: config.learn_after_calls,
        mean_ns: config.learn_mean_ns,
        min_calls: config.learn_min_calls,
        audit_every: config.learn_audit_every,
    };
    let instance = config.instance_id();
    let request_timeout = Duration::from_millis(config.store_timeout_ms);
    let store: Arc<dyn Store> = match &config.store {
        None => Arc::new(
            LocalStore::open(&config.data_dir)
                .with_context(|| format!("opening data directory {}", config.data_dir.display()))?,
        ),
        Some(url) => Arc::new(S3Store::new(url, request_timeout)?),
    };
    let location = store.location();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let settings = RegistrySettings {
        data_dir: config.data_dir.clone(),
        instance: instance.clone(),
        poll: Duration::from_millis(config.store_poll_ms),
        grace: Duration::from_millis(config.store_grace_ms),
        request_timeout,
        cache_max_bytes: config.cache_max_mb.saturating_mul(1 << 20),
    };
    let registry = tokio
        .block_on(Registry::open(
            store,
            settings,
            runtime.clone(),
            learn,
            |scratch| Compiler::new(program, scratch.to_path_buf(), compile),
        ))
        .with_context(|| format!("opening the module store ({location})"))?;
    let registry = Arc::new(registry);
    tracing::info!(store = location, instance, "module store open");
    let exporter = match &config.otlp_endpoint {
        Some(endpoint) => {
            let protocol = match config.otlp_protocol {
                OtlpProtocol::Grpc => "grpc",
                OtlpProtocol::HttpProtobuf => "http/protobuf",
            };
            tracing::info!(endpoint, protocol, "exporting spans over OTLP");
            Some(Exporter::start(endpoint, config.otlp_protocol, &instance)?)
        }
        None => {
            tracing::info!("no OTLP endpoint: traces are kept in memory (GET /traces)");
            None
        }
    };
    // Runs get threads of their own, so guests computing never hold up the HTTP side.
    let executor = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.max_concurrent_runs)
        .thread_name("iota-run")
        .enable_all()
        .build()
        .context("starting the run threads")?;
    let modules = registry.list().len();
    let sinks = Arc::new(TraceSinks {
        recent: RecentTraces::new(config.recent_traces),
        exporter,
        counters: RunCounters::default(),
        stats: Default::default(),
    });
    let non_empty = |token: &Option<String>| token.clone().filter(|t| !t.is_empty());
    let (learner, mut lessons) = tokio::sync::mpsc::unbounded_channel::<LearnRequest>();
    let state = Arc::new(AppState {
        registry,
        runtime,
        runs: RunSlots::new(
            config.max_concurrent_runs,
            Duration::from_millis(config.run_queue_timeout_ms),
        ),
        executor: executor.handle().clone(),
        inline_run: Duration::from_micros(config.inline_run_us),
        sinks: sinks.clone(),
        spans: SpanVolume {
            max_spans: config.max_spans,
            min_span_us: config.min_span_us,
        },
        max_upload: config.max_upload,
        max_run_body: config.max_run_body,
        uploads: UploadCounters::default(),
        tokens: Tokens {
            upload: non_empty(&config.upload_token),
            run: non_empty(&config.run_token),
            read: non_empty(&config.read_token),
        },
        sampler: Sampler::from_env(),
        learner,
    });

    let maintenance = tokio.spawn(state.registry.clone().maintain());
    tokio.block_on(async {
        // Versions that learned which calls are short are re-instrumented one at a time.
        let learning = state.clone();
        tokio::spawn(async move {
            while let Some(lesson) = lessons.recv().await {
                learning
                    .registry
                    .learn(&lesson.name, lesson.from, lesson.ids)
                    .await;
            }
        });
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        println!("iota listening on http://{addr} ({modules} modules loaded)");
        // The access log is at debug (`RUST_LOG=tower_http=debug`): a synchronous line per
        // request showed in profiles of `/run` under load. Server errors still log at error.
        let router = app(state.clone()).layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG)),
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // Requests are done, and with them their runs: flush what is queued for the collector.
    maintenance.abort();
    drop(state);
    executor.shutdown_timeout(Duration::from_secs(1));
    if let Some(mut sinks) = Arc::into_inner(sinks)
        && let Some(exporter) = sinks.exporter.as_mut()
    {
        exporter.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
