//! Rewrites a WebAssembly module so that every defined function reports its entry and
//! every exit to the host, through the hook ABI of Dylibso's Observe SDK.
//!
//! The rewrite is a single streaming pass (`wasmparser` in, `wasm-encoder` out): three
//! function imports are appended after the module's own imports
//! (`dylibso:observe/instrument` `enter`, `exit`, `memory-grow`, all `(i32) -> ()`),
//! defined functions shift past them everywhere they are referenced, and each body is
//! wrapped so that fall-through, branches to the function label, `return`, tail calls and
//! escaping exceptions all call `exit` exactly once. The hook id is the function's index in
//! the output module.
//!
//! # Examples
//!
//! ```
//! let wasm = wat::parse_str(r#"(module (func (export "f") (result i32) i32.const 7))"#)?;
//! let out = iota_instrument::instrument(&wasm, &iota_instrument::Options::new())?;
//! assert_eq!(out.functions[0].name, "f");
//! assert!(iota_instrument::is_instrumented(&out.wasm)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod abi;
mod bodies;
mod body;
mod error;
mod facts;
mod names;
mod options;
mod rewrite;

pub use abi::{
    ENTER, EXIT, HOOK_MODULE, LEGACY_ENTER, LEGACY_EXIT, LEGACY_HOOK_MODULE, LEGACY_MEMORY_GROW,
    MARKER_SECTION, MEMORY_GROW, is_trace_hook,
};
pub use error::{Error, ErrorKind, Result};
pub use names::{FunctionEntry, demangle, fallback_name};
pub use options::{IfInstrumented, Options};

use wasm_encoder::reencode::Reencode;
use wasmparser::Parser;

use facts::ModuleFacts;
use options::Selector;

/// The result of [`instrument`].
#[derive(Debug, Clone)]
pub struct Instrumented {
    /// The instrumented module.
    pub wasm: Vec<u8>,
    /// Every defined function, in index order, with the id it reports under.
    pub functions: Vec<FunctionEntry>,
    /// The input was already instrumented and is returned unchanged
    /// (only with [`IfInstrumented::PassThrough`]).
    pub passed_through: bool,
}

/// Instruments every selected function of `wasm`.
///
/// The input is validated first, with every WebAssembly proposal that `wasmparser` knows
/// enabled. The output is deterministic: the same bytes and options give the same module.
///
/// # Errors
///
/// [`ErrorKind::Invalid`] (with the byte offset) if `wasm` is not a valid module,
/// [`ErrorKind::Component`] for a component, [`ErrorKind::AlreadyInstrumented`] if it
/// already calls the hooks (unless [`IfInstrumented::PassThrough`]), and
/// [`ErrorKind::Pattern`] for a bad include/exclude glob.
pub fn instrument(wasm: &[u8], options: &Options) -> Result<Instrumented> {
    let selector = options.selector()?;
    if Parser::is_component(wasm) {
        return Err(Error::new(ErrorKind::Component).at(0));
    }
    let pending = bodies::validate_module(wasm)?;
    let facts = ModuleFacts::gather(wasm)?;

    if facts.already_instrumented {
        bodies::validate_bodies(pending)?;
        return match options.instrumented_policy() {
            IfInstrumented::Fail => Err(Error::new(ErrorKind::AlreadyInstrumented)),
            IfInstrumented::PassThrough => Ok(Instrumented {
                wasm: wasm.to_vec(),
                functions: function_map(&facts, &selector, 0),
                passed_through: true,
            }),
        };
    }

    let functions = function_map(&facts, &selector, abi::HOOKS.len() as u32);
    let selected = functions.iter().map(|f| f.instrumented).collect();
    let mut rewriter = rewrite::Rewriter::new(wasm, &facts, selected, options.keeps_debug())?;
    // Bodies are rewritten for standard exception handling; a module that turns out to use the
    // legacy instructions gets them rewritten again in its own style.
    let originals = rewriter
        .may_throw()
        .then(|| bodies::function_bodies(&pending));
    let (mut rewritten, legacy) = bodies::rewrite_bodies(&rewriter, pending)?;
    if legacy && let Some(originals) = originals {
        rewriter.use_legacy_exceptions();
        rewritten = bodies::rewrite_validated(&rewriter, &originals)?;
    }
    rewriter.set_bodies(rewritten);
    let mut module = wasm_encoder::Module::new();
    rewriter.parse_core_module(&mut module, Parser::new(0), wasm)?;
    Ok(Instrumented {
        wasm: module.finish(),
        functions,
        passed_through: false,
    })
}

/// Whether `wasm` already reports to enter/exit hooks: it carries the marker section of
/// [`instrument`], or imports the hooks under the current or legacy Observe SDK names.
///
/// # Errors
///
/// [`ErrorKind::Invalid`] if the module's sections cannot be read.
pub fn is_instrumented(wasm: &[u8]) -> Result<bool> {
    facts::is_instrumented(wasm)
}

/// The function map; ids are shifted by `shift` for defined functions.
fn function_map(facts: &ModuleFacts<'_>, selector: &Selector, shift: u32) -> Vec<FunctionEntry> {
    (0..facts.defined_types.len())
        .map(|slot| {
            let original_index = facts.imported_funcs + slot as u32;
            let raw_name = facts.names[slot].or(facts.exports[slot]);
            let name = raw_name.map_or_else(|| fallback_name(original_index), demangle);
            let instrumented = selector.selects_all()
                || selector.selects(&[name.as_str(), raw_name.unwrap_or(&name)]);
            FunctionEntry {
                id: original_index + shift,
                original_index,
                name,
                raw_name: raw_name.map(str::to_string),
                instrumented,
            }
        })
        .collect()
}
