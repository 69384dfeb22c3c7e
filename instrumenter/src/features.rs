//! The WebAssembly proposals the rewrite supports, and a clear refusal for the others.

use wasmparser::{Validator, WasmFeatures};

use crate::error::{Error, ErrorKind};

/// Proposals the rewrite cannot support, with the reason.
const UNSUPPORTED: &[(WasmFeatures, &str, &str)] = &[
    (
        WasmFeatures::SHARED_EVERYTHING_THREADS,
        "shared-everything-threads",
        "shared functions cannot call the unshared hooks",
    ),
    (
        WasmFeatures::STACK_SWITCHING,
        "stack-switching",
        "a suspended function leaves and re-enters without `exit` and `enter`, \
         so the hook calls no longer nest",
    ),
    (
        WasmFeatures::MEMORY_CONTROL,
        "memory-control",
        "not yet checked against the rewrite",
    ),
];

/// The WebAssembly proposals an input module may use: every one `wasmparser` knows for core
/// modules, legacy exception handling included, except shared-everything threads, stack
/// switching and memory control (refused with [`ErrorKind::Unsupported`]) and the component
/// model. The output needs at most these: the exception handling proposal it may add is one.
pub fn features() -> WasmFeatures {
    let mut features = WasmFeatures::all();
    for (feature, _, _) in UNSUPPORTED {
        features.remove(*feature);
    }
    features.remove(WasmFeatures::COMPONENT_MODEL);
    for (name, feature) in WasmFeatures::all().iter_names() {
        if name.starts_with("CM_") || name == "CM64" {
            features.remove(feature);
        }
    }
    features
}

/// Turns a validation error into a refusal naming the proposal, if enabling one unsupported
/// proposal makes `wasm` valid.
#[cold]
pub(crate) fn explain(wasm: &[u8], err: Error) -> Error {
    for &(feature, name, reason) in UNSUPPORTED {
        let mut with = features();
        with.insert(feature);
        if Validator::new_with_features(with)
            .validate_all(wasm)
            .is_ok()
        {
            let mut refusal = Error::new(ErrorKind::Unsupported {
                feature: name,
                reason,
            });
            if let Some(offset) = err.offset() {
                refusal = refusal.at(offset);
            }
            if let Some(function) = err.function() {
                refusal = refusal.in_function(function);
            }
            return refusal;
        }
    }
    err
}
