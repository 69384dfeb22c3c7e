//! A first pass over a component: validation (every section, each core module's sections
//! included; function bodies are validated when they are rewritten) and the facts the rewrite
//! needs before it starts.

use wasmparser::{
    ComponentAlias, ComponentOuterAliasKind, Encoding, Parser, Payload, ValType, ValidPayload,
    Validator, WasmFeatures,
};

use crate::abi;
use crate::error::{Error, ErrorKind, Result};

/// Parameters and results of a core function.
pub(crate) type CoreSig = (Vec<ValType>, Vec<ValType>);

/// What the rewrite must know about one component (the top level or a nested one), in the
/// order components start in the binary.
#[derive(Default)]
pub(crate) struct ComponentFacts {
    /// It defines a core module, reaches one of its parent's by an outer alias, or holds a
    /// component that needs the hooks: it imports them and hands them on.
    pub needs_hooks: bool,
    /// The type of each of its core functions, by index in the input.
    pub core_funcs: Vec<CoreSig>,
}

/// What the scan found.
pub(crate) struct Scan {
    /// Every component, top level first, in the order they start.
    pub components: Vec<ComponentFacts>,
    /// The top level carries the marker section or imports the hook interface.
    pub already_instrumented: bool,
}

/// The proposals a component may use: those of core modules ([`crate::features`]), the
/// component model, and the component-model extensions `wasmparser` enables by default.
pub(crate) fn component_features() -> WasmFeatures {
    let mut features = crate::features();
    features.insert(WasmFeatures::COMPONENT_MODEL);
    for (name, feature) in WasmFeatures::default().iter_names() {
        if name.starts_with("CM_") {
            features.insert(feature);
        }
    }
    features
}

/// Validates `wasm` (a component) but for function bodies, and gathers the facts.
pub(crate) fn scan(wasm: &[u8]) -> Result<Scan> {
    let mut validator = Validator::new_with_features(component_features());
    let mut components: Vec<ComponentFacts> = Vec::new();
    // The encodings being read, innermost last, with the component's position in
    // `components` (none for a module).
    let mut open: Vec<Option<usize>> = Vec::new();
    let mut already_instrumented = false;
    // A nested component imports the hooks (fine only inside an instrumented component).
    let mut nested_hooks = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let depth = open.len();
        match &payload {
            Payload::Version { encoding, .. } => {
                if *encoding == Encoding::Component {
                    open.push(Some(components.len()));
                    components.push(ComponentFacts::default());
                } else {
                    open.push(None);
                }
            }
            Payload::ModuleSection { .. } => {
                if let Some(Some(at)) = open.last() {
                    components[*at].needs_hooks = true;
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader.clone() {
                    if let ComponentAlias::Outer {
                        kind:
                            ComponentOuterAliasKind::CoreModule | ComponentOuterAliasKind::Component,
                        ..
                    } = alias?
                        && let Some(Some(at)) = open.last()
                    {
                        components[*at].needs_hooks = true;
                    }
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader.clone() {
                    let import = import?;
                    if import.name.name == abi::HOOK_MODULE {
                        if depth == 1 {
                            already_instrumented = true;
                        } else {
                            nested_hooks = true;
                        }
                    }
                }
            }
            Payload::CustomSection(section)
                if depth == 1 && section.name() == abi::MARKER_SECTION =>
            {
                already_instrumented = true;
            }
            _ => {}
        }
        let valid = validator.payload(&payload).map_err(Error::from)?;
        if let ValidPayload::End(types) = valid
            && let Some(Some(at)) = open.pop()
        {
            let types = types.as_ref();
            components[at].core_funcs = (0..types.function_count())
                .map(|index| {
                    let func = types[types.core_function_at(index)].unwrap_func();
                    (func.params().to_vec(), func.results().to_vec())
                })
                .collect();
            // A component that holds one needing the hooks needs them too.
            if components[at].needs_hooks
                && let Some(Some(parent)) = open.last()
            {
                components[*parent].needs_hooks = true;
            }
        }
    }
    if nested_hooks && !already_instrumented {
        return Err(Error::new(ErrorKind::ComponentUnsupported {
            reason: format!("a nested component already imports `{}`", abi::HOOK_MODULE),
        }));
    }
    Ok(Scan {
        components,
        already_instrumented,
    })
}
