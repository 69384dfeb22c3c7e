//! Errors that say which input failed, why, and where.

use std::fmt;

/// An instrumentation failure: what went wrong and, where known, the byte offset and function.
///
/// Boxed so that a `Result<_, Error>` stays one word wide.
#[derive(Debug)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    offset: Option<u64>,
    function: Option<u32>,
    module: Option<u32>,
}

/// The reason an [`Error`] happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is not a valid WebAssembly module.
    Invalid(String),
    /// A component where a core module was expected.
    Component,
    /// The component cannot be instrumented as it is built.
    ComponentUnsupported {
        /// What in it stands in the way.
        reason: String,
    },
    /// The input already reports to the enter/exit hooks.
    AlreadyInstrumented,
    /// An include or exclude pattern is not a valid glob.
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The output module could not be encoded.
    Encode(String),
    /// The module uses a WebAssembly proposal the rewrite cannot keep its promise under.
    Unsupported {
        /// The proposal, as named in its repository (`stack-switching`, ...).
        feature: &'static str,
        /// Why the rewrite cannot support it.
        reason: &'static str,
    },
    /// The module already imports a hook name with another kind or type than the hook's.
    HookConflict {
        /// The import's name in the hook module (`enter`, `exit` or `memory-grow`).
        name: String,
        /// What the module imports under that name.
        found: String,
    },
    /// The input is a relocatable object file (it has `linking` or `reloc.*` sections), whose
    /// relocations would point at stale offsets and indices after the rewrite.
    ObjectFile {
        /// The custom section that marks it.
        section: String,
    },
    /// A symbol map given with the module does not parse.
    SymbolMap {
        /// The line (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The rewrite produced a module that does not validate: a bug in this crate.
    InvalidOutput(String),
}

impl Error {
    #[cold]
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                offset: None,
                function: None,
                module: None,
            }),
        }
    }

    #[cold]
    pub(crate) fn at(mut self, offset: u64) -> Self {
        self.inner.offset = Some(offset);
        self
    }

    #[cold]
    pub(crate) fn in_function(mut self, index: u32) -> Self {
        self.inner.function = Some(index);
        self
    }

    /// Places an error found in core module `ordinal` of a component, which starts at byte
    /// `start` of the component: the offset becomes the component's.
    #[cold]
    pub(crate) fn in_module(mut self, ordinal: u32, start: u64) -> Self {
        self.inner.module = Some(ordinal);
        self.inner.offset = self.inner.offset.map(|offset| offset + start);
        self
    }

    /// In a component, the core module (numbered as in the function map) being rewritten.
    pub fn module(&self) -> Option<u32> {
        self.inner.module
    }

    /// Why the instrumentation failed.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }

    /// Byte offset in the input where the problem was found, if known.
    pub fn offset(&self) -> Option<u64> {
        self.inner.offset
    }

    /// Index (in the input module) of the function being rewritten, if any.
    pub fn function(&self) -> Option<u32> {
        self.inner.function
    }
}

impl From<wasmparser::BinaryReaderError> for Error {
    #[cold]
    fn from(err: wasmparser::BinaryReaderError) -> Self {
        Error::new(ErrorKind::Invalid(err.message().to_string())).at(err.offset())
    }
}

impl From<wasm_encoder::reencode::Error<Error>> for Error {
    #[cold]
    fn from(err: wasm_encoder::reencode::Error<Error>) -> Self {
        use wasm_encoder::reencode::Error as E;
        match err {
            E::UserError(err) => err,
            E::ParseError(err) => err.into(),
            other => Error::new(ErrorKind::Encode(other.to_string())),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            ErrorKind::Invalid(msg) => write!(f, "invalid WebAssembly: {msg}")?,
            ErrorKind::Component => f.write_str(
                "input is a WebAssembly component; only core modules can be instrumented",
            )?,
            ErrorKind::ComponentUnsupported { reason } => {
                write!(f, "component cannot be instrumented: {reason}")?
            }
            ErrorKind::AlreadyInstrumented => {
                f.write_str("module is already instrumented (it imports the enter/exit hooks)")?
            }
            ErrorKind::Pattern { pattern, reason } => {
                write!(f, "invalid function pattern `{pattern}`: {reason}")?
            }
            ErrorKind::Encode(msg) => write!(f, "cannot encode the instrumented module: {msg}")?,
            ErrorKind::Unsupported { feature, reason } => write!(
                f,
                "module uses the {feature} proposal, which cannot be instrumented: {reason}"
            )?,
            ErrorKind::HookConflict { name, found } => write!(
                f,
                "module already imports `{}` `{name}` as {found}; the hook is a function (param i32)",
                crate::abi::HOOK_MODULE
            )?,
            ErrorKind::ObjectFile { section } => write!(
                f,
                "input is a relocatable object file (it has a `{section}` section); \
                 instrument the linked module instead"
            )?,
            ErrorKind::SymbolMap { line, reason } => {
                write!(f, "invalid symbol map, line {line}: {reason}")?
            }
            ErrorKind::InvalidOutput(msg) => write!(
                f,
                "the instrumented module does not validate (a bug in iota-instrument): {msg}"
            )?,
        }
        if let Some(function) = self.inner.function {
            write!(f, " (in function {function})")?;
        }
        if let Some(module) = self.inner.module {
            write!(f, " (in core module {module})")?;
        }
        if let Some(offset) = self.inner.offset {
            write!(f, " (at offset {offset:#x})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Something in the input that could not be kept, reported without failing the rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    message: String,
    offset: Option<u64>,
}

impl Warning {
    #[cold]
    pub(crate) fn new(message: impl Into<String>, offset: Option<u64>) -> Self {
        Warning {
            message: message.into(),
            offset,
        }
    }

    /// What was dropped and why.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Byte offset in the input where the problem was found, if known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(offset) = self.offset {
            write!(f, " (at offset {offset:#x})")?;
        }
        Ok(())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
