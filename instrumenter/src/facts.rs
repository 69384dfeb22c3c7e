//! A cheap first pass over the module: the facts the rewrite needs before it starts.

use wasmparser::{ExternalKind, KnownCustom, Parser, Payload, TypeRef, ValType};

use crate::abi;
use crate::dwarf::{DebugSections, SourceInfo};
use crate::error::{Error, ErrorKind, Result, Warning};
use crate::names::ParsedNames;

/// Parameters and results of a function type.
pub(crate) struct FuncSig {
    pub params: Vec<ValType>,
    pub results: Vec<ValType>,
}

impl FuncSig {
    /// Whether this is the hooks' type, `(param i32)`.
    fn is_hook_type(&self) -> bool {
        self.params == [ValType::I32] && self.results.is_empty()
    }
}

/// What the rewrite must know about the input module.
#[derive(Default)]
pub(crate) struct ModuleFacts<'a> {
    /// Per type index: the signature if it is a function type.
    pub types: Vec<Option<FuncSig>>,
    /// Number of imported functions: the index of the first defined function.
    pub imported_funcs: u32,
    /// Number of globals, imported and defined: the index of the first global appended.
    pub globals: u32,
    /// Type index of each defined function.
    pub defined_types: Vec<u32>,
    /// Per memory index: whether it is a 64-bit memory.
    pub memory64: Vec<bool>,
    /// The module imports or defines exception tags.
    pub has_tags: bool,
    /// The module already reports to enter/exit hooks or carries the marker section.
    pub already_instrumented: bool,
    /// Indices of imported functions that are `enter` hooks (current or legacy names).
    pub enter_hooks: Vec<u32>,
    /// Hook ids of functions counted by an earlier rewrite (their counter globals are exported).
    pub counted_ids: Vec<u32>,
    /// Per imported function: whether a call to it can end in an exception. WASI functions,
    /// the hooks and the Observe API never throw; any other import may.
    pub import_may_throw: Vec<bool>,
    /// The first import of a hook name with another kind or type than the hook's.
    pub hook_conflict: Option<Error>,
    /// The first custom section that marks an object file (`linking`, `reloc.*`).
    pub object_file: Option<Error>,
    /// The first `name` section, as far as it parses.
    pub name_section: Option<ParsedNames<'a>>,
    /// `name`-section names of defined functions, by defined index.
    pub names: Vec<Option<&'a str>>,
    /// First export name of defined functions, by defined index.
    pub exports: Vec<Option<&'a str>>,
    /// DWARF sections, if the module has debug information.
    pub debug: DebugSections<'a>,
    /// Start of the code section's contents: DWARF addresses count from there.
    pub code_start: u64,
    /// Defined function bodies, in order.
    pub bodies: Vec<wasmparser::FunctionBody<'a>>,
    /// What was read but cannot be kept.
    pub warnings: Vec<Warning>,
}

impl<'a> ModuleFacts<'a> {
    /// Reads the facts from a module that has already been validated.
    pub(crate) fn gather(wasm: &'a [u8]) -> Result<Self> {
        let mut facts = ModuleFacts::default();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::Version {
                    encoding, range, ..
                } if encoding != wasmparser::Encoding::Module => {
                    return Err(Error::new(ErrorKind::Component).at(range.start));
                }
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group?.into_types() {
                            facts.types.push(match sub.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => Some(FuncSig {
                                    params: f.params().to_vec(),
                                    results: f.results().to_vec(),
                                }),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports_with_offsets() {
                        let (offset, import) = import?;
                        facts.check_hook_import(&import, offset);
                        match import.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => {
                                facts.imported_funcs += 1;
                                facts.import_may_throw.push(!never_throws(import.module));
                            }
                            TypeRef::Memory(m) => facts.memory64.push(m.memory64),
                            TypeRef::Tag(_) => facts.has_tags = true,
                            TypeRef::Global(_) => facts.globals += 1,
                            TypeRef::Table(_) => {}
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        facts.defined_types.push(ty?);
                    }
                    facts.names = vec![None; facts.defined_types.len()];
                    facts.exports = vec![None; facts.defined_types.len()];
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        facts.memory64.push(memory?.memory64);
                    }
                }
                Payload::TagSection(reader) => facts.has_tags |= reader.count() > 0,
                Payload::GlobalSection(reader) => facts.globals += reader.count(),
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export?;
                        if export.kind == ExternalKind::Global
                            && let Some(id) = export
                                .name
                                .strip_prefix(abi::COUNTER_EXPORT_PREFIX)
                                .and_then(|id| id.parse().ok())
                        {
                            facts.counted_ids.push(id);
                        }
                        if export.kind == ExternalKind::Func
                            && let Some(slot) = facts.defined_slot(export.index)
                            && facts.exports[slot].is_none()
                        {
                            facts.exports[slot] = Some(export.name);
                        }
                    }
                }
                Payload::CustomSection(section) => {
                    let name = section.name();
                    if name == abi::MARKER_SECTION {
                        facts.already_instrumented = true;
                    }
                    if (name == "linking" || name.starts_with("reloc."))
                        && facts.object_file.is_none()
                    {
                        facts.object_file = Some(
                            Error::new(ErrorKind::ObjectFile {
                                section: name.to_string(),
                            })
                            .at(section.range().start),
                        );
                    }
                    facts.debug.offer(name, section.data());
                    if let KnownCustom::Name(_) = section.as_known() {
                        if facts.name_section.is_none() {
                            // A malformed name section only costs us names, never the module.
                            facts.name_section = Some(ParsedNames::parse(
                                section.data(),
                                section.data_offset(),
                                &mut facts.warnings,
                            ));
                        } else {
                            facts.warnings.push(Warning::new(
                                "a second `name` section is dropped",
                                Some(section.range().start),
                            ));
                        }
                    }
                }
                Payload::CodeSectionStart {
                    unchecked_range, ..
                } => facts.code_start = unchecked_range.start,
                Payload::CodeSectionEntry(body) => facts.bodies.push(body),
                _ => {}
            }
        }
        // Names are matched to functions last: the section may come before the functions.
        if let Some(names) = &facts.name_section {
            for slot in 0..facts.defined_types.len() {
                facts.names[slot] = names.function(facts.imported_funcs + slot as u32);
            }
        }
        Ok(facts)
    }

    /// Records whether `import` is a hook: the module is then already instrumented, or, for a
    /// hook name imported with another kind or type, cannot be instrumented.
    fn check_hook_import(&mut self, import: &wasmparser::Import<'_>, offset: u64) {
        let is_enter = (import.module == abi::HOOK_MODULE && import.name == abi::ENTER)
            || (import.module == abi::LEGACY_HOOK_MODULE && import.name == abi::LEGACY_ENTER);
        let sig = match import.ty {
            TypeRef::Func(ty) | TypeRef::FuncExact(ty) => {
                self.types.get(ty as usize).and_then(Option::as_ref)
            }
            _ => None,
        };
        if is_enter && sig.is_some_and(FuncSig::is_hook_type) {
            self.enter_hooks.push(self.imported_funcs);
        }
        if import.module != abi::HOOK_MODULE || !abi::HOOKS.contains(&import.name) {
            if abi::is_trace_hook(import.module, import.name) {
                self.already_instrumented = true;
            }
            return;
        }
        match sig {
            // A `memory-grow` import of the hook's type alone links to the same host function
            // as the one the rewrite appends.
            Some(sig) if sig.is_hook_type() && import.name == abi::MEMORY_GROW => {}
            Some(sig) if sig.is_hook_type() => self.already_instrumented = true,
            _ if self.hook_conflict.is_none() => {
                self.hook_conflict = Some(
                    Error::new(ErrorKind::HookConflict {
                        name: import.name.to_string(),
                        found: describe_import(import.ty, sig),
                    })
                    .at(offset),
                );
            }
            _ => {}
        }
    }

    /// What DWARF says of each defined function (nothing without debug information).
    pub(crate) fn source_info(&mut self) -> Vec<SourceInfo> {
        if !self.debug.has_info() {
            return vec![SourceInfo::default(); self.defined_types.len()];
        }
        let addresses: Vec<u64> = self
            .bodies
            .iter()
            .map(|body| {
                let first = body
                    .get_operators_reader()
                    .map_or(body.range().start, |ops| ops.original_position());
                first.saturating_sub(self.code_start)
            })
            .collect();
        self.debug.describe(&addresses, &mut self.warnings)
    }

    /// Whether a call to imported function `index` can end in an exception.
    pub(crate) fn import_may_throw(&self, index: u32) -> bool {
        self.import_may_throw
            .get(index as usize)
            .copied()
            .unwrap_or(true)
    }

    /// Position of function `index` among the defined functions, if it is one.
    pub(crate) fn defined_slot(&self, index: u32) -> Option<usize> {
        let slot = index.checked_sub(self.imported_funcs)? as usize;
        (slot < self.defined_types.len()).then_some(slot)
    }
}

/// Whether functions of import module `module` are known never to throw: WASI preview 1 (its
/// functions return an errno or trap, they cannot raise a wasm exception), the hooks and the
/// Observe API.
fn never_throws(module: &str) -> bool {
    matches!(
        module,
        "wasi_snapshot_preview1"
            | "wasi_unstable"
            | abi::HOOK_MODULE
            | abi::LEGACY_HOOK_MODULE
            | "dylibso:observe/api"
    )
}

/// An import's kind and type, as the text format would write it.
fn describe_import(ty: TypeRef, sig: Option<&FuncSig>) -> String {
    let list = |types: &[ValType]| {
        types
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    match (ty, sig) {
        (TypeRef::Func(_) | TypeRef::FuncExact(_), Some(sig)) => {
            let mut text = "a function".to_string();
            if !sig.params.is_empty() {
                text += &format!(" (param {})", list(&sig.params));
            }
            if !sig.results.is_empty() {
                text += &format!(" (result {})", list(&sig.results));
            }
            if sig.params.is_empty() && sig.results.is_empty() {
                text += " with no parameters";
            }
            text
        }
        (TypeRef::Func(_) | TypeRef::FuncExact(_), None) => {
            "a function of a non-function type".into()
        }
        (TypeRef::Table(_), _) => "a table".into(),
        (TypeRef::Memory(_), _) => "a memory".into(),
        (TypeRef::Global(_), _) => "a global".into(),
        (TypeRef::Tag(_), _) => "a tag".into(),
    }
}

pub(crate) fn is_instrumented(wasm: &[u8]) -> Result<bool> {
    let mut parser = Parser::new(0);
    let mut rest = wasm;
    loop {
        let (consumed, payload) = match parser.parse(rest, true)? {
            wasmparser::Chunk::Parsed { consumed, payload } => (consumed, payload),
            wasmparser::Chunk::NeedMoreData(_) => {
                return Err(truncated((wasm.len() - rest.len()) as u64));
            }
        };
        rest = &rest[consumed..];
        match payload {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    if abi::is_trace_hook(import.module, import.name) {
                        return Ok(true);
                    }
                }
            }
            Payload::CustomSection(section) if section.name() == abi::MARKER_SECTION => {
                return Ok(true);
            }
            Payload::CodeSectionStart { size, .. } => {
                parser.skip_section();
                rest = rest
                    .get(size as usize..)
                    .ok_or_else(|| truncated((wasm.len() - rest.len()) as u64))?;
            }
            Payload::End(_) => return Ok(false),
            _ => {}
        }
    }
}

#[cold]
fn truncated(offset: u64) -> Error {
    Error::new(ErrorKind::Invalid("unexpected end of module".into())).at(offset)
}
