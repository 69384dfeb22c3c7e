//! The server end to end: the real `iota serve` binary on loopback, driven over HTTP.

mod errors;
mod harness;
mod otlp;
mod runs;
mod store;
