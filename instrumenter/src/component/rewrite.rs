//! The component-level rewrite: a [`ReencodeComponent`] that instruments every core module
//! (with the core-module rewrite, ids made unique across the component), adds the hook import
//! and the gate in front of every component that holds instrumented code, passes the hooks to
//! the instances that need them, and redirects `realloc` and `post-return` options to their
//! quieting wrappers ([`super::adapter`]).
//!
//! Items added in front shift the index spaces of a component by a constant; wrappers are
//! added where they are first needed, so the core function, core instance and core module
//! spaces are remapped item by item ([`Space`]). Nested components and type declarations
//! have index spaces of their own: a stack of [`Frame`]s follows them, and outer aliases look
//! up the frame they name.

use std::collections::HashMap;

use wasm_encoder::reencode::{self, Reencode, ReencodeComponent, component_utils};
use wasm_encoder::{ComponentExportKind, ModuleArg};
use wasmparser::{
    CanonicalFunction, CanonicalOption, ComponentAlias, ComponentExternalKind,
    ComponentOuterAliasKind, ComponentTypeRef, ExternalKind,
};

use super::adapter::{self, GATE_INSTANCE, HOOKS_INSTANCE, PRELUDE, WRAPPER, WrapperAt};
use super::scan::Scan;
use crate::abi::HOOK_MODULE;
use crate::error::{Error, ErrorKind, Warning};
use crate::names::FunctionEntry;
use crate::options::Options;

type ReencodeResult<T> = std::result::Result<T, reencode::Error<Error>>;

/// Old (input) to new (output) indices of one index space, built as items are defined.
#[derive(Default)]
struct Space {
    map: Vec<u32>,
    next: u32,
}

impl Space {
    fn starting_at(next: u32) -> Self {
        Space {
            map: Vec::new(),
            next,
        }
    }

    /// The next input item is defined: it takes the next output index.
    fn define(&mut self) {
        self.map.push(self.next);
        self.next += 1;
    }

    /// `count` items of the rewrite's own are defined.
    fn insert(&mut self, count: u32) {
        self.next += count;
    }

    fn get(&self, old: u32) -> u32 {
        match self.map.get(old as usize) {
            Some(new) => *new,
            // Not defined yet (an invalid reference the validator has already refused).
            None => old + (self.next - self.map.len() as u32),
        }
    }
}

/// A component being rewritten.
struct ComponentFrame {
    /// Its position in [`Scan::components`].
    facts: usize,
    /// It got the prelude: it imports the hooks and has a gate.
    hooked: bool,
    component_type_shift: u32,
    component_instance_shift: u32,
    component_func_shift: u32,
    core_funcs: Space,
    core_instances: Space,
    core_modules: Space,
    /// Per input core module: the number of the instrumented module it is (its instances need
    /// the gate), or none.
    modules: Vec<Option<u32>>,
    /// Per input component: it imports the hooks.
    component_hooked: Vec<bool>,
    /// Input core function → output index of its quieting wrapper.
    wrappers: HashMap<u32, u32>,
}

impl ComponentFrame {
    /// The instrumented module input core module `index` is, if it is one.
    fn module(&self, index: u32) -> Option<u32> {
        self.modules.get(index as usize).copied().flatten()
    }

    /// A core module is defined: instrumented module `ordinal`, or one of no concern.
    fn define_module(&mut self, ordinal: Option<u32>) {
        self.core_modules.define();
        self.modules.push(ordinal);
    }

    fn new(facts: usize, hooked: bool) -> Self {
        let shift = if hooked {
            &PRELUDE
        } else {
            &adapter::PreludeCounts::NONE
        };
        ComponentFrame {
            facts,
            hooked,
            component_type_shift: shift.component_types,
            component_instance_shift: shift.component_instances,
            component_func_shift: shift.component_funcs,
            core_funcs: Space::starting_at(shift.core_funcs),
            core_instances: Space::starting_at(shift.core_instances),
            core_modules: Space::starting_at(shift.core_modules),
            modules: Vec::new(),
            component_hooked: Vec::new(),
            wrappers: HashMap::new(),
        }
    }
}

/// An index scope: a component, or a type declaration (component, instance or module type)
/// whose indices are its own and never move.
enum Frame {
    Component(Box<ComponentFrame>),
    TypeScope,
}

/// The rewrite of one component binary.
pub(crate) struct ComponentRewriter<'a> {
    options: &'a Options,
    scan: &'a Scan,
    frames: Vec<Frame>,
    /// Components started so far (the next one's position in [`Scan::components`]).
    components_seen: usize,
    /// Core modules instrumented so far (the next one's number in the function map).
    modules_seen: u32,
    /// The next module's id base: above every id given so far.
    next_id: u32,
    /// Every instrumented function, module by module.
    pub(crate) functions: Vec<FunctionEntry>,
    /// What could not be kept, module by module.
    pub(crate) warnings: Vec<Warning>,
}

fn user(error: Error) -> reencode::Error<Error> {
    reencode::Error::UserError(error)
}

#[cold]
fn unsupported(reason: impl Into<String>) -> reencode::Error<Error> {
    user(Error::new(ErrorKind::ComponentUnsupported {
        reason: reason.into(),
    }))
}

impl<'a> ComponentRewriter<'a> {
    pub(crate) fn new(options: &'a Options, scan: &'a Scan) -> Self {
        ComponentRewriter {
            options,
            scan,
            frames: Vec::new(),
            components_seen: 0,
            modules_seen: 0,
            next_id: 0,
            functions: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Rewrites the component `data` (starting at `parser`'s offset) into `out`; returns
    /// whether it imports the hooks.
    pub(crate) fn component(
        &mut self,
        out: &mut wasm_encoder::Component,
        parser: wasmparser::Parser,
        data: &[u8],
        whole: &[u8],
    ) -> ReencodeResult<bool> {
        let facts = self.components_seen;
        self.components_seen += 1;
        let hooked = self
            .scan
            .components
            .get(facts)
            .is_some_and(|c| c.needs_hooks);
        self.frames
            .push(Frame::Component(Box::new(ComponentFrame::new(
                facts, hooked,
            ))));
        if hooked {
            adapter::write_prelude(out);
        }
        component_utils::parse_component(self, out, parser, data, whole)?;
        self.frames.pop();
        Ok(hooked)
    }

    /// The innermost component.
    fn frame(&mut self) -> &mut ComponentFrame {
        for frame in self.frames.iter_mut().rev() {
            if let Frame::Component(frame) = frame {
                return frame;
            }
        }
        unreachable!("sections are always read inside a component")
    }

    /// The scope `count` levels out, if it is a component.
    fn outer(&self, count: u32) -> Option<&ComponentFrame> {
        let at = self.frames.len().checked_sub(1 + count as usize)?;
        match &self.frames[at] {
            Frame::Component(frame) => Some(frame),
            Frame::TypeScope => None,
        }
    }

    /// The innermost scope, if it is a component (not a type declaration).
    fn current(&self) -> Option<&ComponentFrame> {
        self.outer(0)
    }

    /// Instruments one core module with ids above every id given so far.
    fn module(&mut self, offset: u64, module: &[u8]) -> crate::error::Result<Vec<u8>> {
        let ordinal = self.modules_seen;
        self.modules_seen += 1;
        let mut options = self.options.clone();
        options.id_base = self.next_id;
        // A host cannot read the counter globals of a component's core instances.
        options.call_timing(crate::CallTiming::EveryCall);
        let out = crate::instrument(module, &options).map_err(|e| e.in_module(ordinal, offset))?;
        if out.passed_through {
            return Err(Error::new(ErrorKind::AlreadyInstrumented).in_module(ordinal, offset));
        }
        if let Some(last) = out.functions.last() {
            self.next_id = last.id + 1;
        }
        self.functions
            .extend(out.functions.into_iter().map(|mut f| {
                f.module = Some(ordinal);
                f
            }));
        self.warnings.extend(out.warnings.into_iter().map(|w| {
            Warning::new(
                format!("core module {ordinal}: {}", w.message()),
                w.offset().map(|o| o + offset),
            )
        }));
        Ok(out.wasm)
    }

    /// Writes the canonical functions of `section`, each `realloc` and `post-return` option
    /// redirected to a quieting wrapper, written just before its first use.
    fn canonical_section(
        &mut self,
        component: &mut wasm_encoder::Component,
        section: wasmparser::ComponentCanonicalSectionReader<'_>,
    ) -> ReencodeResult<()> {
        let mut out = wasm_encoder::CanonicalFunctionSection::new();
        for func in section {
            let func = func?;
            for target in quieted(&func) {
                let frame = self.frame();
                if !frame.hooked || frame.wrappers.contains_key(&target) {
                    continue;
                }
                if !out.is_empty() {
                    component.section(&out);
                    out = wasm_encoder::CanonicalFunctionSection::new();
                }
                let facts = frame.facts;
                let at = WrapperAt {
                    target_func: frame.core_funcs.get(target),
                    next_core_instance: frame.core_instances.next,
                    next_core_module: frame.core_modules.next,
                };
                let sig = self.scan.components[facts]
                    .core_funcs
                    .get(target as usize)
                    .ok_or_else(|| unsupported("a canonical option names an unknown function"))?;
                adapter::write_quieting_wrapper(component, sig, &at).map_err(user)?;
                let frame = self.frame();
                frame.core_instances.insert(WRAPPER.core_instances);
                frame.core_modules.insert(WRAPPER.core_modules);
                let wrapper = frame.core_funcs.next;
                frame.core_funcs.insert(WRAPPER.core_funcs);
                frame.wrappers.insert(target, wrapper);
            }
            let defines_core_func = !matches!(func, CanonicalFunction::Lift { .. });
            self.parse_component_canonical(&mut out, func)?;
            if defines_core_func {
                self.frame().core_funcs.define();
            }
        }
        if !out.is_empty() {
            component.section(&out);
        }
        Ok(())
    }

    /// Refuses to let an instrumented core module or component leave the component that
    /// defines it: whoever instantiates it elsewhere would not pass it the hooks.
    fn check_stays(&mut self, kind: ComponentExternalKind, index: u32) -> ReencodeResult<()> {
        let frame = self.frame();
        let leaves = match kind {
            ComponentExternalKind::Module => frame.module(index).is_some(),
            ComponentExternalKind::Component => frame
                .component_hooked
                .get(index as usize)
                .copied()
                .unwrap_or(false),
            _ => false,
        };
        if leaves {
            let what = if kind == ComponentExternalKind::Module {
                "core module"
            } else {
                "component"
            };
            return Err(unsupported(format!(
                "{what} {index} is exported or passed to another component; an instrumented \
                 {what} can only be instantiated by the component that defines it"
            )));
        }
        Ok(())
    }
}

/// The functions named by `realloc` and `post-return` options of `func`: the host runs them
/// while the component may not call out.
fn quieted(func: &CanonicalFunction) -> Vec<u32> {
    let options: &[CanonicalOption] = match func {
        CanonicalFunction::Lift { options, .. }
        | CanonicalFunction::Lower { options, .. }
        | CanonicalFunction::TaskReturn { options, .. }
        | CanonicalFunction::StreamRead { options, .. }
        | CanonicalFunction::StreamWrite { options, .. }
        | CanonicalFunction::FutureRead { options, .. }
        | CanonicalFunction::FutureWrite { options, .. }
        | CanonicalFunction::ErrorContextNew { options }
        | CanonicalFunction::ErrorContextDebugMessage { options } => options,
        _ => &[],
    };
    options
        .iter()
        .filter_map(|option| match option {
            CanonicalOption::Realloc(f) | CanonicalOption::PostReturn(f) => Some(*f),
            _ => None,
        })
        .collect()
}

impl Reencode for ComponentRewriter<'_> {
    type Error = Error;

    fn function_index(&mut self, func: u32) -> ReencodeResult<u32> {
        Ok(self.current().map_or(func, |f| f.core_funcs.get(func)))
    }
}

impl ReencodeComponent for ComponentRewriter<'_> {
    fn component_type_index(&mut self, ty: u32) -> u32 {
        self.current().map_or(ty, |f| ty + f.component_type_shift)
    }

    fn component_instance_index(&mut self, instance: u32) -> u32 {
        self.current()
            .map_or(instance, |f| instance + f.component_instance_shift)
    }

    fn component_func_index(&mut self, func: u32) -> u32 {
        self.current()
            .map_or(func, |f| func + f.component_func_shift)
    }

    fn module_index(&mut self, module: u32) -> u32 {
        self.current()
            .map_or(module, |f| f.core_modules.get(module))
    }

    fn instance_index(&mut self, instance: u32) -> u32 {
        self.current()
            .map_or(instance, |f| f.core_instances.get(instance))
    }

    fn outer_type_index(&mut self, _count: u32, ty: u32) -> ReencodeResult<u32> {
        // No core type is ever added.
        Ok(ty)
    }

    fn outer_component_type_index(&mut self, count: u32, ty: u32) -> u32 {
        self.outer(count)
            .map_or(ty, |f| ty + f.component_type_shift)
    }

    fn outer_component_index(&mut self, _count: u32, component: u32) -> u32 {
        // No component is ever added.
        component
    }

    fn outer_module_index(&mut self, count: u32, module: u32) -> u32 {
        self.outer(count)
            .map_or(module, |f| f.core_modules.get(module))
    }

    fn push_depth(&mut self) {
        self.frames.push(Frame::TypeScope);
    }

    fn pop_depth(&mut self) {
        self.frames.pop();
    }

    fn parse_component_payload(
        &mut self,
        component: &mut wasm_encoder::Component,
        payload: wasmparser::Payload<'_>,
        whole_component: &[u8],
    ) -> ReencodeResult<()> {
        match payload {
            wasmparser::Payload::ComponentCanonicalSection(section) => {
                self.canonical_section(component, section)
            }
            other => {
                component_utils::parse_component_payload(self, component, other, whole_component)
            }
        }
    }

    fn parse_component_submodule(
        &mut self,
        component: &mut wasm_encoder::Component,
        parser: wasmparser::Parser,
        module: &[u8],
    ) -> ReencodeResult<()> {
        let ordinal = self.modules_seen;
        let wasm = self.module(parser.offset(), module).map_err(user)?;
        component.section(&wasm_encoder::RawSection {
            id: wasm_encoder::ComponentSectionId::CoreModule as u8,
            data: &wasm,
        });
        self.frame().define_module(Some(ordinal));
        Ok(())
    }

    fn parse_component_subcomponent(
        &mut self,
        component: &mut wasm_encoder::Component,
        parser: wasmparser::Parser,
        subcomponent: &[u8],
        whole_component: &[u8],
    ) -> ReencodeResult<()> {
        let mut nested = wasm_encoder::Component::new();
        let hooked = self.component(&mut nested, parser, subcomponent, whole_component)?;
        component.section(&wasm_encoder::NestedComponentSection(&nested));
        self.frame().component_hooked.push(hooked);
        Ok(())
    }

    fn parse_component_import_section(
        &mut self,
        imports: &mut wasm_encoder::ComponentImportSection,
        section: wasmparser::ComponentImportSectionReader<'_>,
    ) -> ReencodeResult<()> {
        for import in section {
            let import = import?;
            imports.import(import.name, self.component_type_ref(import.ty)?);
            let frame = self.frame();
            match import.ty {
                ComponentTypeRef::Module(_) => frame.define_module(None),
                ComponentTypeRef::Component(_) => frame.component_hooked.push(false),
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_component_alias_section(
        &mut self,
        aliases: &mut wasm_encoder::ComponentAliasSection,
        section: wasmparser::ComponentAliasSectionReader<'_>,
    ) -> ReencodeResult<()> {
        for alias in section {
            let alias = alias?;
            aliases.alias(self.component_alias(alias.clone())?);
            match alias {
                ComponentAlias::CoreInstanceExport {
                    kind: ExternalKind::Func | ExternalKind::FuncExact,
                    ..
                } => self.frame().core_funcs.define(),
                ComponentAlias::InstanceExport {
                    kind: ComponentExternalKind::Module,
                    ..
                } => self.frame().define_module(None),
                ComponentAlias::InstanceExport {
                    kind: ComponentExternalKind::Component,
                    ..
                } => self.frame().component_hooked.push(false),
                ComponentAlias::Outer {
                    kind: ComponentOuterAliasKind::CoreModule,
                    count,
                    index,
                } => {
                    let ordinal = self.outer(count).and_then(|f| f.module(index));
                    self.frame().define_module(ordinal);
                }
                ComponentAlias::Outer {
                    kind: ComponentOuterAliasKind::Component,
                    count,
                    index,
                } => {
                    let hooked = self
                        .outer(count)
                        .and_then(|f| f.component_hooked.get(index as usize).copied())
                        .unwrap_or(false);
                    self.frame().component_hooked.push(hooked);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_instance(
        &mut self,
        instances: &mut wasm_encoder::InstanceSection,
        instance: wasmparser::Instance<'_>,
    ) -> ReencodeResult<()> {
        match instance {
            wasmparser::Instance::Instantiate { module_index, args } => {
                let hooked = self.frame().module(module_index).is_some();
                let mut out = Vec::with_capacity(args.len() + 1);
                for arg in args.iter() {
                    if hooked && arg.name == HOOK_MODULE {
                        return Err(unsupported(format!(
                            "core module {module_index} is instantiated with an instance named \
                             `{HOOK_MODULE}`, the name of the hooks"
                        )));
                    }
                    out.push((
                        arg.name,
                        ModuleArg::Instance(self.instance_index(arg.index)),
                    ));
                }
                if hooked {
                    out.push((HOOK_MODULE, ModuleArg::Instance(GATE_INSTANCE)));
                }
                instances.instantiate(self.module_index(module_index), out);
            }
            other => component_utils::parse_instance(self, instances, other)?,
        }
        self.frame().core_instances.define();
        Ok(())
    }

    fn parse_component_instance(
        &mut self,
        instances: &mut wasm_encoder::ComponentInstanceSection,
        instance: wasmparser::ComponentInstance<'_>,
    ) -> ReencodeResult<()> {
        match instance {
            wasmparser::ComponentInstance::Instantiate {
                component_index,
                args,
            } => {
                let hooked = self
                    .frame()
                    .component_hooked
                    .get(component_index as usize)
                    .copied()
                    .unwrap_or(false);
                let mut out = Vec::with_capacity(args.len() + 1);
                for arg in args.iter() {
                    self.check_stays(arg.kind, arg.index)?;
                    if hooked && arg.name == HOOK_MODULE {
                        return Err(unsupported(format!(
                            "component {component_index} is instantiated with an argument named \
                             `{HOOK_MODULE}`, the name of the hooks"
                        )));
                    }
                    out.push((
                        arg.name,
                        arg.kind.into(),
                        self.component_external_index(arg.kind, arg.index),
                    ));
                }
                if hooked {
                    out.push((HOOK_MODULE, ComponentExportKind::Instance, HOOKS_INSTANCE));
                }
                instances.instantiate(component_index, out);
                Ok(())
            }
            wasmparser::ComponentInstance::FromExports(exports) => {
                for export in exports.iter() {
                    self.check_stays(export.kind, export.index)?;
                }
                component_utils::parse_component_instance(
                    self,
                    instances,
                    wasmparser::ComponentInstance::FromExports(exports),
                )
            }
        }
    }

    fn parse_component_export(
        &mut self,
        exports: &mut wasm_encoder::ComponentExportSection,
        export: wasmparser::ComponentExport<'_>,
    ) -> ReencodeResult<()> {
        self.check_stays(export.kind, export.index)?;
        let kind = export.kind;
        component_utils::parse_component_export(self, exports, export)?;
        let frame = self.frame();
        match kind {
            ComponentExternalKind::Module => frame.define_module(None),
            ComponentExternalKind::Component => frame.component_hooked.push(false),
            _ => {}
        }
        Ok(())
    }

    fn canonical_option(
        &mut self,
        option: CanonicalOption,
    ) -> ReencodeResult<wasm_encoder::CanonicalOption> {
        let wrapped = |frame: &ComponentFrame, f: u32| frame.wrappers.get(&f).copied();
        match option {
            CanonicalOption::Realloc(f) => {
                if let Some(wrapper) = self.current().and_then(|frame| wrapped(frame, f)) {
                    return Ok(wasm_encoder::CanonicalOption::Realloc(wrapper));
                }
            }
            CanonicalOption::PostReturn(f) => {
                if let Some(wrapper) = self.current().and_then(|frame| wrapped(frame, f)) {
                    return Ok(wasm_encoder::CanonicalOption::PostReturn(wrapper));
                }
            }
            _ => {}
        }
        component_utils::canonical_option(self, option)
    }
}
