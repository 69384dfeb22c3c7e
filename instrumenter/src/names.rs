//! Function names: the `name` section, export names, demangling.

use serde::{Deserialize, Serialize};
use wasmparser::{BinaryReader, IndirectNameMap, Name, NameMap, Subsections};

use crate::error::Warning;

/// One defined function of the instrumented module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionEntry {
    /// The id passed to the hooks: the function's index in the output module (in a component,
    /// plus the ids of the modules before it).
    pub id: u32,
    /// The function's index in the input module.
    pub original_index: u32,
    /// Human-readable name, demangled: from the symbol map given, else the `name` section, else
    /// DWARF, else an export name, else `wasm-function[N]` with N the original index.
    pub name: String,
    /// The name as found (symbol map, `name` section, DWARF or exports), before demangling.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw_name: Option<String>,
    /// Whether the function reports to the hooks (timed) or counts its calls.
    pub instrumented: bool,
    /// How its calls are recorded: timed (and why), counted, or not at all.
    pub timing: crate::Timing,
    /// Source file of the function, from DWARF.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file: Option<String>,
    /// Source line of its first instruction, from DWARF.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<u32>,
    /// Source column of its first instruction, from DWARF, where known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub column: Option<u32>,
    /// In a component: the core module the function belongs to, numbered from 0 in the order
    /// modules appear in the binary (nested components included). Ids are unique across the
    /// component; `original_index` is the function's index in its module.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module: Option<u32>,
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

/// A `name` section as far as it parses, in the order the format requires: each subsection
/// once, by increasing id.
#[derive(Default)]
pub(crate) struct ParsedNames<'a> {
    /// The module name subsection, kept as it is.
    pub module: Option<Name<'a>>,
    /// Function names by input index: sorted, each index once (the first name given wins).
    pub functions: Vec<(u32, &'a str)>,
    /// The other subsections that parse completely, the first of each id, by id.
    pub others: Vec<Name<'a>>,
}

impl<'a> ParsedNames<'a> {
    /// Reads what can be read of a `name` section's contents (`data`, found at `offset` in
    /// the module); what cannot be read is dropped with a warning. Subsections and function
    /// names out of order are put in order, not dropped.
    pub(crate) fn parse(data: &'a [u8], offset: u64, warnings: &mut Vec<Warning>) -> Self {
        // `NameSectionReader` stops at the first subsection out of order: read them unchecked.
        let reader = Subsections::<Name<'a>>::new(BinaryReader::new(data, offset));
        let mut parsed = ParsedNames::default();
        let mut seen = [false; 256];
        let mut functions = Vec::new();
        let mut last_id = None;
        let mut out_of_order = false;
        for subsection in reader {
            let subsection = match subsection {
                Ok(subsection) => subsection,
                Err(e) => {
                    warnings.push(Warning::new(
                        format!("`name` section: {}; the rest of it is dropped", e.message()),
                        Some(e.offset()),
                    ));
                    break;
                }
            };
            let id = subsection_id(&subsection);
            out_of_order |= last_id.is_some_and(|last| id <= last);
            last_id = Some(id);
            if std::mem::replace(&mut seen[id as usize], true) {
                warnings.push(Warning::new(
                    format!(
                        "`name` section: a second {} subsection is dropped",
                        kind(id)
                    ),
                    None,
                ));
                continue;
            }
            match subsection {
                Name::Module { .. } => parsed.module = Some(subsection),
                Name::Function(map) => {
                    // The entries unchecked too: out of order, they are sorted below.
                    for naming in map.names {
                        match naming {
                            Ok(naming) => functions.push((naming.index, naming.name)),
                            Err(e) => {
                                warnings.push(Warning::new(
                                    format!(
                                        "`name` section: function names after the first {} are \
                                         dropped: {}",
                                        functions.len(),
                                        e.message()
                                    ),
                                    Some(e.offset()),
                                ));
                                break;
                            }
                        }
                    }
                }
                other => match check(&other) {
                    Ok(()) => parsed.others.push(other),
                    Err(e) => warnings.push(Warning::new(
                        format!(
                            "`name` section: the {} subsection is dropped: {}",
                            kind(id),
                            e.message()
                        ),
                        Some(e.offset()),
                    )),
                },
            }
        }
        if out_of_order {
            warnings.push(Warning::new(
                "`name` section: subsections out of order; written in order",
                None,
            ));
        }
        // Stable: the first name of an index stays first, and wins.
        functions.sort_by_key(|(index, _)| *index);
        functions.dedup_by_key(|(index, _)| *index);
        parsed.functions = functions;
        parsed.others.sort_by_key(subsection_id);
        parsed
    }

    /// The name of input function `index`, if the section gives one.
    pub(crate) fn function(&self, index: u32) -> Option<&'a str> {
        self.functions
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .map(|at| self.functions[at].1)
    }
}

fn subsection_id(name: &Name<'_>) -> u8 {
    match name {
        Name::Module { .. } => 0,
        Name::Function(_) => 1,
        Name::Local(_) => 2,
        Name::Label(_) => 3,
        Name::Type(_) => 4,
        Name::Table(_) => 5,
        Name::Memory(_) => 6,
        Name::Global(_) => 7,
        Name::Element(_) => 8,
        Name::Data(_) => 9,
        Name::Field(_) => 10,
        Name::Tag(_) => 11,
        Name::Parameter(_) => 12,
        Name::TagParameter(_) => 13,
        Name::Unknown { ty, .. } => *ty,
    }
}

fn kind(id: u8) -> String {
    let kind = match id {
        0 => "module name",
        1 => "function names",
        2 => "local names",
        3 => "label names",
        4 => "type names",
        5 => "table names",
        6 => "memory names",
        7 => "global names",
        8 => "element names",
        9 => "data names",
        10 => "field names",
        11 => "tag names",
        12 => "parameter names",
        13 => "tag parameter names",
        other => return format!("unknown (id {other})"),
    };
    kind.to_string()
}

/// Reads every entry of a subsection, so that re-encoding it later cannot fail.
fn check(name: &Name<'_>) -> wasmparser::Result<()> {
    fn map(map: &NameMap<'_>) -> wasmparser::Result<()> {
        map.clone().into_iter().try_for_each(|n| n.map(drop))
    }
    fn indirect(names: &IndirectNameMap<'_>) -> wasmparser::Result<()> {
        names.clone().into_iter().try_for_each(|n| map(&n?.names))
    }
    match name {
        Name::Module { .. } | Name::Unknown { .. } => Ok(()),
        Name::Function(m)
        | Name::Type(m)
        | Name::Table(m)
        | Name::Memory(m)
        | Name::Global(m)
        | Name::Element(m)
        | Name::Data(m)
        | Name::Tag(m) => map(m),
        Name::Local(m)
        | Name::Label(m)
        | Name::Field(m)
        | Name::Parameter(m)
        | Name::TagParameter(m) => indirect(m),
    }
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
