//! Conformance of the instrumenter: the WebAssembly spec suite, the fixtures run
//! side by side instrumented and not, generated modules, and the CLI.

mod components;
mod dwarf;
#[path = "../common/dwarf.rs"]
mod dwarf_module;
mod exits;
mod fixtures;
#[path = "../common/hooks.rs"]
mod hooks;
#[path = "../common/programs.rs"]
mod programs;
mod real;
mod smith;
mod spec;
#[path = "../common/wasi.rs"]
mod wasi;
#[path = "../common/wasi_p2.rs"]
mod wasi_p2;
