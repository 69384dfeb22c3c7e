//! `iota`: function-level OpenTelemetry tracing for WebAssembly.

use clap::Parser;

/// Function-level tracing for WebAssembly at the host/guest boundary.
///
/// The server (`iota serve`) is being built; today the rewriter ships as `iota-instrument`.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!(
        "iota {}: instrument modules with `iota-instrument` (see README.md)",
        env!("CARGO_PKG_VERSION")
    );
}
