//! The module-level rewrite: a [`Reencode`] that shifts defined functions past the hook
//! imports, appends the hook types and imports, and rewrites every function body.

use wasm_encoder::reencode::{self, Reencode, utils};
use wasm_encoder::{BlockType, EntityType, NameMap, SectionId};

use crate::abi;
use crate::body::{BodyPlan, ExceptionStyle};
use crate::error::{Error, Result};
use crate::facts::ModuleFacts;

type ReencodeResult<T> = Result<T, reencode::Error<Error>>;

/// Everything decided before re-encoding: hook indices, appended types and which functions get hooks.
pub(crate) struct Rewriter<'a, 'f> {
    pub(crate) wasm: &'a [u8],
    pub(crate) facts: &'f ModuleFacts<'a>,
    /// Per defined function: whether it reports enter/exit.
    pub(crate) selected: Vec<bool>,
    /// Per type index: the block type of a wrapper around a body of that type.
    wrapper_block_types: Vec<BlockType>,
    /// Types appended after the module's own: the hook type, then `[] -> results` wrappers.
    appended_types: Vec<Vec<wasmparser::ValType>>,
    hook_type: u32,
    exceptions: ExceptionStyle,
    keep_debug: bool,
    types_written: bool,
    imports_written: bool,
    /// Rewritten bodies, emitted in order by the code section.
    bodies: std::vec::IntoIter<Vec<u8>>,
}

impl<'a, 'f> Rewriter<'a, 'f> {
    pub(crate) fn new(
        wasm: &'a [u8],
        facts: &'f ModuleFacts<'a>,
        selected: Vec<bool>,
        keep_debug: bool,
    ) -> Result<Self> {
        let hook_type = facts.types.len() as u32;
        let mut appended_types = vec![Vec::new()];
        let mut wrapper_block_types = Vec::with_capacity(facts.types.len());
        for sig in &facts.types {
            let block = match sig.as_ref().map(|s| s.results.as_slice()) {
                None | Some([]) => BlockType::Empty,
                Some([one]) => BlockType::Result(val_type(*one)?),
                Some(many) => {
                    let position = appended_types.iter().position(|t| t == many);
                    let slot = position.unwrap_or_else(|| {
                        appended_types.push(many.to_vec());
                        appended_types.len() - 1
                    });
                    BlockType::FunctionType(hook_type + slot as u32)
                }
            };
            wrapper_block_types.push(block);
        }
        let exceptions = if facts.has_tags {
            ExceptionStyle::Standard
        } else {
            ExceptionStyle::None
        };
        Ok(Rewriter {
            wasm,
            facts,
            selected,
            wrapper_block_types,
            appended_types,
            hook_type,
            exceptions,
            keep_debug,
            types_written: false,
            imports_written: false,
            bodies: Vec::new().into_iter(),
        })
    }

    /// Index of hook `n` (0 = enter, 1 = exit, 2 = memory-grow) in the output module.
    pub(crate) fn hook_index(&self, n: u32) -> u32 {
        self.facts.imported_funcs + n
    }

    /// Output index of input function `index`.
    pub(crate) fn output_function_index(&self, index: u32) -> u32 {
        if index < self.facts.imported_funcs {
            index
        } else {
            index + abi::HOOKS.len() as u32
        }
    }

    fn write_appended_types(&mut self, types: &mut wasm_encoder::TypeSection) -> Result<()> {
        types.ty().function([wasm_encoder::ValType::I32], []);
        for results in &self.appended_types[1..] {
            let results = results
                .iter()
                .map(|t| val_type(*t))
                .collect::<Result<Vec<_>>>()?;
            types.ty().function([], results);
        }
        self.types_written = true;
        Ok(())
    }

    fn write_hook_imports(&mut self, imports: &mut wasm_encoder::ImportSection) {
        for hook in abi::HOOKS {
            imports.import(abi::HOOK_MODULE, hook, EntityType::Function(self.hook_type));
        }
        self.imports_written = true;
    }

    /// Whether a body may throw, so exits need a handler.
    pub(crate) fn may_throw(&self) -> bool {
        self.exceptions != ExceptionStyle::None
    }

    /// Handles escaping exceptions with legacy `try`/`catch_all`, for modules that use it
    /// (mixing it with `try_table` in one module is not valid for every engine).
    pub(crate) fn use_legacy_exceptions(&mut self) {
        self.exceptions = ExceptionStyle::Legacy;
    }

    /// The rewritten bodies the code section will hold, in order.
    pub(crate) fn set_bodies(&mut self, bodies: Vec<Vec<u8>>) {
        self.bodies = bodies.into_iter();
    }

    /// What to do with defined function `slot`.
    pub(crate) fn plan_for(&self, slot: usize) -> BodyPlan {
        let index = self.facts.imported_funcs + slot as u32;
        let ty = self.facts.defined_types[slot] as usize;
        let sig = self.facts.types[ty]
            .as_ref()
            .expect("validated: a defined function has a function type");
        BodyPlan {
            id: self.output_function_index(index),
            original_index: index,
            params: sig.params,
            traced: self.selected[slot],
            block_type: self.wrapper_block_types[ty],
            exceptions: self.exceptions,
        }
    }
}

impl Reencode for Rewriter<'_, '_> {
    type Error = Error;

    fn function_index(&mut self, func: u32) -> ReencodeResult<u32> {
        Ok(self.output_function_index(func))
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> ReencodeResult<()> {
        utils::parse_type_section(self, types, section)?;
        self.write_appended_types(types)
            .map_err(reencode::Error::UserError)?;
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> ReencodeResult<()> {
        utils::parse_import_section(self, imports, section)?;
        self.write_hook_imports(imports);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> ReencodeResult<()> {
        let next = before.map_or(u8::MAX, section_rank);
        if !self.types_written && next > section_rank(SectionId::Type) {
            let mut types = wasm_encoder::TypeSection::new();
            self.write_appended_types(&mut types)
                .map_err(reencode::Error::UserError)?;
            module.section(&types);
        }
        if !self.imports_written && next > section_rank(SectionId::Import) {
            let mut imports = wasm_encoder::ImportSection::new();
            self.write_hook_imports(&mut imports);
            module.section(&imports);
        }
        if before.is_none() {
            if !self.facts.has_name_section {
                let mut names = wasm_encoder::NameSection::new();
                names.functions(&self.hook_names());
                module.section(&names);
            }
            module.section(&wasm_encoder::CustomSection {
                name: abi::MARKER_SECTION.into(),
                data: concat!("iota-instrument ", env!("CARGO_PKG_VERSION"))
                    .as_bytes()
                    .into(),
            });
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> ReencodeResult<()> {
        for _ in 0..section.count() {
            let body = self.bodies.next().ok_or_else(|| {
                reencode::Error::UserError(Error::new(crate::error::ErrorKind::Invalid(
                    "more bodies than rewritten".into(),
                )))
            })?;
            code.raw(&body);
        }
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> ReencodeResult<()> {
        let name = section.name();
        let stale_debug_info = name.starts_with(".debug_") || name == "sourceMappingURL";
        // Branch hints are keyed by instruction offsets, which move.
        let stale_offsets = name.starts_with("metadata.code.");
        if (stale_debug_info && !self.keep_debug) || stale_offsets {
            return Ok(());
        }
        if let wasmparser::KnownCustom::Name(reader) = section.as_known() {
            // A name section that does not parse is dropped: its indices cannot be remapped.
            if let Ok(names) = self.custom_name_section(reader) {
                module.section(&names);
            }
            return Ok(());
        }
        utils::parse_custom_section(self, module, section)
    }

    fn custom_name_section(
        &mut self,
        section: wasmparser::NameSectionReader<'_>,
    ) -> ReencodeResult<wasm_encoder::NameSection> {
        let mut names = wasm_encoder::NameSection::new();
        let mut functions_named = false;
        for subsection in section {
            let subsection = subsection?;
            match subsection {
                wasmparser::Name::Module { .. } => {}
                wasmparser::Name::Function(_) => functions_named = true,
                _ if !functions_named => {
                    // Subsections are ordered by id; function names (id 1) go before the rest.
                    names.functions(&self.hook_names());
                    functions_named = true;
                }
                _ => {}
            }
            self.parse_custom_name_subsection(&mut names, subsection)?;
        }
        if !functions_named {
            names.functions(&self.hook_names());
        }
        Ok(names)
    }

    fn parse_custom_name_subsection(
        &mut self,
        names: &mut wasm_encoder::NameSection,
        section: wasmparser::Name<'_>,
    ) -> ReencodeResult<()> {
        let wasmparser::Name::Function(map) = section else {
            return utils::parse_custom_name_subsection(self, names, section);
        };
        let mut out = NameMap::new();
        let mut hooks_named = false;
        for naming in map {
            let naming = naming?;
            if !hooks_named && naming.index >= self.facts.imported_funcs {
                self.append_hook_names(&mut out);
                hooks_named = true;
            }
            out.append(self.output_function_index(naming.index), naming.name);
        }
        if !hooks_named {
            self.append_hook_names(&mut out);
        }
        names.functions(&out);
        Ok(())
    }
}

impl Rewriter<'_, '_> {
    fn hook_names(&self) -> NameMap {
        let mut names = NameMap::new();
        self.append_hook_names(&mut names);
        names
    }

    fn append_hook_names(&self, names: &mut NameMap) {
        for (n, hook) in abi::HOOKS.iter().enumerate() {
            names.append(
                self.hook_index(n as u32),
                &format!("{}#{hook}", abi::HOOK_MODULE),
            );
        }
    }
}

/// Position of a section in the binary format's required order.
fn section_rank(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}

/// Value types are re-encoded as they are: no type index moves.
pub(crate) fn val_type(ty: wasmparser::ValType) -> Result<wasm_encoder::ValType> {
    reencode::RoundtripReencoder
        .val_type(ty)
        .map_err(|e| Error::new(crate::error::ErrorKind::Encode(e.to_string())))
}
