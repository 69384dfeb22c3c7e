//! iota: a WebAssembly function host whose every run is traced, function by function.
//!
//! Uploads are instrumented with [`iota_instrument`], compiled once and stored; each run gets a
//! fresh wasmtime store whose enter/exit hooks append to a compact event log, turned into
//! OpenTelemetry spans after the run and exported over OTLP (and kept in memory).
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod registry;
pub mod runtime;
pub mod trace;

pub use config::ServeConfig;
