//! The server end to end: the real `iota serve` binary on loopback, driven over HTTP.

mod auth;
mod browser;
mod client;
mod components;
mod corpus;
mod counting;
#[path = "../common/dwarf.rs"]
mod dwarf_module;
mod errors;
mod faults;
mod fleet;
// Shared with the instrumenter tests; the server tests use only part of them.
mod harness;
#[allow(dead_code)]
#[path = "../common/hooks.rs"]
mod hooks;
mod isolation;
mod limits;
mod observe;
mod otlp;
mod otlp_components;
mod profile;
#[path = "../common/programs.rs"]
mod programs;
mod real;
mod runs;
mod sampling;
mod store;
mod tls;
mod volume;
#[allow(dead_code)]
#[path = "../common/wasi.rs"]
mod wasi;
