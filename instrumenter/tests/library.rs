//! The library's contract: errors, options, names, sections, determinism.

use iota_instrument::{
    CallTiming, ErrorKind, IfInstrumented, Options, UnwindExits, instrument, is_instrumented,
};
use wasmparser::{Parser, Payload, Validator};

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

fn validate(wasm: &[u8]) {
    Validator::new_with_features(iota_instrument::features())
        .validate_all(wasm)
        .unwrap();
}

fn custom_sections(wasm: &[u8]) -> Vec<String> {
    Parser::new(0)
        .parse_all(wasm)
        .filter_map(|p| match p.unwrap() {
            Payload::CustomSection(s) => Some(s.name().to_string()),
            _ => None,
        })
        .collect()
}

fn printed(wasm: &[u8]) -> String {
    wasmprinter::print_bytes(wasm).unwrap()
}

const SAMPLE: &str = r#"(module
  (import "env" "log" (func $log (param i32)))
  (func $_ZN4demo4main17h0123456789abcdefE (export "run") (result i32)
    i32.const 1 call $log
    call $helper)
  (func $helper (result i32) i32.const 7)
  (func (export "exported_only")))"#;

#[test]
fn invalid_input_reports_what_and_where() {
    let mut wasm = wat(SAMPLE);
    let last = wasm.len() - 1;
    wasm.truncate(last);
    let err = instrument(&wasm, &Options::new()).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Invalid(_)), "{err}");
    assert!(err.offset().is_some());
    assert!(err.to_string().contains("at offset 0x"), "{err}");

    let err = instrument(b"not wasm at all", &Options::new()).unwrap_err();
    assert!(
        err.to_string().starts_with("invalid WebAssembly: "),
        "{err}"
    );
    assert!(instrument(&[], &Options::new()).is_err());
}

#[test]
fn components_are_instrumented_module_by_module() {
    let empty = instrument(&wat("(component)"), &Options::new()).unwrap();
    assert!(empty.functions.is_empty());
    assert!(iota_instrument::is_instrumented(&empty.wasm).unwrap());

    let component = wat(r#"(component
             (core module (func $a) (func $b))
             (component (core module (func $c))))"#);
    let out = instrument(&component, &Options::new()).unwrap();
    wasmparser::Validator::new_with_features(iota_instrument::component_features())
        .validate_all(&out.wasm)
        .unwrap();
    let map: Vec<_> = out
        .functions
        .iter()
        .map(|f| (f.id, f.original_index, f.name.as_str(), f.module))
        .collect();
    // Each module's ids start above the previous module's.
    assert_eq!(
        map,
        [
            (3, 0, "a", Some(0)),
            (4, 1, "b", Some(0)),
            (8, 0, "c", Some(1))
        ]
    );
}

#[test]
fn hooks_are_appended_after_existing_imports_and_ids_are_output_indices() {
    let out = instrument(&wat(SAMPLE), &Options::new()).unwrap();
    validate(&out.wasm);
    let text = printed(&out.wasm);
    assert!(
        text.contains(r#"(import "env" "log" (func $log (;0;)"#),
        "{text}"
    );
    assert!(
        text.contains(r#"(import "dylibso:observe/instrument" "enter" (func"#),
        "{text}"
    );
    assert!(
        text.contains(r#"(import "dylibso:observe/instrument" "memory-grow" (func"#),
        "{text}"
    );
    // Defined functions moved from 1..=3 to 4..=6, and calls and exports follow them.
    let ids: Vec<(u32, u32)> = out
        .functions
        .iter()
        .map(|f| (f.original_index, f.id))
        .collect();
    assert_eq!(ids, [(1, 4), (2, 5), (3, 6)]);
    assert!(text.contains("call $helper"), "{text}");
    assert!(text.contains("(func $helper (;5;)"), "{text}");
    assert!(
        text.contains(r#"(export "run" (func $_ZN4demo4main17h0123456789abcdefE))"#),
        "{text}"
    );
}

#[test]
fn names_are_demangled_with_export_and_index_fallbacks() {
    let out = instrument(&wat(SAMPLE), &Options::new()).unwrap();
    let names: Vec<&str> = out.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["demo::main", "helper", "exported_only"]);
    assert_eq!(
        out.functions[0].raw_name.as_deref(),
        Some("_ZN4demo4main17h0123456789abcdefE")
    );

    let no_names = wat("(module (func) (func (export \"e\")))");
    let stripped = strip_names(&no_names);
    let out = instrument(&stripped, &Options::new()).unwrap();
    let names: Vec<&str> = out.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["wasm-function[0]", "e"]);
    assert!(printed(&out.wasm).contains("$dylibso:observe/instrument#enter"));
}

/// Rebuilds `wasm` keeping only its non-custom sections.
fn strip_names(wasm: &[u8]) -> Vec<u8> {
    let mut out = wasm[..8].to_vec();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Some((id, range)) = payload.unwrap().as_section()
            && id != 0
        {
            out.push(id);
            let range = range.start as usize..range.end as usize;
            leb(&mut out, range.len() as u32);
            out.extend_from_slice(&wasm[range]);
        }
    }
    out
}

fn leb(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn include_and_exclude_select_functions() {
    let mut options = Options::new();
    options.include("demo::*").include("helper");
    options.exclude("helper");
    let out = instrument(&wat(SAMPLE), &options).unwrap();
    validate(&out.wasm);
    let selected: Vec<bool> = out.functions.iter().map(|f| f.instrumented).collect();
    assert_eq!(selected, [true, false, false]);
    let text = printed(&out.wasm);
    assert_eq!(
        text.matches("call $dylibso:observe/instrument#enter")
            .count(),
        1,
        "{text}"
    );

    let err = instrument(&wat(SAMPLE), Options::new().include("a[")).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Pattern { .. }), "{err}");
}

#[test]
fn already_instrumented_fails_or_passes_through() {
    let once = instrument(&wat(SAMPLE), &Options::new()).unwrap();
    assert!(is_instrumented(&once.wasm).unwrap());
    assert!(!is_instrumented(&wat(SAMPLE)).unwrap());
    let err = instrument(&once.wasm, &Options::new()).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::AlreadyInstrumented);

    let twice = instrument(
        &once.wasm,
        Options::new().if_instrumented(IfInstrumented::PassThrough),
    )
    .unwrap();
    assert!(twice.passed_through);
    assert_eq!(twice.wasm, once.wasm);
    let ids = |f: &[iota_instrument::FunctionEntry]| {
        f.iter().map(|f| (f.id, f.name.clone())).collect::<Vec<_>>()
    };
    assert_eq!(ids(&twice.functions), ids(&once.functions));

    // Modules instrumented by Observe SDK tools (legacy names) count as instrumented too.
    let legacy =
        wat(r#"(module (import "dylibso_observe" "instrument_enter" (func (param i32))))"#);
    assert!(is_instrumented(&legacy).unwrap());
}

#[test]
fn debug_sections_are_dropped_unless_kept() {
    let mut wasm = wat(SAMPLE);
    wasm.extend_from_slice(&[0, 13, 11]);
    wasm.extend_from_slice(b".debug_info");
    wasm.extend_from_slice(&[0x00]);
    wasm.extend_from_slice(&[0, 10, 9]);
    wasm.extend_from_slice(b"producers");
    let dropped = instrument(&wasm, &Options::new()).unwrap();
    let kept = instrument(&wasm, Options::new().keep_debug(true)).unwrap();
    let sections = custom_sections(&dropped.wasm);
    assert!(!sections.iter().any(|s| s == ".debug_info"), "{sections:?}");
    assert!(sections.iter().any(|s| s == "producers"), "{sections:?}");
    assert!(
        sections
            .iter()
            .any(|s| s == iota_instrument::MARKER_SECTION)
    );
    assert!(
        custom_sections(&kept.wasm)
            .iter()
            .any(|s| s == ".debug_info")
    );
}

#[test]
fn modules_without_type_or_import_sections_get_them() {
    for text in ["(module)", "(module (memory 1) (data (i32.const 0) \"x\"))"] {
        let out = instrument(&wat(text), &Options::new()).unwrap();
        validate(&out.wasm);
        assert!(printed(&out.wasm).contains(r#"(import "dylibso:observe/instrument" "exit""#));
    }
}

#[test]
fn output_is_deterministic() {
    let wasm = wat(SAMPLE);
    let a = instrument(&wasm, &Options::new()).unwrap();
    let b = instrument(&wasm, &Options::new()).unwrap();
    assert_eq!(a.wasm, b.wasm);
}

#[test]
fn exception_handlers_follow_the_module_style() {
    let standard = wat(r#"(module (tag $e) (func (throw $e)))"#);
    let text = printed(
        &instrument(&standard, Options::new().call_timing(CallTiming::EveryCall))
            .unwrap()
            .wasm,
    );
    assert!(
        text.contains("catch_all_ref") && text.contains("throw_ref"),
        "{text}"
    );

    let legacy = wat(r#"(module (tag $e) (func try throw $e catch $e end))"#);
    let out = instrument(&legacy, Options::new().call_timing(CallTiming::EveryCall)).unwrap();
    validate(&out.wasm);
    let text = printed(&out.wasm);
    assert!(
        text.contains("catch_all") && text.contains("rethrow 0"),
        "{text}"
    );
    assert!(!text.contains("throw_ref"), "{text}");
    assert!(
        text.contains("call $dylibso:observe/instrument#exit"),
        "hooks named: {text}"
    );

    let none = wat(r#"(module (func (result i32) i32.const 1))"#);
    let text = printed(
        &instrument(&none, Options::new().call_timing(CallTiming::EveryCall))
            .unwrap()
            .wasm,
    );
    assert!(!text.contains("try"), "{text}");
}

#[test]
fn memory64_growth_reports_a_saturated_delta() {
    let wasm = wat(r#"(module (memory i64 1) (func (result i64) i64.const 2 memory.grow))"#);
    let out = instrument(&wasm, &Options::new()).unwrap();
    validate(&out.wasm);
    let text = printed(&out.wasm);
    assert!(text.contains("i64.const 2147483647"), "{text}");
    assert!(text.contains("i64.lt_u"), "{text}");
    assert!(text.contains("i32.wrap_i64"), "{text}");
    assert!(text.contains("(local i32 i64)"), "{text}");
}

/// The printed body of every defined function, in order (the hooks are imports, not bodies).
fn bodies(wasm: &[u8]) -> Vec<String> {
    let text = printed(wasm);
    text.split("\n  (func ")
        .skip(1)
        .map(|f| f.split("\n  (").next().unwrap().to_string())
        .collect()
}

const CALLS_OUT: &str = r#"(module
  (import "env" "host" (func $host))
  (type $v (func))
  (table 1 funcref)
  (func $leaf (result i32) i32.const 1)
  (func $calls_leaf (result i32) call $leaf)
  (func $calls_host call $host)
  (func $calls_caller_of_host call $calls_host)
  (func $indirect i32.const 0 call_indirect (type $v))
  (func $tail_indirect i32.const 0 return_call_indirect (type $v))
  (func $recursive_leaf (param i32) local.get 0 br_if 0 i32.const 0 call $recursive_leaf)
  (func $tail_host return_call $host)
  (func $calls_tail_host call $tail_host))"#;

#[test]
fn functions_that_can_be_unwound_exit_on_unwind_in_any_module() {
    let out = instrument(&wat(CALLS_OUT), &Options::new()).unwrap();
    validate(&out.wasm);
    let handled: Vec<bool> = bodies(&out.wasm)
        .iter()
        .map(|b| b.contains("try_table") && b.contains("catch_all_ref") && b.contains("throw_ref"))
        .collect();
    // leaf, calls_leaf, calls_host, calls_caller_of_host, indirect, tail_indirect,
    // recursive_leaf, tail_host (its frame is gone when the host runs), calls_tail_host (an
    // exception from the host tail-called by its callee unwinds it)
    assert_eq!(
        handled,
        [false, false, true, true, true, false, false, false, true],
        "{}",
        printed(&out.wasm)
    );

    // Asked to handle only the module's own exceptions: this module has none.
    let own = instrument(
        &wat(CALLS_OUT),
        Options::new().unwind_exits(UnwindExits::IfModuleUsesExceptions),
    )
    .unwrap();
    validate(&own.wasm);
    assert!(!printed(&own.wasm).contains("try_table"));

    // A module with a tag: the same functions get the handler under either setting.
    let with_tag = CALLS_OUT.replace("(type $v (func))", "(type $v (func)) (tag $t)");
    for unwind in [UnwindExits::Always, UnwindExits::IfModuleUsesExceptions] {
        let out = instrument(&wat(&with_tag), Options::new().unwind_exits(unwind)).unwrap();
        let handled: Vec<bool> = bodies(&out.wasm)
            .iter()
            .map(|b| b.contains("try_table"))
            .collect();
        assert_eq!(
            handled,
            [false, false, true, true, true, false, false, false, true]
        );
    }
}

#[test]
fn an_exception_instruction_without_a_tag_counts_as_using_exceptions() {
    let module = r#"(module
      (func $rethrows (param exnref) local.get 0 throw_ref)
      (func $calls (param exnref) local.get 0 call $rethrows)
      (func $leaf))"#;
    let out = instrument(
        &wat(module),
        Options::new()
            .unwind_exits(UnwindExits::IfModuleUsesExceptions)
            .call_timing(CallTiming::EveryCall),
    )
    .unwrap();
    validate(&out.wasm);
    let handled: Vec<bool> = bodies(&out.wasm)
        .iter()
        .map(|b| b.contains("try_table"))
        .collect();
    assert_eq!(handled, [true, true, false]);
}

#[test]
fn unsupported_proposals_are_refused_by_name() {
    let shared = wat(r#"(module (type $s (shared (func))) (func (type $s)))"#);
    let err = instrument(&shared, &Options::new()).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Unsupported {
                feature: "shared-everything-threads",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("shared-everything-threads"),
        "{err}"
    );

    let switching = wat(r#"(module (type $f (func)) (type $c (cont $f)) (tag $t)
             (func (param (ref $c)) local.get 0 resume $c))"#);
    let err = instrument(&switching, &Options::new()).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Unsupported {
                feature: "stack-switching",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.offset().is_some(), "{err}");

    // A plainly invalid module stays an invalid-module error.
    let invalid = wat(r#"(module (func (result i32)))"#);
    let err = instrument(&invalid, &Options::new()).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Invalid(_)), "{err}");
    assert_eq!(err.function(), Some(0), "{err}");
}

#[test]
fn hook_names_imported_with_another_kind_or_type_are_refused() {
    for (import, found) in [
        (r#"(func (param i64))"#, "a function (param i64)"),
        (
            r#"(func (param i32) (result i32))"#,
            "a function (param i32) (result i32)",
        ),
        (r#"(global i32)"#, "a global"),
        (r#"(memory 1)"#, "a memory"),
    ] {
        for name in ["enter", "exit", "memory-grow"] {
            let module = format!(
                r#"(module (import "dylibso:observe/instrument" "{name}" {import}) (func))"#
            );
            let err = instrument(&wat(&module), &Options::new()).unwrap_err();
            assert_eq!(
                err.kind(),
                &ErrorKind::HookConflict {
                    name: name.to_string(),
                    found: found.to_string()
                },
                "{module}"
            );
            assert!(err.offset().is_some());
            assert!(err.to_string().contains(found), "{err}");
        }
    }
    // `memory-grow` alone with the hook's type links to the same host function: accepted.
    let grow_only = wat(
        r#"(module (import "dylibso:observe/instrument" "memory-grow" (func (param i32))) (func))"#,
    );
    let out = instrument(&grow_only, &Options::new()).unwrap();
    validate(&out.wasm);
    assert!(!out.passed_through);
}

#[test]
fn object_files_are_refused() {
    for section in ["linking", "reloc.CODE"] {
        let mut wasm = wat("(module (func))");
        let mut custom = Vec::new();
        leb(&mut custom, section.len() as u32);
        custom.extend_from_slice(section.as_bytes());
        custom.push(2);
        wasm.push(0);
        leb(&mut wasm, custom.len() as u32);
        wasm.extend_from_slice(&custom);
        let err = instrument(&wasm, &Options::new()).unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::ObjectFile {
                section: section.to_string()
            }
        );
        assert!(err.to_string().contains("object file"), "{err}");
    }
}

/// Builds `(module (import "env" "f" (func)) (func) (func))` with `names` as its name section,
/// placed before the function section when `early`.
fn with_name_section(names: &wasm_encoder::NameSection, early: bool) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, EntityType, Function, FunctionSection, ImportSection, Module, TypeSection,
    };
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    module.section(&types);
    if early {
        module.section(names);
    }
    let mut imports = ImportSection::new();
    imports.import("env", "f", EntityType::Function(0));
    module.section(&imports);
    let mut functions = FunctionSection::new();
    functions.function(0).function(0);
    module.section(&functions);
    let mut code = CodeSection::new();
    for _ in 0..2 {
        let mut body = Function::new([]);
        body.instructions().end();
        code.function(&body);
    }
    module.section(&code);
    if !early {
        module.section(names);
    }
    module.finish()
}

fn function_names(names: &[(u32, &str)]) -> wasm_encoder::NameMap {
    let mut map = wasm_encoder::NameMap::new();
    for (index, name) in names {
        map.append(*index, name);
    }
    map
}

/// The function-name subsections of the output's name section, and each one's entries.
fn output_function_names(wasm: &[u8]) -> Vec<Vec<(u32, String)>> {
    let mut subsections = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CustomSection(s) = payload.unwrap()
            && let wasmparser::KnownCustom::Name(reader) = s.as_known()
        {
            for sub in reader {
                if let wasmparser::Name::Function(map) = sub.unwrap() {
                    subsections.push(
                        map.into_iter()
                            .map(|n| n.map(|n| (n.index, n.name.to_string())).unwrap())
                            .collect(),
                    );
                }
            }
        }
    }
    subsections
}

const HOOK_NAMES: [&str; 3] = [
    "dylibso:observe/instrument#enter",
    "dylibso:observe/instrument#exit",
    "dylibso:observe/instrument#memory-grow",
];

#[test]
fn a_name_section_before_the_functions_still_names_them() {
    let mut names = wasm_encoder::NameSection::new();
    names.functions(&function_names(&[(0, "imp"), (1, "first"), (2, "second")]));
    let out = instrument(&with_name_section(&names, true), &Options::new()).unwrap();
    validate(&out.wasm);
    let map: Vec<&str> = out.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(map, ["first", "second"]);
    let expected: Vec<(u32, String)> = [
        (0, "imp"),
        (1, HOOK_NAMES[0]),
        (2, HOOK_NAMES[1]),
        (3, HOOK_NAMES[2]),
        (4, "first"),
        (5, "second"),
    ]
    .iter()
    .map(|(i, n)| (*i, n.to_string()))
    .collect();
    assert_eq!(output_function_names(&out.wasm), [expected]);
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn out_of_order_and_repeated_subsections_name_the_hooks_once() {
    let mut names = wasm_encoder::NameSection::new();
    let mut locals = wasm_encoder::IndirectNameMap::new();
    locals.append(1, &function_names(&[(0, "x")]));
    names.locals(&locals); // id 2 before id 1
    names.functions(&function_names(&[
        (2, "second"),
        (1, "first"),
        (2, "again"),
    ]));
    names.functions(&function_names(&[(1, "other")]));
    let out = instrument(&with_name_section(&names, false), &Options::new()).unwrap();
    validate(&out.wasm);
    let map: Vec<&str> = out.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(map, ["first", "second"], "{:?}", out.warnings);
    let subsections = output_function_names(&out.wasm);
    assert_eq!(subsections.len(), 1, "{subsections:?}");
    let hooks = subsections[0]
        .iter()
        .filter(|(_, n)| HOOK_NAMES.contains(&n.as_str()))
        .count();
    assert_eq!(hooks, 3, "{subsections:?}");
    let indices: Vec<u32> = subsections[0].iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [1, 2, 3, 4, 5]);
    // The local names of function 1 follow it to index 4, after the function names.
    let mut ids = Vec::new();
    for payload in Parser::new(0).parse_all(&out.wasm) {
        if let Payload::CustomSection(s) = payload.unwrap()
            && let wasmparser::KnownCustom::Name(reader) = s.as_known()
        {
            for sub in reader {
                match sub.unwrap() {
                    wasmparser::Name::Function(_) => ids.push(1),
                    wasmparser::Name::Local(map) => {
                        ids.push(2);
                        let indices: Vec<u32> = map.into_iter().map(|n| n.unwrap().index).collect();
                        assert_eq!(indices, [4]);
                    }
                    _ => ids.push(0xff),
                }
            }
        }
    }
    assert_eq!(ids, [1, 2]);
    let warnings: Vec<String> = out.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("out of order")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("second function names")),
        "{warnings:?}"
    );
}

#[test]
fn a_malformed_name_section_keeps_what_parses_and_warns() {
    // Function names: `first` parses, then an entry whose name is not UTF-8.
    let mut data = vec![2u8]; // two entries
    data.extend_from_slice(&[1, 5]);
    data.extend_from_slice(b"first");
    data.extend_from_slice(&[2, 2, 0xff, 0xfe]);
    let mut names = wasm_encoder::NameSection::new();
    names.raw(1, &data);
    names.raw(7, &[1, 0, 1, b'g']); // global names, kept as they are
    let out = instrument(&with_name_section(&names, false), &Options::new()).unwrap();
    validate(&out.wasm);
    let map: Vec<&str> = out.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(map, ["first", "wasm-function[2]"]);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    let warning = out.warnings[0].to_string();
    assert!(
        warning.contains("function names after the first 1 are dropped"),
        "{warning}"
    );
    assert!(out.warnings[0].offset().is_some());
    let subsections = output_function_names(&out.wasm);
    let names: Vec<&str> = subsections[0].iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [HOOK_NAMES[0], HOOK_NAMES[1], HOOK_NAMES[2], "first"]
    );

    // A subsection whose size runs past the section: the rest is dropped, hooks still named.
    let mut broken = wasm_encoder::NameSection::new();
    broken.raw(1, &[]);
    let mut wasm = with_name_section(&broken, false);
    let len = wasm.len();
    wasm[len - 1] = 9; // the empty subsection claims 9 bytes
    let out = instrument(&wasm, &Options::new()).unwrap();
    validate(&out.wasm);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert_eq!(output_function_names(&out.wasm)[0].len(), 3);
}

#[test]
fn the_first_invalid_body_is_reported_whatever_the_scheduling() {
    // 4,000 functions; bodies 100 and 3,900 are invalid (they leave a value on the stack).
    // The bodies before 100 are slow to validate, so a thread that starts on the second half
    // finds 3,900 first.
    use wasm_encoder::{CodeSection, Function, FunctionSection, Module, TypeSection};
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    for i in 0..4000 {
        functions.function(0);
        let mut body = Function::new([]);
        let mut ops = body.instructions();
        match i {
            100 | 3900 => {
                ops.i32_const(0);
            }
            i if i < 100 => {
                for _ in 0..20_000 {
                    ops.i32_const(1).drop();
                }
            }
            _ => {}
        }
        ops.end();
        code.function(&body);
    }
    let mut module = Module::new();
    module.section(&types).section(&functions).section(&code);
    let wasm = module.finish();
    for _ in 0..5 {
        let err = instrument(&wasm, &Options::new()).unwrap_err();
        assert_eq!(err.function(), Some(100), "{err}");
    }
}

#[test]
fn pass_through_reports_which_functions_really_call_enter() {
    let module = r#"(module
      (import "dylibso:observe/instrument" "enter" (func $enter (param i32)))
      (import "dylibso:observe/instrument" "exit" (func $exit (param i32)))
      (func $traced (export "traced") i32.const 2 call $enter i32.const 2 call $exit)
      (func $left_out (export "left_out") nop)
      (func $enters_late (export "enters_late") nop i32.const 4 call $enter i32.const 4 call $exit))"#;
    let out = instrument(
        &wat(module),
        Options::new().if_instrumented(IfInstrumented::PassThrough),
    )
    .unwrap();
    assert!(out.passed_through);
    let map: Vec<(&str, bool)> = out
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.instrumented))
        .collect();
    assert_eq!(
        map,
        [
            ("traced", true),
            ("left_out", false),
            ("enters_late", false)
        ]
    );

    // An iota output: the excluded function is reported as not instrumented.
    let once = instrument(&wat(SAMPLE), Options::new().exclude("helper")).unwrap();
    let again = instrument(
        &once.wasm,
        Options::new().if_instrumented(IfInstrumented::PassThrough),
    )
    .unwrap();
    let flags =
        |f: &[iota_instrument::FunctionEntry]| f.iter().map(|f| f.instrumented).collect::<Vec<_>>();
    assert_eq!(flags(&again.functions), [true, false, true]);
    assert_eq!(flags(&again.functions), flags(&once.functions));
}

#[test]
fn label_names_follow_the_labels_the_wrapper_adds() {
    let out = instrument(
        &wat(r#"(module (func $f block $inner end))"#),
        &Options::new(),
    )
    .unwrap();
    let text = printed(&out.wasm);
    // The wrapper block is label 0; the body's own block, label 1, keeps its name.
    assert!(text.contains("block $inner"), "{text}");
}

/// `fixtures/wasm/dwarf_names.wasm`: DWARF but no `name` section (see fixtures/build.sh).
fn dwarf_fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/wasm/dwarf_names.wasm"
    ))
    .unwrap()
}

#[test]
fn functions_without_a_name_section_are_named_and_placed_from_dwarf() {
    let out = iota_instrument::instrument(&dwarf_fixture(), &Options::new()).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let find = |name: &str| {
        out.functions
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} in {:#?}", out.functions))
    };
    let square = find("dwarf_names::shapes::area::square");
    assert!(
        square
            .raw_name
            .as_deref()
            .unwrap()
            .starts_with("_ZN11dwarf_names6shapes4area6square")
    );
    assert_eq!(square.file.as_deref(), Some("fixtures/rust/dwarf_names.rs"));
    assert_eq!(square.line, Some(12));
    let fold = find("dwarf_names::checksum::fold");
    assert_eq!(fold.line, Some(25));
    assert_eq!(find("dwarf_names::shapes::area::total").line, Some(18));
    // The debug sections are dropped from the output, the names are not lost.
    assert!(
        !custom_sections(&out.wasm)
            .iter()
            .any(|s| s.starts_with(".debug_"))
    );
}

#[test]
fn a_symbol_map_names_functions_first_and_a_bad_one_is_refused_by_line() {
    let wasm = dwarf_fixture();
    let plain = iota_instrument::instrument(&wasm, &Options::new()).unwrap();
    let square = plain
        .functions
        .iter()
        .find(|f| f.name.ends_with("::square"))
        .unwrap();
    let map = format!("{}:area_of_a_square\n\n3:ctors\n", square.original_index);
    let mut options = Options::new();
    options.symbol_map(iota_instrument::SymbolMap::parse(&map).unwrap());
    let named = iota_instrument::instrument(&wasm, &options).unwrap();
    let by_index = |index: u32| {
        named
            .functions
            .iter()
            .find(|f| f.original_index == index)
            .unwrap()
    };
    assert_eq!(by_index(square.original_index).name, "area_of_a_square");
    assert_eq!(
        by_index(square.original_index).line,
        Some(12),
        "the place still comes from DWARF"
    );
    assert_eq!(by_index(3).name, "ctors");

    let error = iota_instrument::SymbolMap::parse("0:main\nnot a line\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid symbol map, line 2: expected `INDEX:NAME`, found \"not a line\""
    );
}

#[test]
fn calls_to_imports_that_never_throw_need_no_handler() {
    let module = r#"(module
      (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
      (import "dylibso:observe/api" "span-exit" (func $span_exit))
      (import "env" "host" (func $host))
      (func $calls_wasi (drop (call $yield)) (call $span_exit))
      (func $calls_host (call $host))
      (func $tail_wasi (return_call $span_exit))
      (func $calls_tail_wasi (call $tail_wasi)))"#;
    let out = instrument(&wat(module), &Options::new()).unwrap();
    validate(&out.wasm);
    let handled: Vec<bool> = bodies(&out.wasm)
        .iter()
        .map(|b| b.contains("try_table"))
        .collect();
    assert_eq!(
        handled,
        [false, true, false, false],
        "{}",
        printed(&out.wasm)
    );
}
