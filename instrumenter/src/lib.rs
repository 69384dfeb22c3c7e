//! Rewrites a WebAssembly module so that every defined function reports its entry and
//! every exit to the host, through the hook ABI of Dylibso's Observe SDK.
//!
//! The rewrite is a single streaming pass (`wasmparser` in, `wasm-encoder` out): three
//! function imports are appended after the module's own imports
//! (`dylibso:observe/instrument` `enter`, `exit`, `memory-grow`, all `(i32) -> ()`),
//! defined functions shift past them everywhere they are referenced, and each body is
//! wrapped so that fall-through, branches to the function label, `return`, tail calls and
//! exceptions that unwind it all call `exit` exactly once (the exception handler goes only on
//! functions an exception can unwind; see [`UnwindExits`]). The hook id is the function's
//! index in the output module. Input is validated with [`features`]; what cannot be
//! instrumented is refused with an [`ErrorKind`] that says why.
//!
//! A component comes out a component: every core module inside it (nested components too) is
//! rewritten as above, ids are unique across the component ([`FunctionEntry::module`] says
//! which module a function belongs to), and the hooks are one imported interface,
//! `dylibso:observe/instrument` with `enter: func(id: u32)`, `exit: func(id: u32)` and
//! `memory-grow: func(pages: u32)`, lowered into each core instance that needs it.
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
mod component;
mod cost;
mod dwarf;
mod error;
mod facts;
mod features;
mod names;
mod options;
mod rewrite;
mod unwind;

pub use abi::{
    COUNTER_EXPORT_PREFIX, COUNTS, COUNTS_MODULE, COUNTS_PER_CALL, ENTER, EXIT, HOOK_MODULE,
    LEGACY_ENTER, LEGACY_EXIT, LEGACY_HOOK_MODULE, LEGACY_MEMORY_GROW, MARKER_SECTION, MEMORY_GROW,
    SWITCH_EXPORT_PREFIX, is_trace_hook,
};
pub use component::{component_features, is_component};
pub use cost::{TimedBecause, Timing};
pub use dwarf::SourceInfo;
pub use error::{Error, ErrorKind, Result, Warning};
pub use features::features;
pub use names::{FunctionEntry, demangle, fallback_name};
pub use options::{CallTiming, IfInstrumented, Options, SymbolMap, UnwindExits};

use wasm_encoder::reencode::Reencode;
use wasmparser::Parser;

use facts::ModuleFacts;

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
    /// What could not be kept (parts of a malformed `name` section, ...); the output is valid.
    pub warnings: Vec<Warning>,
}

/// Instruments every selected function of `wasm`.
///
/// The input is validated first, with the WebAssembly proposals the rewrite supports
/// ([`features`]). The output is deterministic: the same bytes and options give the same
/// module. Debug builds validate the output too. A component ([`is_component`]) is validated
/// with [`component_features`] and instrumented module by module.
///
/// # Errors
///
/// [`ErrorKind::Invalid`] (with the byte offset, and the function index for an invalid body:
/// the lowest one if several are) if `wasm` is not a valid module, [`ErrorKind::Unsupported`]
/// if it uses a proposal the rewrite does not support, [`ErrorKind::ComponentUnsupported`] for
/// a component that cannot be instrumented, [`ErrorKind::ObjectFile`] for a relocatable object file,
/// [`ErrorKind::HookConflict`] if it imports a hook name with another kind or type,
/// [`ErrorKind::AlreadyInstrumented`] if it already calls the hooks (unless
/// [`IfInstrumented::PassThrough`]), and [`ErrorKind::Pattern`] for a bad include/exclude glob.
pub fn instrument(wasm: &[u8], options: &Options) -> Result<Instrumented> {
    if Parser::is_component(wasm) {
        return component::instrument(wasm, options);
    }
    let selector = options.selector()?;
    if !wasm.starts_with(b"\0asm") {
        return Err(Error::new(ErrorKind::Invalid(
            "not a WebAssembly module (it does not start with `\\0asm`)".into(),
        ))
        .at(0));
    }
    let pending = bodies::validate_module(wasm)?;
    let mut facts = ModuleFacts::gather(wasm)?;
    if let Some(err) = facts.object_file.take().or(facts.hook_conflict.take()) {
        return Err(err);
    }
    let sources = facts.source_info();
    let warnings = std::mem::take(&mut facts.warnings);
    let names = Names {
        facts: &facts,
        symbols: options.symbols(),
        sources: &sources,
    };

    if facts.already_instrumented {
        let calls_enter =
            bodies::check_bodies(wasm, facts.imported_funcs, pending, &facts.enter_hooks)?;
        return match options.instrumented_policy() {
            IfInstrumented::Fail => Err(Error::new(ErrorKind::AlreadyInstrumented)),
            IfInstrumented::PassThrough => {
                let mut functions =
                    names.function_map(options.id_base, |slot, _| calls_enter[slot]);
                for f in &mut functions {
                    if facts.counted_ids.contains(&(f.id - options.id_base)) {
                        f.instrumented = true;
                        f.timing = Timing::Counted;
                    }
                }
                Ok(Instrumented {
                    wasm: wasm.to_vec(),
                    functions,
                    passed_through: true,
                    warnings,
                })
            }
        };
    }

    let report_start = reported_start(&facts, options);
    let functions = names.function_map(abi::HOOKS.len() as u32 + options.id_base, |_, names| {
        selector.selects_all() || selector.selects(names)
    });
    let selected: Vec<bool> = functions.iter().map(|f| f.instrumented).collect();
    let mut rewriter = rewrite::Rewriter::new(
        wasm,
        &facts,
        selected.clone(),
        options.unwind(),
        options.keeps_debug(),
        report_start,
    )?;
    rewriter.id_base = options.id_base;
    let mut rewritten = bodies::rewrite_bodies(&rewriter, pending)?;
    let timing = match options.timing() {
        CallTiming::EveryCall => selected
            .iter()
            .map(|&s| {
                if s {
                    Timing::Timed(TimedBecause::EveryCall)
                } else {
                    Timing::Untraced
                }
            })
            .collect(),
        CallTiming::ShortCallsCounted { budget } => {
            let body_facts: Vec<_> = rewritten.iter().map(|r| &r.facts).collect();
            let mut timing = cost::classify(facts.imported_funcs, &body_facts, &selected, budget);
            for &id in options.counted_also() {
                let slot = id
                    .checked_sub(options.id_base + facts.imported_funcs + abi::HOOKS.len() as u32);
                if let Some(t) = slot.and_then(|s| timing.get_mut(s as usize))
                    && matches!(t, Timing::Timed(_))
                {
                    *t = Timing::Learned;
                }
            }
            timing
        }
    };
    let counted: Vec<bool> = timing.iter().map(|t| t.is_counted()).collect();
    let mut twins = Vec::new();
    if counted.contains(&true) {
        let switch = options.counted_also_switch();
        let switchable: Vec<bool> = timing
            .iter()
            .map(|t| switch && *t == Timing::Learned)
            .collect();
        rewriter.count_calls(&counted, &switchable);
        twins = bodies::recount_bodies(&rewriter, &facts.bodies, &counted, &mut rewritten)?;
    }
    rewriter.set_bodies(rewritten, twins);
    let mut functions = functions;
    for (f, timing) in functions.iter_mut().zip(timing) {
        f.timing = timing;
    }
    let mut module = wasm_encoder::Module::new();
    rewriter.parse_core_module(&mut module, Parser::new(0), wasm)?;
    let wasm = module.finish();
    if cfg!(debug_assertions) {
        wasmparser::Validator::new_with_features(features())
            .validate_all(&wasm)
            .map_err(|e| Error::new(ErrorKind::InvalidOutput(e.to_string())))?;
    }
    Ok(Instrumented {
        wasm,
        functions,
        passed_through: false,
        warnings,
    })
}

/// The defined slot of the `_start` whose export gets a wrapper that reports the counters: when
/// `options` ask for it, calls can be counted, and `_start` has the command type `[] -> []`.
fn reported_start(facts: &ModuleFacts<'_>, options: &Options) -> Option<usize> {
    if !options.reports_counts() || options.timing() == CallTiming::EveryCall {
        return None;
    }
    let slot = facts.exports.iter().position(|e| *e == Some("_start"))?;
    let ty = facts
        .types
        .get(facts.defined_types[slot] as usize)?
        .as_ref()?;
    (ty.params.is_empty() && ty.results.is_empty()).then_some(slot)
}

/// Whether `wasm` already reports to enter/exit hooks: it carries the marker section of
/// [`instrument`], or imports the hooks under the current or legacy Observe SDK names.
///
/// # Errors
///
/// [`ErrorKind::Invalid`] if the module's sections cannot be read.
pub fn is_instrumented(wasm: &[u8]) -> Result<bool> {
    if Parser::is_component(wasm) {
        return component::is_instrumented(wasm);
    }
    facts::is_instrumented(wasm)
}

/// Every source of function names, in the order they are trusted.
struct Names<'a> {
    facts: &'a ModuleFacts<'a>,
    symbols: Option<&'a SymbolMap>,
    sources: &'a [SourceInfo],
}

impl Names<'_> {
    /// The raw name of the function in `slot`: symbol map, `name` section, DWARF, export.
    fn raw(&self, slot: usize) -> Option<&str> {
        let index = self.facts.imported_funcs + slot as u32;
        self.symbols
            .and_then(|map| map.name(index))
            .or(self.facts.names[slot])
            .or(self.sources[slot].name.as_deref())
            .or(self.facts.exports[slot])
    }

    /// The function map; ids are shifted by `shift` for defined functions, and `instrumented`
    /// says, from a function's slot and names (demangled, raw), whether it reports to the
    /// hooks.
    fn function_map(
        &self,
        shift: u32,
        instrumented: impl Fn(usize, &[&str]) -> bool,
    ) -> Vec<FunctionEntry> {
        (0..self.facts.defined_types.len())
            .map(|slot| {
                let original_index = self.facts.imported_funcs + slot as u32;
                let raw_name = self.raw(slot);
                let name = raw_name.map_or_else(|| fallback_name(original_index), demangle);
                let instrumented = instrumented(slot, &[name.as_str(), raw_name.unwrap_or(&name)]);
                let source = &self.sources[slot];
                FunctionEntry {
                    id: original_index + shift,
                    original_index,
                    name,
                    raw_name: raw_name.map(str::to_string),
                    instrumented,
                    timing: if instrumented {
                        Timing::Timed(TimedBecause::EveryCall)
                    } else {
                        Timing::Untraced
                    },
                    file: source.file.clone(),
                    line: source.line,
                    column: source.column,
                    module: None,
                }
            })
            .collect()
    }
}
