//! Components: a component in, a component out.
//!
//! Every core module inside the component, in nested components too, is rewritten exactly as
//! a core module is ([`crate::instrument`]), with function ids unique across the whole
//! component: each module's ids start above the previous module's, and the function map says
//! which module (`FunctionEntry::module`, counted in the order modules appear in the binary)
//! each function belongs to. The hooks become one import of every component that holds
//! instrumented code, the instance `dylibso:observe/instrument` with `enter: func(id: u32)`,
//! `exit: func(id: u32)` and `memory-grow: func(pages: u32)`, lowered and handed to each core
//! instance that needs them; a nested component gets its parent's. How the hooks stay out of
//! the way of the canonical ABI's `realloc` and `post-return` is told in [`adapter`]. A function a
//! core module names only by its export takes the name the component gives it ([`names`]).

mod adapter;
mod names;
mod rewrite;
mod scan;

use wasmparser::{Parser, Payload};

use crate::Instrumented;
use crate::abi;
use crate::error::{Error, ErrorKind, Result};
use crate::options::{IfInstrumented, Options};

/// Whether `wasm` is a component (rather than a core module): what [`crate::instrument`]
/// looks at to choose the rewrite.
pub fn is_component(wasm: &[u8]) -> bool {
    Parser::is_component(wasm)
}

/// The WebAssembly proposals a component may use: the component model, the component-model
/// extensions `wasmparser` enables by default, and in its core modules those of
/// [`features`](crate::features).
pub fn component_features() -> wasmparser::WasmFeatures {
    scan::component_features()
}

/// Instruments every core module of the component `wasm`.
pub(crate) fn instrument(wasm: &[u8], options: &Options) -> Result<Instrumented> {
    options.selector()?;
    if options.symbols().is_some() {
        return Err(Error::new(ErrorKind::ComponentUnsupported {
            reason: "a symbol map names the functions of one core module, and a component \
                     holds several"
                .into(),
        }));
    }
    let scan = scan::scan(wasm)?;
    if scan.already_instrumented {
        return match options.instrumented_policy() {
            IfInstrumented::Fail => Err(Error::new(ErrorKind::AlreadyInstrumented)),
            IfInstrumented::PassThrough => pass_through(wasm, options),
        };
    }
    let mut rewriter = rewrite::ComponentRewriter::new(options, &scan);
    let mut component = wasm_encoder::Component::new();
    rewriter.component(&mut component, Parser::new(0), wasm, wasm)?;
    component.section(&wasm_encoder::CustomSection {
        name: abi::MARKER_SECTION.into(),
        data: concat!("iota-instrument ", env!("CARGO_PKG_VERSION"))
            .as_bytes()
            .into(),
    });
    let out = component.finish();
    if cfg!(debug_assertions) {
        wasmparser::Validator::new_with_features(component_features())
            .validate_all(&out)
            .map_err(|e| Error::new(ErrorKind::InvalidOutput(e.to_string())))?;
    }
    let mut functions = rewriter.functions;
    names::apply(wasm, &mut functions, |_| Ok(false))?;
    Ok(Instrumented {
        wasm: out,
        functions,
        passed_through: false,
        warnings: rewriter.warnings,
    })
}

/// An instrumented component, unchanged, with the function map of its modules.
fn pass_through(wasm: &[u8], options: &Options) -> Result<Instrumented> {
    let mut options = options.clone();
    options.if_instrumented(IfInstrumented::PassThrough);
    let mut functions = Vec::new();
    let mut warnings = Vec::new();
    let mut ordinal = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::ModuleSection {
            unchecked_range, ..
        } = payload?
        {
            let module = &wasm[unchecked_range.start as usize..unchecked_range.end as usize];
            if is_adapter(module)? {
                continue;
            }
            options.id_base = functions
                .last()
                .map_or(0, |f: &crate::FunctionEntry| f.id + 1);
            let out = crate::instrument(module, &options)
                .map_err(|e| e.in_module(ordinal, unchecked_range.start))?;
            let instrumented = out.passed_through;
            functions.extend(out.functions.into_iter().map(|mut f| {
                f.module = Some(ordinal);
                f.instrumented &= instrumented;
                f
            }));
            warnings.extend(out.warnings);
            ordinal += 1;
        }
    }
    names::apply(wasm, &mut functions, is_adapter)?;
    Ok(Instrumented {
        wasm: wasm.to_vec(),
        functions,
        passed_through: true,
        warnings,
    })
}

/// Whether `module` is one the rewrite added (it carries [`adapter::ADAPTER_SECTION`]).
fn is_adapter(module: &[u8]) -> Result<bool> {
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::CustomSection(section) = payload?
            && section.name() == adapter::ADAPTER_SECTION
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the component carries the marker section or imports the hooks at its top level.
pub(crate) fn is_instrumented(wasm: &[u8]) -> Result<bool> {
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::CustomSection(section)
                if depth == 1 && section.name() == abi::MARKER_SECTION =>
            {
                return Ok(true);
            }
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    if import?.name.name == abi::HOOK_MODULE {
                        return Ok(true);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(false)
}
