//! The module-level rewrite: a [`Reencode`] that shifts defined functions past the hook
//! imports, appends the hook types and imports, and rewrites every function body.

use rayon::prelude::*;
use wasm_encoder::reencode::{self, Reencode, utils};
use wasm_encoder::{BlockType, EntityType, NameMap, SectionId};

use crate::abi;
use crate::body::{BodyPlan, Rewritten, Wrapper};
use crate::error::{Error, Result};
use crate::facts::ModuleFacts;
use crate::options::UnwindExits;
use crate::unwind;

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
    /// The defined slot of `_start`, when its export gets a wrapper that reports the counters
    /// (see [`abi::COUNTS`]), and the type of that import.
    report: Option<(usize, u32)>,
    unwind: UnwindExits,
    keep_debug: bool,
    types_written: bool,
    imports_written: bool,
    names_written: bool,
    /// Rewritten bodies, emitted in order by the code section.
    bodies: std::vec::IntoIter<Vec<u8>>,
    /// Per defined function: labels the wrapper adds before the body's own.
    added_labels: Vec<u32>,
    /// Per defined function: the global counting its calls, if it is counted, not traced.
    counters: Vec<Option<u32>>,
    /// Hook ids of the counted functions, in the order of their globals.
    counted_ids: Vec<u32>,
    /// Per defined function: the output index of its traced twin, for a switchable function
    /// (see [`abi::SWITCH_EXPORT_PREFIX`]).
    twin_of: Vec<Option<u32>>,
    /// The slots of the switchable functions, in the order of their twins (which follow every
    /// defined function).
    twin_slots: Vec<usize>,
    globals_written: bool,
    exports_written: bool,
    /// Added to every id passed to the hooks (see `Options::id_base`).
    pub(crate) id_base: u32,
}

impl<'a, 'f> Rewriter<'a, 'f> {
    pub(crate) fn new(
        wasm: &'a [u8],
        facts: &'f ModuleFacts<'a>,
        selected: Vec<bool>,
        unwind: UnwindExits,
        keep_debug: bool,
        report_start: Option<usize>,
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
        // The counts import's type follows every other appended type.
        let report = report_start.map(|slot| (slot, hook_type + appended_types.len() as u32));
        Ok(Rewriter {
            wasm,
            facts,
            selected,
            wrapper_block_types,
            appended_types,
            hook_type,
            report,
            unwind,
            keep_debug,
            types_written: false,
            imports_written: false,
            names_written: false,
            bodies: Vec::new().into_iter(),
            added_labels: Vec::new(),
            counters: Vec::new(),
            counted_ids: Vec::new(),
            twin_of: Vec::new(),
            twin_slots: Vec::new(),
            globals_written: false,
            exports_written: false,
            id_base: 0,
        })
    }

    /// Index of hook `n` (0 = enter, 1 = exit, 2 = memory-grow, 3 = counts when the rewrite
    /// reports them) in the output module.
    pub(crate) fn hook_index(&self, n: u32) -> u32 {
        self.facts.imported_funcs + n
    }

    /// Output index of input function `index`.
    pub(crate) fn output_function_index(&self, index: u32) -> u32 {
        // The counts import, when there is one, follows the hooks.
        let counts = self.report.is_some() && index >= self.facts.imported_funcs;
        self.hook_id(index) + u32::from(counts)
    }

    /// The id the hooks get for input function `index` (before `id_base`): its output index
    /// with the three hooks imported, whether or not the counts import follows them, so that a
    /// function's id does not depend on whether the rewrite reports its counters.
    pub(crate) fn hook_id(&self, index: u32) -> u32 {
        if index < self.facts.imported_funcs {
            index
        } else {
            index + abi::HOOKS.len() as u32
        }
    }

    /// Output index of the wrapper that reports the counters, which follows the twins.
    fn report_wrapper_index(&self) -> u32 {
        self.output_function_index(self.facts.imported_funcs)
            + self.facts.defined_types.len() as u32
            + self.twin_slots.len() as u32
    }

    /// The body of the wrapper that stands for `_start` in its export: it calls `_start`, then
    /// hands every counter to [`abi::COUNTS`], [`abi::COUNTS_PER_CALL`] at a time.
    fn report_wrapper_body(&self, start_slot: usize) -> Vec<u8> {
        use wasm_encoder::Instruction;
        let mut body = wasm_encoder::Function::new([]);
        body.instruction(&Instruction::Call(
            self.output_function_index(self.facts.imported_funcs + start_slot as u32),
        ));
        let counters: Vec<(u32, u32)> = self
            .counted_ids
            .iter()
            .zip(self.counters.iter().flatten())
            .map(|(&id, &global)| (id, global))
            .collect();
        for chunk in counters.chunks(abi::COUNTS_PER_CALL) {
            for &(id, global) in chunk {
                body.instruction(&Instruction::I32Const(id as i32));
                body.instruction(&Instruction::GlobalGet(global));
            }
            for _ in chunk.len()..abi::COUNTS_PER_CALL {
                body.instruction(&Instruction::I32Const(-1));
                body.instruction(&Instruction::I64Const(0));
            }
            body.instruction(&Instruction::Call(self.hook_index(abi::HOOKS.len() as u32)));
        }
        body.instruction(&Instruction::End);
        let mut bytes = Vec::new();
        wasm_encoder::Encode::encode(&body, &mut bytes);
        // `Function` encodes its size first, which the code section adds again.
        bytes.split_off(bytes.len() - body.byte_len())
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
        if self.report.is_some() {
            let pair = [wasm_encoder::ValType::I32, wasm_encoder::ValType::I64];
            types.ty().function(pair.repeat(abi::COUNTS_PER_CALL), []);
        }
        self.types_written = true;
        Ok(())
    }

    fn write_hook_imports(&mut self, imports: &mut wasm_encoder::ImportSection) {
        for hook in abi::HOOKS {
            imports.import(abi::HOOK_MODULE, hook, EntityType::Function(self.hook_type));
        }
        if let Some((_, counts_type)) = self.report {
            imports.import(
                abi::COUNTS_MODULE,
                abi::COUNTS,
                EntityType::Function(counts_type),
            );
        }
        self.imports_written = true;
    }

    /// Gives each traced body its final wrapper, now that every body has been read: an
    /// exception handler where an exception can unwind the function (and the options ask for
    /// it), in the module's style (legacy `try` if any body uses legacy exception handling,
    /// mixing both in one module being invalid for some engines), a plain block elsewhere.
    /// Then keeps the bodies for the code section, followed by the `twins` (the traced bodies of
    /// the switchable functions, in order), wrapped as their functions would be.
    pub(crate) fn set_bodies(&mut self, mut bodies: Vec<Rewritten>, mut twins: Vec<Rewritten>) {
        let facts: Vec<_> = bodies.iter().map(|b| &b.facts).collect();
        let uses_exceptions = self.facts.has_tags || facts.iter().any(|f| f.uses_exceptions);
        let handled = match self.unwind {
            UnwindExits::Always => true,
            UnwindExits::IfModuleUsesExceptions => uses_exceptions,
        };
        let style = if facts.iter().any(|f| f.legacy) {
            Wrapper::Legacy
        } else {
            Wrapper::Standard
        };
        let can_unwind = if handled {
            unwind::can_unwind(self.facts.imported_funcs, &facts)
        } else {
            vec![false; bodies.len()]
        };
        let twin_unwinds: Vec<bool> = self.twin_slots.iter().map(|&s| can_unwind[s]).collect();
        // In parallel: in a module that uses legacy exception handling, most bodies change.
        let this = &*self;
        let wrap = |(body, can_unwind): (&mut Rewritten, bool)| {
            let wanted = if can_unwind { style } else { Wrapper::Block };
            if body.wrapper.is_some_and(|wrapper| wrapper != wanted) {
                body.rewrap(this, wanted);
            }
        };
        bodies
            .par_iter_mut()
            .zip(can_unwind)
            .with_min_len(256)
            .for_each(wrap);
        twins
            .par_iter_mut()
            .zip(twin_unwinds)
            .with_min_len(256)
            .for_each(wrap);
        self.added_labels = bodies
            .iter()
            .map(|b| b.wrapper.map_or(0, Wrapper::labels))
            .collect();
        let report = self.report.map(|(slot, _)| self.report_wrapper_body(slot));
        self.bodies = bodies
            .into_iter()
            .chain(twins)
            .map(|b| b.bytes)
            .chain(report)
            .collect::<Vec<_>>()
            .into_iter();
    }

    /// The exception wrapper a body gets if it shows, on its own, that it can be unwound.
    fn wrapper_guess(&self) -> Option<Wrapper> {
        match self.unwind {
            UnwindExits::IfModuleUsesExceptions if !self.facts.has_tags => None,
            _ => Some(Wrapper::Standard),
        }
    }

    /// Counts the calls of the defined functions `counted` flags instead of tracing them: each
    /// gets a global, appended after the module's own and exported as
    /// [`abi::COUNTER_EXPORT_PREFIX`] followed by its hook id. Those `switchable` flags are
    /// also exported as [`abi::SWITCH_EXPORT_PREFIX`] and their id, and get a traced twin
    /// (their traced body, as a function appended after the module's own): the host can switch
    /// them back to the hooks for a run.
    pub(crate) fn count_calls(&mut self, counted: &[bool], switchable: &[bool]) {
        let mut next = self.facts.globals;
        self.counters = counted
            .iter()
            .enumerate()
            .map(|(slot, &counted)| {
                counted.then(|| {
                    self.counted_ids
                        .push(self.hook_id(self.facts.imported_funcs + slot as u32));
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let first_twin = self.output_function_index(self.facts.imported_funcs)
            + self.facts.defined_types.len() as u32;
        self.twin_slots = (0..switchable.len())
            .filter(|&slot| counted[slot] && switchable[slot])
            .collect();
        self.twin_of = vec![None; switchable.len()];
        for (k, &slot) in self.twin_slots.iter().enumerate() {
            self.twin_of[slot] = Some(first_twin + k as u32);
        }
    }

    fn write_counter_globals(&mut self, globals: &mut wasm_encoder::GlobalSection) {
        for _ in &self.counted_ids {
            globals.global(
                wasm_encoder::GlobalType {
                    val_type: wasm_encoder::ValType::I64,
                    mutable: true,
                    shared: false,
                },
                &wasm_encoder::ConstExpr::i64_const(0),
            );
        }
        self.globals_written = true;
    }

    fn write_counter_exports(&mut self, exports: &mut wasm_encoder::ExportSection) {
        let counted_slots = (self.counters.iter().enumerate())
            .filter_map(|(slot, global)| global.map(|global| (slot, global)));
        for (id, (slot, global)) in self.counted_ids.iter().zip(counted_slots) {
            exports.export(
                &format!("{}{id}", abi::COUNTER_EXPORT_PREFIX),
                wasm_encoder::ExportKind::Global,
                global,
            );
            if self.twin_of[slot].is_some() {
                exports.export(
                    &format!("{}{id}", abi::SWITCH_EXPORT_PREFIX),
                    wasm_encoder::ExportKind::Global,
                    global,
                );
            }
        }
        self.exports_written = true;
    }

    /// What to do with defined function `slot`.
    pub(crate) fn plan_for(&self, slot: usize) -> BodyPlan {
        let index = self.facts.imported_funcs + slot as u32;
        let ty = self.facts.defined_types[slot] as usize;
        let sig = self.facts.types[ty]
            .as_ref()
            .expect("validated: a defined function has a function type");
        let counter = self.counters.get(slot).copied().flatten();
        BodyPlan {
            id: self.hook_id(index) + self.id_base,
            original_index: index,
            params: sig.params.len() as u32,
            traced: self.selected[slot] && counter.is_none(),
            block_type: self.wrapper_block_types[ty],
            guess: self.wrapper_guess(),
            counter,
            twin: self.twin_of.get(slot).copied().flatten(),
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

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> ReencodeResult<()> {
        utils::parse_global_section(self, globals, section)?;
        self.write_counter_globals(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> ReencodeResult<()> {
        let start = self
            .report
            .map(|(slot, _)| self.facts.imported_funcs + slot as u32);
        for export in section {
            let export = export?;
            if export.name == "_start"
                && export.kind == wasmparser::ExternalKind::Func
                && Some(export.index) == start
            {
                let wrapper = self.report_wrapper_index();
                exports.export(export.name, wasm_encoder::ExportKind::Func, wrapper);
            } else {
                utils::parse_export(self, exports, export)?;
            }
        }
        self.write_counter_exports(exports);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> ReencodeResult<()> {
        let next = before.map_or(u8::MAX, section_rank);
        let counting = !self.counted_ids.is_empty();
        if counting && !self.globals_written && next > section_rank(SectionId::Global) {
            let mut globals = wasm_encoder::GlobalSection::new();
            self.write_counter_globals(&mut globals);
            module.section(&globals);
        }
        if counting && !self.exports_written && next > section_rank(SectionId::Export) {
            let mut exports = wasm_encoder::ExportSection::new();
            self.write_counter_exports(&mut exports);
            module.section(&exports);
        }
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
            if !self.names_written {
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
        // The traced twins follow the module's own functions.
        for body in self.bodies.by_ref() {
            code.raw(&body);
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> ReencodeResult<()> {
        utils::parse_function_section(self, functions, section)?;
        for &slot in &self.twin_slots {
            functions.function(self.facts.defined_types[slot]);
        }
        if let Some((slot, _)) = self.report {
            functions.function(self.facts.defined_types[slot]);
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
        if let wasmparser::KnownCustom::Name(_) = section.as_known() {
            // The first name section, as parsed, stands for all of them.
            if !self.names_written {
                let names = self.name_section()?;
                module.section(&names);
                self.names_written = true;
            }
            return Ok(());
        }
        utils::parse_custom_section(self, module, section)
    }
}

impl Rewriter<'_, '_> {
    /// The name section: the input's (as far as it parsed, each subsection once, in order)
    /// with indices remapped, label indices shifted past the wrappers, and the hooks named.
    fn name_section(&mut self) -> ReencodeResult<wasm_encoder::NameSection> {
        let mut names = wasm_encoder::NameSection::new();
        let parsed = self.facts.name_section.as_ref();
        if let Some(module_name) = parsed.and_then(|p| p.module.clone()) {
            utils::parse_custom_name_subsection(self, &mut names, module_name)?;
        }
        let mut functions = NameMap::new();
        let mut hooks_named = false;
        for &(index, name) in parsed.map_or(&[][..], |p| &p.functions) {
            if !hooks_named && index >= self.facts.imported_funcs {
                self.append_hook_names(&mut functions);
                hooks_named = true;
            }
            functions.append(self.output_function_index(index), name);
        }
        if !hooks_named {
            self.append_hook_names(&mut functions);
        }
        // A twin is its function, traced: it has the function's name (in backtraces, say).
        let named = parsed.map_or(&[][..], |p| &p.functions);
        for &slot in &self.twin_slots {
            let index = self.facts.imported_funcs + slot as u32;
            if let (Some(twin), Ok(at)) = (
                self.twin_of[slot],
                named.binary_search_by_key(&index, |&(i, _)| i),
            ) {
                functions.append(twin, named[at].1);
            }
        }
        if self.report.is_some() {
            functions.append(self.report_wrapper_index(), REPORT_WRAPPER_NAME);
        }
        names.functions(&functions);
        for subsection in parsed.map_or(&[][..], |p| &p.others) {
            match subsection {
                wasmparser::Name::Label(map) => names.labels(&self.label_names(map.clone())?),
                other => utils::parse_custom_name_subsection(self, &mut names, other.clone())?,
            }
        }
        Ok(names)
    }

    /// Label names with indices shifted past the labels each function's wrapper adds.
    fn label_names(
        &mut self,
        map: wasmparser::IndirectNameMap<'_>,
    ) -> ReencodeResult<wasm_encoder::IndirectNameMap> {
        let mut out = wasm_encoder::IndirectNameMap::new();
        for function in map {
            let function = function?;
            let shift = self
                .facts
                .defined_slot(function.index)
                .map_or(0, |slot| self.added_labels[slot]);
            let mut labels = NameMap::new();
            for naming in function.names {
                let naming = naming?;
                labels.append(naming.index.saturating_add(shift), naming.name);
            }
            out.append(self.output_function_index(function.index), &labels);
        }
        Ok(out)
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
        if self.report.is_some() {
            names.append(
                self.hook_index(abi::HOOKS.len() as u32),
                &format!("{}#{}", abi::COUNTS_MODULE, abi::COUNTS),
            );
        }
    }
}

/// Name of the wrapper that reports the counters as `_start` returns.
const REPORT_WRAPPER_NAME: &str = "_start (iota: counters reported)";

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
