//! What the ids of a run's calls name: the module's functions, then the host functions timed
//! at the boundary, then the manual spans the guest opened through the Observe API.

use std::sync::Arc;

/// What kind of call an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A function of the module (its hook id).
    Function,
    /// A host function (WASI), by its index in the host table.
    Host(u32),
    /// A manual span, by its index in the run's names.
    Manual(u32),
}

/// Where a function is in the source (from DWARF).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceLocation {
    /// Source file path, as compiled.
    pub file: String,
    /// Line of the function's first instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Column, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

/// The names of a run's call ids.
#[derive(Debug, Clone)]
pub struct CallNames {
    module: Arc<[Option<String>]>,
    locations: Arc<[Option<SourceLocation>]>,
    functions: u32,
    host: &'static [&'static str],
    manual: Arc<[String]>,
}

impl CallNames {
    /// Names for a module whose function names and source locations by hook id are `module`
    /// and `locations`, `functions` of them, with the host functions `host` and the manual span
    /// names `manual`.
    pub fn new(
        module: Arc<[Option<String>]>,
        locations: Arc<[Option<SourceLocation>]>,
        functions: u32,
        host: &'static [&'static str],
        manual: Arc<[String]>,
    ) -> Self {
        CallNames {
            module,
            locations,
            functions,
            host,
            manual,
        }
    }

    /// Where function `id` is in the source, if known.
    pub fn location(&self, id: u32) -> Option<&SourceLocation> {
        self.locations.get(id as usize).and_then(Option::as_ref)
    }

    /// The module's function names by hook id: the same allocation for every run of one
    /// module version.
    pub fn module(&self) -> &Arc<[Option<String>]> {
        &self.module
    }

    /// Ids below this are the module's functions.
    pub fn functions(&self) -> u32 {
        self.functions
    }

    /// What `id` is.
    pub fn kind(&self, id: u32) -> CallKind {
        let host_end = self.functions + self.host.len() as u32;
        if id < self.functions {
            CallKind::Function
        } else if id < host_end {
            CallKind::Host(id - self.functions)
        } else {
            CallKind::Manual(id - host_end)
        }
    }

    /// The display name of `id`: the demangled function name (else `wasm-function[N]`),
    /// `wasi:NAME` for a host function, the guest's name for a manual span.
    pub fn name(&self, id: u32) -> String {
        match self.kind(id) {
            CallKind::Function => self
                .module
                .get(id as usize)
                .and_then(|n| n.clone())
                .unwrap_or_else(|| format!("wasm-function[{id}]")),
            CallKind::Host(index) => format!("wasi:{}", self.host[index as usize]),
            CallKind::Manual(index) => self
                .manual
                .get(index as usize)
                .cloned()
                .unwrap_or_else(|| format!("observe-span[{index}]")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_functions_then_host_calls_then_manual_spans() {
        let names = CallNames::new(
            vec![Some("main".to_string()), None].into(),
            Vec::new().into(),
            2,
            &["fd_write", "fd_read"],
            vec!["work".to_string()].into(),
        );
        let named: Vec<_> = (0..6).map(|id| names.name(id)).collect();
        assert_eq!(
            named,
            [
                "main",
                "wasm-function[1]",
                "wasi:fd_write",
                "wasi:fd_read",
                "work",
                "observe-span[1]"
            ]
        );
        assert_eq!(names.kind(3), CallKind::Host(1));
        assert_eq!(names.kind(4), CallKind::Manual(0));
    }
}
