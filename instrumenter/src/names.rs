//! Function names: the `name` section, export names, demangling.

use serde::{Deserialize, Serialize};

/// One defined function of the instrumented module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionEntry {
    /// The id passed to the hooks: the function's index in the output module.
    pub id: u32,
    /// The function's index in the input module.
    pub original_index: u32,
    /// Human-readable name: demangled `name`-section name, else an export name,
    /// else `wasm-function[N]` with N the original index.
    pub name: String,
    /// The name as found in the `name` section or exports, if any, before demangling.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw_name: Option<String>,
    /// Whether the function reports to the enter/exit hooks.
    pub instrumented: bool,
}

/// Demangles a Rust (legacy or v0) or Itanium C++ symbol; other names come back unchanged.
pub fn demangle(name: &str) -> String {
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        return format!("{rust:#}");
    }
    if name.starts_with("_Z")
        && let Ok(symbol) = cpp_demangle::Symbol::new(name)
        && let Ok(text) = symbol.demangle(&cpp_demangle::DemangleOptions::default())
    {
        return text;
    }
    name.to_string()
}

/// The display name of a function that has neither a `name`-section entry nor an export.
pub fn fallback_name(original_index: u32) -> String {
    format!("wasm-function[{original_index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_cpp_and_passes_plain_names() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0b8a1b1b1b1b1b1bE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Znot a symbol"), "_Znot a symbol");
    }
}
