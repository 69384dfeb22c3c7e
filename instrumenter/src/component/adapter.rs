//! What each component that holds instrumented code gets in front of its own sections, and the
//! small core modules that come with it.
//!
//! The hooks are one import of the component, the instance [`HOOK_MODULE`] (`enter: func(id:
//! u32)`, `exit: func(id: u32)`, `memory-grow: func(pages: u32)`). They are lowered into core
//! functions and reach the instrumented modules through a small *gate* module: its `enter`,
//! `exit` and `memory-grow` call the lowered hooks unless its `quiet` counter is set.
//!
//! The counter is what makes the hooks safe to call: the canonical ABI forbids leaving a
//! component instance while the host runs its `realloc` or a `post-return` function (wasmtime
//! traps "cannot leave component instance"), and both are ordinary, instrumented functions.
//! So every `realloc` and `post-return` option of the component is redirected to a *quieting*
//! wrapper that raises the counter, calls the function and lowers the counter: the hook calls
//! made on those paths are skipped, all of them (enter and exit alike), so the calls the host
//! sees still nest.

use wasm_encoder::{
    Alias, CanonicalFunctionSection, ComponentAliasSection, ComponentExportKind,
    ComponentImportSection, ComponentTypeRef, ComponentTypeSection, ComponentValType, EntityType,
    ExportKind, ExportSection, Function, FunctionSection, GlobalType, ImportSection, InstanceType,
    Module, ModuleArg, PrimitiveValType, TypeSection, ValType,
};

use crate::abi::{self, HOOK_MODULE};
use crate::error::{Error, ErrorKind, Result};

/// Name of the lowered hooks' instance given to the gate.
const RAW: &str = "hooks";
/// Name of the gate's counter export.
pub(crate) const QUIET: &str = "quiet";
/// Name of the gate instance given to a quieting wrapper, and of the wrapped function's.
const GATE: &str = "gate";
const TARGET: &str = "target";

/// Custom section that marks the core modules this rewrite adds (the gate and the wrappers),
/// so that a second look at the output tells them from the component's own.
pub(crate) const ADAPTER_SECTION: &str = "iota.adapter";

fn marker() -> wasm_encoder::CustomSection<'static> {
    wasm_encoder::CustomSection {
        name: ADAPTER_SECTION.into(),
        data: (&[][..]).into(),
    }
}

/// Index-space growth caused by the prelude of one component.
pub(crate) struct PreludeCounts {
    pub component_types: u32,
    pub component_instances: u32,
    pub component_funcs: u32,
    pub core_funcs: u32,
    pub core_instances: u32,
    pub core_modules: u32,
}

impl PreludeCounts {
    /// Nothing added.
    pub(crate) const NONE: PreludeCounts = PreludeCounts {
        component_types: 0,
        component_instances: 0,
        component_funcs: 0,
        core_funcs: 0,
        core_instances: 0,
        core_modules: 0,
    };
}

/// What [`write_prelude`] adds, in order.
pub(crate) const PRELUDE: PreludeCounts = PreludeCounts {
    component_types: 1,
    component_instances: 1,
    component_funcs: 3,
    core_funcs: 3,
    core_instances: 2,
    core_modules: 1,
};

/// The component instance holding the imported hooks (output index).
pub(crate) const HOOKS_INSTANCE: u32 = 0;
/// The gate's core instance (output index): what instrumented modules are instantiated with.
pub(crate) const GATE_INSTANCE: u32 = 1;

/// Writes the hook import, its lowering and the gate at the start of a component.
pub(crate) fn write_prelude(component: &mut wasm_encoder::Component) {
    let mut instance = InstanceType::new();
    for (hook, param) in [
        (abi::ENTER, "id"),
        (abi::EXIT, "id"),
        (abi::MEMORY_GROW, "pages"),
    ] {
        let ty = instance.type_count();
        instance
            .ty()
            .function()
            .params([(param, ComponentValType::Primitive(PrimitiveValType::U32))])
            .result(None);
        instance.export(hook, ComponentTypeRef::Func(ty));
    }
    let mut types = ComponentTypeSection::new();
    types.instance(&instance);
    component.section(&types);

    let mut imports = ComponentImportSection::new();
    imports.import(HOOK_MODULE, ComponentTypeRef::Instance(0));
    component.section(&imports);

    let mut aliases = ComponentAliasSection::new();
    for hook in abi::HOOKS {
        aliases.alias(Alias::InstanceExport {
            instance: HOOKS_INSTANCE,
            kind: ComponentExportKind::Func,
            name: hook,
        });
    }
    component.section(&aliases);

    let mut lowered = CanonicalFunctionSection::new();
    for func in 0..3 {
        lowered.lower(func, []);
    }
    component.section(&lowered);

    let mut instances = wasm_encoder::InstanceSection::new();
    instances.export_items(
        abi::HOOKS
            .iter()
            .enumerate()
            .map(|(func, hook)| (*hook, ExportKind::Func, func as u32)),
    );
    component.section(&instances);

    component.section(&wasm_encoder::ModuleSection(&gate_module()));

    let mut instances = wasm_encoder::InstanceSection::new();
    instances.instantiate(0, [(RAW, ModuleArg::Instance(0))]);
    component.section(&instances);
}

/// The gate: `enter`, `exit` and `memory-grow` forward to the imported hooks while the
/// exported global `quiet` is zero.
fn gate_module() -> Module {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], []);
    let mut imports = ImportSection::new();
    for hook in abi::HOOKS {
        imports.import(RAW, hook, EntityType::Function(0));
    }
    let mut functions = FunctionSection::new();
    let mut globals = wasm_encoder::GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        },
        &wasm_encoder::ConstExpr::i32_const(0),
    );
    let mut exports = ExportSection::new();
    let mut code = wasm_encoder::CodeSection::new();
    for (hook_index, hook) in abi::HOOKS.iter().enumerate() {
        functions.function(0);
        exports.export(hook, ExportKind::Func, 3 + hook_index as u32);
        let mut body = Function::new([]);
        body.instructions()
            .global_get(0)
            .i32_eqz()
            .if_(wasm_encoder::BlockType::Empty)
            .local_get(0)
            .call(hook_index as u32)
            .end()
            .end();
        code.function(&body);
    }
    exports.export(QUIET, ExportKind::Global, 0);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&globals)
        .section(&exports)
        .section(&code)
        .section(&marker());
    module
}

/// The items [`write_quieting_wrapper`] adds, in order: a core instance (the target),
/// a core module, a core instance (the wrapper) and a core function (its export).
pub(crate) const WRAPPER: PreludeCounts = PreludeCounts {
    component_types: 0,
    component_instances: 0,
    component_funcs: 0,
    core_funcs: 1,
    core_instances: 2,
    core_modules: 1,
};

/// Output indices a wrapper needs and gets.
pub(crate) struct WrapperAt {
    /// The function to wrap.
    pub target_func: u32,
    /// The next core instance index (the first of the two the wrapper adds).
    pub next_core_instance: u32,
    /// The next core module index.
    pub next_core_module: u32,
}

/// Writes a wrapper that calls `at.target_func` (of type `sig`) with the gate's `quiet` counter
/// raised. The wrapper is then core function number `next_core_func` of the component.
pub(crate) fn write_quieting_wrapper(
    component: &mut wasm_encoder::Component,
    sig: &super::scan::CoreSig,
    at: &WrapperAt,
) -> Result<()> {
    let convert = |types: &[wasmparser::ValType]| -> Result<Vec<ValType>> {
        types
            .iter()
            .map(|ty| match ty {
                wasmparser::ValType::I32 => Ok(ValType::I32),
                wasmparser::ValType::I64 => Ok(ValType::I64),
                wasmparser::ValType::F32 => Ok(ValType::F32),
                wasmparser::ValType::F64 => Ok(ValType::F64),
                other => Err(Error::new(ErrorKind::ComponentUnsupported {
                    reason: format!(
                        "a `realloc` or `post-return` function takes or returns a {other}"
                    ),
                })),
            })
            .collect()
    };
    let (params, results) = (convert(&sig.0)?, convert(&sig.1)?);

    let mut instances = wasm_encoder::InstanceSection::new();
    instances.export_items([(TARGET, ExportKind::Func, at.target_func)]);
    component.section(&instances);

    let mut types = TypeSection::new();
    types
        .ty()
        .function(params.iter().copied(), results.iter().copied());
    let mut imports = ImportSection::new();
    imports.import(
        GATE,
        QUIET,
        EntityType::Global(GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        }),
    );
    imports.import(TARGET, TARGET, EntityType::Function(0));
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut exports = ExportSection::new();
    exports.export(TARGET, ExportKind::Func, 1);
    let mut body = Function::new([]);
    let mut sink = body.instructions();
    sink.global_get(0).i32_const(1).i32_add().global_set(0);
    for param in 0..params.len() as u32 {
        sink.local_get(param);
    }
    sink.call(0)
        .global_get(0)
        .i32_const(1)
        .i32_sub()
        .global_set(0)
        .end();
    let mut code = wasm_encoder::CodeSection::new();
    code.function(&body);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&exports)
        .section(&code)
        .section(&marker());
    component.section(&wasm_encoder::ModuleSection(&module));

    let mut instances = wasm_encoder::InstanceSection::new();
    instances.instantiate(
        at.next_core_module,
        [
            (GATE, ModuleArg::Instance(GATE_INSTANCE)),
            (TARGET, ModuleArg::Instance(at.next_core_instance)),
        ],
    );
    component.section(&instances);

    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::CoreInstanceExport {
        instance: at.next_core_instance + 1,
        kind: ExportKind::Func,
        name: TARGET,
    });
    component.section(&aliases);
    Ok(())
}
