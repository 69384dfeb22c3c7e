//! Names and source locations from DWARF (`.debug_*` custom sections), for modules built with
//! debug information but no `name` section (release builds of C, C++ and Rust often ship so).
//!
//! Addresses in WebAssembly DWARF are offsets into the code section's contents. Each defined
//! function is looked up at its first instruction with `addr2line` (over `gimli`): the
//! outermost frame there is the function itself, named by its linkage name (demangled later,
//! as every name is) or else its `DW_AT_name`, and placed at the source line of that first
//! instruction.

use std::borrow::Cow;

use addr2line::gimli::{self, EndianSlice, LittleEndian};

use crate::error::Warning;

/// Where a function is in the source, and what DWARF calls it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceInfo {
    /// The name DWARF gives (a linkage name, not yet demangled), if any.
    pub name: Option<String>,
    /// Source file path as the compiler recorded it.
    pub file: Option<String>,
    /// Line (1-based).
    pub line: Option<u32>,
    /// Column (1-based), where known.
    pub column: Option<u32>,
}

impl SourceInfo {
    /// Whether DWARF said nothing of the function.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.file.is_none()
    }
}

/// The `.debug_*` sections of a module, by name.
#[derive(Default)]
pub(crate) struct DebugSections<'a> {
    sections: Vec<(&'a str, &'a [u8])>,
}

impl<'a> DebugSections<'a> {
    /// Keeps `data` if `name` is a DWARF section.
    pub(crate) fn offer(&mut self, name: &'a str, data: &'a [u8]) {
        if name.starts_with(".debug_") && !self.sections.iter().any(|(n, _)| *n == name) {
            self.sections.push((name, data));
        }
    }

    /// Whether the module carries debug information at all.
    pub(crate) fn has_info(&self) -> bool {
        self.sections.iter().any(|(n, _)| *n == ".debug_info")
    }

    fn section(&self, name: &str) -> &'a [u8] {
        self.sections
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, data)| data)
    }

    /// What DWARF says of each function whose first instruction is at `addresses[i]` (an offset
    /// in the code section's contents). Debug information that cannot be read costs the names
    /// and locations it would have given, with a warning, never the module.
    pub(crate) fn describe(
        &self,
        addresses: &[u64],
        warnings: &mut Vec<Warning>,
    ) -> Vec<SourceInfo> {
        let mut infos = vec![SourceInfo::default(); addresses.len()];
        if !self.has_info() {
            return infos;
        }
        let dwarf = gimli::Dwarf::load(|id| {
            Ok::<_, gimli::Error>(EndianSlice::new(self.section(id.name()), LittleEndian))
        });
        let context = match dwarf
            .map_err(|e| e.to_string())
            .and_then(|dwarf| addr2line::Context::from_dwarf(dwarf).map_err(|e| e.to_string()))
        {
            Ok(context) => context,
            Err(err) => {
                warnings.push(Warning::new(
                    format!(
                        "DWARF debug information cannot be read ({err}); its names are not used"
                    ),
                    None,
                ));
                return infos;
            }
        };
        let mut failures = 0usize;
        for (info, &address) in infos.iter_mut().zip(addresses) {
            match lookup(&context, address) {
                Ok(found) => *info = found,
                Err(_) => failures += 1,
            }
        }
        if failures > 0 {
            warnings.push(Warning::new(
                format!("DWARF debug information of {failures} functions cannot be read"),
                None,
            ));
        }
        if failures == 0 && !infos.is_empty() && infos.iter().all(SourceInfo::is_empty) {
            warnings.push(Warning::new(
                format!(
                    "DWARF debug information matches none of the module's {} functions: its code \
                     addresses are not this code's (as when a tool rewrote the module after \
                     linking without updating them), so no names or source locations come from it",
                    infos.len()
                ),
                None,
            ));
        }
        infos
    }
}

type Context<'a> = addr2line::Context<EndianSlice<'a, LittleEndian>>;

fn lookup(context: &Context<'_>, address: u64) -> Result<SourceInfo, gimli::Error> {
    let mut frames = context.find_frames(address).skip_all_loads()?;
    let mut outermost = None;
    while let Some(frame) = frames.next()? {
        outermost = Some(frame);
    }
    let Some(frame) = outermost else {
        return Ok(SourceInfo::default());
    };
    let name = frame
        .function
        .as_ref()
        .and_then(|f| f.raw_name().ok())
        .map(Cow::into_owned);
    let location = match frame.location {
        // An inlined callee's frame carries the call site; the function's own place is where
        // its first instruction is.
        Some(location) => Some(location),
        None => context.find_location(address)?,
    };
    Ok(SourceInfo {
        name,
        file: location.as_ref().and_then(|l| l.file).map(str::to_string),
        line: location.as_ref().and_then(|l| l.line),
        column: location.and_then(|l| l.column).filter(|c| *c > 0),
    })
}
