//! Names a component gives its modules' functions.
//!
//! A core function of a component that is an alias of a module's export can be named in the
//! component's `component-name` section. wit-component's shim module exports its functions
//! as `0`, `1`, ... and has no `name` section of its own, but the component names their
//! aliases after what they stand for (`indirect-wasi:io/streams@0.2.0-[method]input-stream.
//! blocking-read`): those are the names a trace should show, since each such function is the
//! way into a WASI call. So a function whose only name is its export takes the component's
//! name for it.

use std::collections::HashMap;

use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentName, ComponentOuterAliasKind,
    ComponentTypeRef, ExternalKind, KnownCustom, Parser, Payload,
};

use crate::error::Result;
use crate::names::{FunctionEntry, demangle};

/// One component's index spaces, as far as names need them.
#[derive(Default)]
struct Frame {
    /// Per core module: the number of the component's module it is (in binary order).
    modules: Vec<Option<u32>>,
    /// Per core instance: the numbered module it instantiates.
    instances: Vec<Option<u32>>,
    /// Per core function: the numbered module and export it is an alias of.
    funcs: Vec<Option<(u32, String)>>,
}

/// Renames, in `functions`, the functions named only by their export after the core
/// functions of `wasm` that alias them. `skip` tells the modules the rewrite added (they get
/// no number).
pub(crate) fn apply(
    wasm: &[u8],
    functions: &mut [FunctionEntry],
    skip: impl Fn(&[u8]) -> Result<bool>,
) -> Result<()> {
    let mut frames: Vec<Frame> = Vec::new();
    // Exported functions of each numbered module, by export name.
    let mut exports: Vec<HashMap<String, u32>> = Vec::new();
    // Per open encoding (innermost last): a component's frame depth, or none for a module.
    let mut open: Vec<bool> = Vec::new();
    let mut renames: HashMap<(u32, u32), String> = HashMap::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let in_module = open.last() == Some(&false);
        match &payload {
            Payload::Version { encoding, .. } => {
                let component = *encoding == wasmparser::Encoding::Component;
                open.push(component);
                if component {
                    frames.push(Frame::default());
                }
                continue;
            }
            Payload::End(_) => {
                if open.pop() == Some(true) {
                    frames.pop();
                }
                continue;
            }
            _ if in_module => continue,
            _ => {}
        }
        let Some(frame) = frames.last_mut() else {
            continue;
        };
        match payload {
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                let module = &wasm[unchecked_range.start as usize..unchecked_range.end as usize];
                if skip(module)? {
                    frame.modules.push(None);
                } else {
                    frame.modules.push(Some(exports.len() as u32));
                    exports.push(function_exports(module));
                }
            }
            Payload::InstanceSection(reader) => {
                for instance in reader {
                    frame.instances.push(match instance? {
                        wasmparser::Instance::Instantiate { module_index, .. } => {
                            frame.modules.get(module_index as usize).copied().flatten()
                        }
                        wasmparser::Instance::FromExports(_) => None,
                    });
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader {
                    match alias? {
                        ComponentAlias::CoreInstanceExport {
                            kind: ExternalKind::Func | ExternalKind::FuncExact,
                            instance_index,
                            name,
                        } => {
                            let module = frame.instances.get(instance_index as usize).copied();
                            frame
                                .funcs
                                .push(module.flatten().map(|m| (m, name.to_string())));
                        }
                        ComponentAlias::InstanceExport {
                            kind: ComponentExternalKind::Module,
                            ..
                        }
                        | ComponentAlias::Outer {
                            kind: ComponentOuterAliasKind::CoreModule,
                            ..
                        } => frame.modules.push(None),
                        _ => {}
                    }
                }
            }
            Payload::ComponentCanonicalSection(reader) => {
                for func in reader {
                    if !matches!(func?, wasmparser::CanonicalFunction::Lift { .. }) {
                        frame.funcs.push(None);
                    }
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    if let ComponentTypeRef::Module(_) = import?.ty {
                        frame.modules.push(None);
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    if export?.kind == ComponentExternalKind::Module {
                        frame.modules.push(None);
                    }
                }
            }
            Payload::CustomSection(section) => {
                let KnownCustom::ComponentName(names) = section.as_known() else {
                    continue;
                };
                // Names are a courtesy: a section that does not parse names nothing.
                for subsection in names {
                    let Ok(ComponentName::CoreFuncs(map)) = subsection else {
                        continue;
                    };
                    for naming in map {
                        let Ok(naming) = naming else { break };
                        let Some(Some((module, export))) = frame.funcs.get(naming.index as usize)
                        else {
                            continue;
                        };
                        if let Some(&index) = exports[*module as usize].get(export)
                            && naming.name != export
                        {
                            renames.insert((*module, index), naming.name.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for f in functions.iter_mut() {
        let Some(module) = f.module else { continue };
        let Some(name) = renames.get(&(module, f.original_index)) else {
            continue;
        };
        let named_by_export = exports[module as usize]
            .get(f.raw_name.as_deref().unwrap_or_default())
            .is_some_and(|&index| index == f.original_index);
        if named_by_export {
            f.name = demangle(name);
            f.raw_name = Some(name.clone());
        }
    }
    Ok(())
}

/// The exported functions of `module`, by export name.
fn function_exports(module: &[u8]) -> HashMap<String, u32> {
    let mut exports = HashMap::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload {
            Ok(Payload::ExportSection(reader)) => {
                for export in reader.into_iter().flatten() {
                    if export.kind == ExternalKind::Func {
                        exports.insert(export.name.to_string(), export.index);
                    }
                }
            }
            // No export comes after the code.
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
    exports
}
