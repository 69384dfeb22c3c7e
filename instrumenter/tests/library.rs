//! The library's contract: errors, options, names, sections, determinism.

use iota_instrument::{ErrorKind, IfInstrumented, Options, instrument, is_instrumented};
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

fn validate(wasm: &[u8]) {
    Validator::new_with_features(WasmFeatures::all())
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
fn components_are_refused_clearly() {
    let component = wat("(component)");
    let err = instrument(&component, &Options::new()).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Component);
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
    let text = printed(&instrument(&standard, &Options::new()).unwrap().wasm);
    assert!(
        text.contains("catch_all_ref") && text.contains("throw_ref"),
        "{text}"
    );

    let legacy = wat(r#"(module (tag $e) (func try throw $e catch $e end))"#);
    let out = instrument(&legacy, &Options::new()).unwrap();
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
    let text = printed(&instrument(&none, &Options::new()).unwrap().wasm);
    assert!(!text.contains("try"), "{text}");
}

#[test]
fn memory64_growth_reports_wrapped_delta() {
    let wasm = wat(r#"(module (memory i64 1) (func (result i64) i64.const 2 memory.grow))"#);
    let out = instrument(&wasm, &Options::new()).unwrap();
    validate(&out.wasm);
    let text = printed(&out.wasm);
    assert!(text.contains("i32.wrap_i64"), "{text}");
    assert!(text.contains("(local i32 i64)"), "{text}");
}
