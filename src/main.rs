//! `iota`: function-level OpenTelemetry tracing for WebAssembly.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use iota::api::{AppState, Counters, app};
use iota::registry::Registry;
use iota::runtime::{RunLimits, Runtime};
use iota::trace::SpanVolume;
use iota::trace::export::Exporter;
use iota::trace::recent::RecentTraces;
use iota::{ServeConfig, config::OtlpProtocol};
use tokio::sync::Semaphore;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

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
    Serve(ServeConfig),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(config) => serve(config),
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
    if config.max_concurrent_runs == 0 {
        anyhow::bail!("--max-concurrent-runs must be at least 1");
    }
    let runtime = Runtime::new(RunLimits::from_config(&config))?;
    let registry = Registry::open(&config.data_dir, runtime.clone())
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    let exporter = match &config.otlp_endpoint {
        Some(endpoint) => {
            let protocol = match config.otlp_protocol {
                OtlpProtocol::Grpc => "grpc",
                OtlpProtocol::HttpProtobuf => "http/protobuf",
            };
            tracing::info!(endpoint, protocol, "exporting spans over OTLP");
            Some(Exporter::start(endpoint, config.otlp_protocol)?)
        }
        None => {
            tracing::info!("no OTLP endpoint: traces are kept in memory (GET /traces)");
            None
        }
    };
    let modules = registry.list().len();
    let state = Arc::new(AppState {
        registry,
        runtime,
        runs: Semaphore::new(config.max_concurrent_runs),
        exporter,
        recent: RecentTraces::new(config.recent_traces),
        spans: SpanVolume {
            max_spans: config.max_spans,
            min_span_us: config.min_span_us,
        },
        max_upload: config.max_upload,
        max_run_body: config.max_run_body,
        counters: Counters::default(),
        upload_token: config.upload_token.clone().filter(|t| !t.is_empty()),
        run_token: config.run_token.clone().filter(|t| !t.is_empty()),
    });

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
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
    // Requests are done: flush what is queued for the collector.
    if let Some(mut state) = Arc::into_inner(state)
        && let Some(exporter) = state.exporter.as_mut()
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
