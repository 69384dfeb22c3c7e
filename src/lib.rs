//! iota: a WebAssembly function host whose every run is traced, function by function.
//!
//! Uploads are instrumented with [`iota_instrument`], compiled once and stored; each run gets a
//! fresh wasmtime store whose enter/exit hooks append to a compact event log, turned into
//! OpenTelemetry spans after the run and exported over OTLP (and kept in memory).
#![deny(missing_docs)]

pub mod api;
pub mod budget;
pub mod client;
pub mod compile;
pub mod config;
pub mod learning;
pub mod registry;
pub mod runs;
pub mod runtime;
pub mod stats;
pub mod store;
pub mod trace;
pub mod web;

pub use config::ServeConfig;
