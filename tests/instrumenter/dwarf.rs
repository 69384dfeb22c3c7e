//! Names from DWARF, and what the instrumenter says when DWARF matches no function.

use crate::dwarf_module::{DWARF_NAME, module_with_dwarf};

fn instrument(wasm: &[u8]) -> iota_instrument::Instrumented {
    iota_instrument::instrument(wasm, &iota_instrument::Options::new()).unwrap()
}

#[test]
fn a_function_placed_by_dwarf_is_named_from_it() {
    let out = instrument(&module_with_dwarf(true));
    assert_eq!(out.functions[0].name, DWARF_NAME);
    assert_eq!(out.functions[1].name, "wasm-function[1]");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn dwarf_whose_addresses_match_no_function_is_reported() {
    let out = instrument(&module_with_dwarf(false));
    assert_eq!(out.functions[0].name, "_start", "named by its export");
    assert_eq!(out.functions[1].name, "wasm-function[1]");
    let warnings: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.len() == 1
            && warnings[0]
                .starts_with("DWARF debug information matches none of the module's 2 functions"),
        "{warnings:?}"
    );
}
