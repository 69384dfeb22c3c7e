//! A cheap first pass over the module: the facts the rewrite needs before it starts.

use wasmparser::{ExternalKind, KnownCustom, Name, Parser, Payload, TypeRef, ValType};

use crate::abi;
use crate::error::{Error, ErrorKind, Result};

/// Parameter count and results of a function type.
pub(crate) struct FuncSig {
    pub params: u32,
    pub results: Vec<ValType>,
}

/// What the rewrite must know about the input module.
#[derive(Default)]
pub(crate) struct ModuleFacts<'a> {
    /// Per type index: the signature if it is a function type.
    pub types: Vec<Option<FuncSig>>,
    /// Number of imported functions: the index of the first defined function.
    pub imported_funcs: u32,
    /// Type index of each defined function.
    pub defined_types: Vec<u32>,
    /// Per memory index: whether it is a 64-bit memory.
    pub memory64: Vec<bool>,
    /// The module imports or defines exception tags.
    pub has_tags: bool,
    /// The module uses legacy exception handling (`try`/`catch`/`delegate`/`rethrow`).
    /// The module already reports to enter/exit hooks or carries the marker section.
    pub already_instrumented: bool,
    /// `name`-section names of defined functions, by defined index.
    pub names: Vec<Option<&'a str>>,
    /// First export name of defined functions, by defined index.
    pub exports: Vec<Option<&'a str>>,
    pub has_type_section: bool,
    pub has_import_section: bool,
    pub has_name_section: bool,
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
                    facts.has_type_section = true;
                    for group in reader {
                        for sub in group?.into_types() {
                            facts.types.push(match sub.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => Some(FuncSig {
                                    params: f.params().len() as u32,
                                    results: f.results().to_vec(),
                                }),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    facts.has_import_section = true;
                    for import in reader.into_imports() {
                        let import = import?;
                        if abi::is_trace_hook(import.module, import.name) {
                            facts.already_instrumented = true;
                        }
                        match import.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => facts.imported_funcs += 1,
                            TypeRef::Memory(m) => facts.memory64.push(m.memory64),
                            TypeRef::Tag(_) => facts.has_tags = true,
                            TypeRef::Table(_) | TypeRef::Global(_) => {}
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
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export?;
                        if export.kind == ExternalKind::Func
                            && let Some(slot) = facts.defined_slot(export.index)
                            && facts.exports[slot].is_none()
                        {
                            facts.exports[slot] = Some(export.name);
                        }
                    }
                }
                Payload::CustomSection(section) => {
                    if section.name() == abi::MARKER_SECTION {
                        facts.already_instrumented = true;
                    }
                    if let KnownCustom::Name(reader) = section.as_known() {
                        facts.has_name_section = true;
                        // A malformed name section only costs us names, never the module.
                        let _ = facts.read_function_names(reader);
                    }
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    /// Position of function `index` among the defined functions, if it is one.
    pub(crate) fn defined_slot(&self, index: u32) -> Option<usize> {
        let slot = index.checked_sub(self.imported_funcs)? as usize;
        (slot < self.defined_types.len()).then_some(slot)
    }

    fn read_function_names(
        &mut self,
        reader: wasmparser::NameSectionReader<'a>,
    ) -> Result<(), wasmparser::BinaryReaderError> {
        for subsection in reader {
            if let Name::Function(map) = subsection? {
                for naming in map {
                    let naming = naming?;
                    if let Some(slot) = self.defined_slot(naming.index) {
                        self.names[slot] = Some(naming.name);
                    }
                }
            }
        }
        Ok(())
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
