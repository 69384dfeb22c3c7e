//! How a module is run: a WASI command's `_start`, or one export of a reactor.

use serde::{Deserialize, Serialize};
use wasmtime::{ExternType, FuncType, Module};

/// The ways into a module, found from its exports at upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EntryPoints {
    /// A WASI command: every run calls `_start`.
    Command,
    /// A reactor: a run calls `_initialize` (when exported), then the chosen function.
    Reactor {
        /// `_initialize` is exported.
        initialize: bool,
        /// Exported functions of type `[] -> []` a run may call, in export order.
        functions: Vec<String>,
    },
    /// A component exporting `wasi:http/incoming-handler`: a run hands it one request.
    #[serde(rename = "http-handler")]
    HttpHandler,
}

/// What one run calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `_start`.
    Start,
    /// `wasi:http/incoming-handler`'s `handle`, with the request.
    Handle,
    /// `_initialize` first if `initialize`, then `function`.
    Reactor {
        /// Call `_initialize` first.
        initialize: bool,
        /// The export to call.
        function: String,
    },
}

fn is_unit(ty: &FuncType) -> bool {
    ty.params().len() == 0 && ty.results().len() == 0
}

impl EntryPoints {
    /// The entry points of `module`.
    ///
    /// # Errors
    ///
    /// If it has neither a `_start` nor any exported `[] -> []` function: the message lists its
    /// exports.
    pub fn of(module: &Module) -> Result<Self, String> {
        let unit_exports: Vec<&str> = module
            .exports()
            .filter(|e| matches!(e.ty(), ExternType::Func(f) if is_unit(&f)))
            .map(|e| e.name())
            .collect();
        if unit_exports.contains(&"_start") {
            return Ok(EntryPoints::Command);
        }
        let functions: Vec<String> = unit_exports
            .iter()
            .filter(|name| **name != "_initialize")
            .map(|name| name.to_string())
            .collect();
        if functions.is_empty() {
            return Err(format!(
                "module cannot be run: it exports no `_start` (a WASI command) and no function of \
                 type [] -> [] (a reactor); its exports: {}",
                describe_exports(module)
            ));
        }
        Ok(EntryPoints::Reactor {
            initialize: unit_exports.contains(&"_initialize"),
            functions,
        })
    }

    /// What a run asking for `function` (the `fn` query parameter) calls.
    ///
    /// # Errors
    ///
    /// A command given a function, a reactor given none or one it does not export.
    pub fn call(&self, function: Option<&str>) -> Result<Call, String> {
        match (self, function) {
            (EntryPoints::HttpHandler, None) => Ok(Call::Handle),
            (EntryPoints::HttpHandler, Some(f)) => Err(format!(
                "`fn={f}` is for reactors: this component is an HTTP handler and handles the \
                 request"
            )),
            (EntryPoints::Command, None) => Ok(Call::Start),
            (EntryPoints::Command, Some(f)) => Err(format!(
                "`fn={f}` is for reactors: this module is a WASI command and runs `_start`"
            )),
            (EntryPoints::Reactor { functions, .. }, None) => Err(format!(
                "this module is a reactor: choose the function to run with `fn=`, one of: {}",
                functions.join(", ")
            )),
            (
                EntryPoints::Reactor {
                    initialize,
                    functions,
                },
                Some(f),
            ) => {
                if functions.iter().any(|name| name == f) {
                    Ok(Call::Reactor {
                        initialize: *initialize,
                        function: f.to_string(),
                    })
                } else {
                    Err(format!(
                        "no exported function `{f}` of type [] -> [] to run; choose one of: {}",
                        functions.join(", ")
                    ))
                }
            }
        }
    }
}

/// `[i32, i32] -> [i32]`.
fn signature(ty: &FuncType) -> String {
    let list = |types: Vec<String>| types.join(", ");
    format!(
        "[{}] -> [{}]",
        list(ty.params().map(|t| t.to_string()).collect()),
        list(ty.results().map(|t| t.to_string()).collect())
    )
}

/// `name (kind)` for each export, or `none`.
fn describe_exports(module: &Module) -> String {
    let exports: Vec<String> = module
        .exports()
        .map(|e| {
            let kind = match e.ty() {
                ExternType::Func(f) => format!("func {}", signature(&f)),
                ExternType::Memory(_) => "memory".into(),
                ExternType::Table(_) => "table".into(),
                ExternType::Global(_) => "global".into(),
                ExternType::Tag(_) => "tag".into(),
            };
            format!("`{}` ({kind})", e.name())
        })
        .collect();
    if exports.is_empty() {
        "none".into()
    } else {
        exports.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Engine;

    fn entry(wat: &str) -> Result<EntryPoints, String> {
        let engine = Engine::default();
        EntryPoints::of(&Module::new(&engine, wat).unwrap())
    }

    #[test]
    fn commands_reactors_and_modules_that_cannot_run() {
        assert_eq!(
            entry(r#"(module (func (export "_start")) (func (export "other")))"#),
            Ok(EntryPoints::Command)
        );
        let reactor = entry(
            r#"(module (func (export "_initialize")) (func (export "a")) (func (export "b") (param i32)) (func (export "c")))"#,
        )
        .unwrap();
        assert_eq!(
            reactor,
            EntryPoints::Reactor {
                initialize: true,
                functions: vec!["a".into(), "c".into()]
            }
        );
        assert_eq!(
            reactor.call(Some("c")),
            Ok(Call::Reactor {
                initialize: true,
                function: "c".into()
            })
        );
        assert!(
            reactor
                .call(Some("b"))
                .unwrap_err()
                .contains("one of: a, c")
        );
        assert!(reactor.call(None).unwrap_err().contains("fn="));
        assert!(EntryPoints::Command.call(Some("a")).is_err());

        let error = entry(
            r#"(module (memory (export "memory") 1) (func (export "run") (result i32) i32.const 1))"#,
        )
        .unwrap_err();
        assert!(
            error.ends_with("its exports: `memory` (memory), `run` (func [] -> [i32])"),
            "{error}"
        );
        assert!(
            entry("(module)")
                .unwrap_err()
                .ends_with("its exports: none")
        );
    }
}
