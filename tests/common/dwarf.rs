//! A module whose DWARF is made to order: its first function either placed at its real code
//! address, or nowhere (every address zero, as a tool that rewrites a module after linking
//! without updating its DWARF leaves them).

use gimli::write::{Address, AttributeValue, DwarfUnit, EndianVec, Sections};
use gimli::{Encoding, Format, LittleEndian};
use wasm_encoder::Section as _;

/// The name DWARF gives the first function.
pub const DWARF_NAME: &str = "placed_in_dwarf";

/// Two functions without a name section; DWARF names the first at its address when `placed`,
/// else at address 0 with no size.
pub fn module_with_dwarf(placed: bool) -> Vec<u8> {
    let mut wasm = wat::parse_str(
        r#"(module
          (func (export "_start") (call 1))
          (func nop))"#,
    )
    .unwrap();
    let (start, len) = if placed {
        first_function_code(&wasm)
    } else {
        (0, 0)
    };
    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 4,
        address_size: 4,
    };
    let mut dwarf = DwarfUnit::new(encoding);
    let root = dwarf.unit.root();
    let unit = dwarf.unit.get_mut(root);
    unit.set(
        gimli::DW_AT_name,
        AttributeValue::String(b"made.c".to_vec()),
    );
    unit.set(
        gimli::DW_AT_low_pc,
        AttributeValue::Address(Address::Constant(start)),
    );
    unit.set(gimli::DW_AT_high_pc, AttributeValue::Udata(len));
    let function = dwarf.unit.add(root, gimli::DW_TAG_subprogram);
    let function = dwarf.unit.get_mut(function);
    function.set(
        gimli::DW_AT_name,
        AttributeValue::String(DWARF_NAME.as_bytes().to_vec()),
    );
    function.set(
        gimli::DW_AT_low_pc,
        AttributeValue::Address(Address::Constant(start)),
    );
    function.set(gimli::DW_AT_high_pc, AttributeValue::Udata(len));
    let mut sections = Sections::new(EndianVec::new(LittleEndian));
    dwarf.write(&mut sections).unwrap();
    sections
        .for_each(|id, data| {
            if !data.slice().is_empty() {
                wasm_encoder::CustomSection {
                    name: id.name().into(),
                    data: data.slice().into(),
                }
                .append_to(&mut wasm);
            }
            Ok::<_, ()>(())
        })
        .unwrap();
    wasm
}

/// Where the first function's code starts (its first operator, as an offset in the code
/// section's contents, as DWARF for wasm counts) and how long it is.
fn first_function_code(wasm: &[u8]) -> (u64, u64) {
    let mut code_start = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            wasmparser::Payload::CodeSectionStart {
                unchecked_range, ..
            } => code_start = unchecked_range.start,
            wasmparser::Payload::CodeSectionEntry(body) => {
                let first = body.get_operators_reader().unwrap().original_position();
                return (first - code_start, body.range().end - first);
            }
            _ => {}
        }
    }
    panic!("no function body")
}
