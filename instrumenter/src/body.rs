//! Rewriting one function body: enter on entry, exit on every way out, memory growth reported.
//!
//! Operators that need no change are copied byte for byte; only calls to defined functions,
//! `ref.func`, returns, tail calls, `memory.grow` and the final `end` are re-emitted. The code
//! between the wrapper's opening and closing does not depend on the wrapper, so a body can get
//! another wrapper later ([`Rewritten::rewrap`]) without being read again.

use std::borrow::Cow;
use std::ops::Range;

use wasm_encoder::{BlockType, Catch, Encode, Instruction, ValType};
use wasmparser::{FunctionBody, Operator};

use crate::error::{Error, ErrorKind, Result};
use crate::rewrite::Rewriter;

/// How a traced function's body is wrapped, which decides whether an exception that unwinds it
/// calls `exit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrapper {
    /// A `block`: fall-through and branches to the function label reach `exit`; an unwinding
    /// exception does not.
    Block,
    /// `try_table (catch_all_ref)` + `exit` + `throw_ref`.
    Standard,
    /// Legacy `try` / `catch_all` / `exit` / `rethrow`, for modules written against it.
    Legacy,
}

impl Wrapper {
    /// Labels the wrapper adds in front of the body's own (label names shift by this).
    pub(crate) fn labels(self) -> u32 {
        match self {
            Wrapper::Block | Wrapper::Legacy => 1,
            Wrapper::Standard => 3,
        }
    }
}

/// What to do with one defined function.
pub(crate) struct BodyPlan {
    /// Output index, passed to the hooks.
    pub id: u32,
    /// Index in the input module, for error messages.
    pub original_index: u32,
    pub params: u32,
    /// Whether the function reports enter/exit (it may be excluded by pattern).
    pub traced: bool,
    /// Type of the block that stands in for the function label.
    pub block_type: BlockType,
    /// The exception wrapper to use if this body alone shows it can be unwound; the final choice
    /// is made once every body has been read.
    pub guess: Option<Wrapper>,
    /// For a counted function (not traced): the global that counts its calls.
    pub counter: Option<u32>,
    /// For a counted function the host can switch back to the hooks (a learned one): its
    /// traced twin, which a call runs instead while the host has set the counter negative.
    pub twin: Option<u32>,
}

/// What a body does that decides whether an exception can unwind it, or leave a call to it.
#[derive(Debug, Default, Clone)]
pub(crate) struct BodyFacts {
    /// Throws, or calls (not as a tail call) an import or through a table or reference:
    /// an exception can unwind this function's own frame.
    pub unwinds: bool,
    /// Tail-calls an import or through a table or reference: an exception can leave a call to
    /// this function, though not through its frame, which the tail call has replaced.
    pub tail_throws: bool,
    /// Uses an exception-handling instruction (standard or legacy).
    pub uses_exceptions: bool,
    /// Uses legacy exception handling (`try`, `catch`, `catch_all`, `rethrow`, `delegate`).
    pub legacy: bool,
    /// Defined functions it calls, not as tail calls, as input indices.
    pub callees: Vec<u32>,
    /// Defined functions it tail-calls, as input indices.
    pub tail_callees: Vec<u32>,
    /// Operators in the body.
    pub operators: u32,
    /// Contains a `loop`.
    pub has_loop: bool,
    /// Calls or tail-calls through a table or a reference.
    pub calls_indirect: bool,
    /// Calls or tail-calls an imported function.
    pub calls_import: bool,
}

/// A rewritten body (locals and code, without the size prefix) and what was learned reading it.
pub(crate) struct Rewritten {
    pub bytes: Vec<u8>,
    /// End of the local declarations.
    locals_end: usize,
    /// The code between the wrapper's opening and closing.
    middle: Range<usize>,
    /// The wrapper in `bytes`; `None` for an untraced function.
    pub wrapper: Option<Wrapper>,
    pub facts: BodyFacts,
    id: u32,
    block_type: BlockType,
}

impl Rewritten {
    /// Re-emits the body with `wrapper` around the same code.
    pub(crate) fn rewrap(&mut self, rw: &Rewriter<'_, '_>, wrapper: Wrapper) {
        debug_assert!(self.wrapper.is_some(), "untraced bodies have no wrapper");
        let mut out = Vec::with_capacity(self.bytes.len() + 16);
        out.extend_from_slice(&self.bytes[..self.locals_end]);
        let middle = self.middle.clone();
        let start = wrap(rw, self.id, self.block_type, wrapper, &mut out, |out| {
            out.extend_from_slice(&self.bytes[middle.clone()]);
        });
        self.middle = start..start + middle.len();
        self.bytes = out;
        self.wrapper = Some(wrapper);
    }
}

/// Rewrites `body` as `plan` says.
pub(crate) fn rewrite(
    rw: &Rewriter<'_, '_>,
    plan: &BodyPlan,
    body: &FunctionBody<'_>,
) -> Result<Rewritten> {
    let wasm = rw.wasm;
    let mut locals = body.get_locals_reader()?;
    let groups = locals.get_count();
    let groups_start = locals.original_position() as usize;
    let mut declared: u32 = plan.params;
    for _ in 0..groups {
        let (count, _) = locals.read()?;
        declared = declared
            .checked_add(count)
            .ok_or_else(|| Error::new(ErrorKind::Invalid("too many locals".into())))?;
    }
    let groups_end = locals.original_position() as usize;
    let scratch32 = declared;
    let scratch64 = declared + 1;

    let exit = hook_call(plan.id, rw.hook_index(1));
    let body_len = (body.range().end - body.range().start) as usize;
    let mut code = Vec::with_capacity(body_len + 16);
    let mut facts = BodyFacts::default();

    let mut ops = body.get_operators_reader()?;
    let mut copied_to = ops.original_position() as usize;
    let mut depth: u32 = 0;
    let mut scratch_needed = Scratch::None;
    let mut finished = false;
    while !ops.eof() {
        let at = ops.original_position() as usize;
        let op = ops.read()?;
        facts.operators += 1;
        match op {
            Operator::Loop { .. } => facts.has_loop = true,
            Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => facts.calls_indirect = true,
            Operator::Call { function_index } | Operator::ReturnCall { function_index }
                if function_index < rw.facts.imported_funcs =>
            {
                facts.calls_import = true
            }
            _ => {}
        }
        // Each arm that re-emits copies the untouched bytes before `at` first.
        let flush = |code: &mut Vec<u8>| code.extend_from_slice(&wasm[copied_to..at]);
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => depth += 1,
            Operator::TryTable { .. } => {
                depth += 1;
                facts.uses_exceptions = true;
            }
            Operator::Try { .. } => {
                depth += 1;
                facts.legacy = true;
            }
            Operator::Delegate { .. } => {
                depth -= 1;
                facts.legacy = true;
            }
            Operator::Catch { .. } | Operator::CatchAll => facts.legacy = true,
            Operator::Rethrow { .. } => {
                facts.legacy = true;
                facts.unwinds = true;
            }
            Operator::Throw { .. } | Operator::ThrowRef => {
                facts.uses_exceptions = true;
                facts.unwinds = true;
            }
            Operator::CallIndirect { .. } | Operator::CallRef { .. } => facts.unwinds = true,
            Operator::Call { function_index } if function_index < rw.facts.imported_funcs => {
                facts.unwinds |= rw.facts.import_may_throw(function_index);
            }
            Operator::End if depth > 0 => depth -= 1,
            Operator::End => {
                flush(&mut code);
                copied_to = ops.original_position() as usize;
                finished = true;
                break;
            }
            Operator::Call { function_index } | Operator::RefFunc { function_index } => {
                // Defined functions (imported calls are matched above).
                flush(&mut code);
                let output_index = rw.output_function_index(function_index);
                if matches!(op, Operator::Call { .. }) {
                    facts.callees.push(function_index);
                    Instruction::Call(output_index).encode(&mut code);
                } else {
                    Instruction::RefFunc(output_index).encode(&mut code);
                }
                copied_to = ops.original_position() as usize;
            }
            Operator::ReturnCall { function_index } => {
                match rw.facts.defined_slot(function_index) {
                    Some(_) => facts.tail_callees.push(function_index),
                    None => facts.tail_throws |= rw.facts.import_may_throw(function_index),
                }
                flush(&mut code);
                if plan.traced {
                    code.extend_from_slice(&exit);
                }
                Instruction::ReturnCall(rw.output_function_index(function_index)).encode(&mut code);
                copied_to = ops.original_position() as usize;
            }
            Operator::Return
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => {
                facts.tail_throws |= !matches!(op, Operator::Return);
                if plan.traced {
                    flush(&mut code);
                    code.extend_from_slice(&exit);
                    copied_to = at;
                }
            }
            Operator::MemoryGrow { mem } => {
                flush(&mut code);
                let is64 = rw
                    .facts
                    .memory64
                    .get(mem as usize)
                    .copied()
                    .unwrap_or(false);
                if is64 {
                    saturated_delta(scratch64, &mut code);
                    scratch_needed = Scratch::Both;
                } else {
                    Instruction::LocalTee(scratch32).encode(&mut code);
                    if scratch_needed == Scratch::None {
                        scratch_needed = Scratch::I32;
                    }
                }
                Instruction::Call(rw.hook_index(2)).encode(&mut code);
                Instruction::LocalGet(if is64 { scratch64 } else { scratch32 }).encode(&mut code);
                copied_to = at;
            }
            _ => {}
        }
    }
    if !finished || !ops.eof() {
        return Err(Error::new(ErrorKind::Invalid(
            "function body does not end with `end`".into(),
        ))
        .at(copied_to as u64));
    }
    facts.uses_exceptions |= facts.legacy;

    let mut out = Vec::with_capacity(code.len() + 2 * exit.len() + 32);
    let extra_groups: &[(u32, ValType)] = match scratch_needed {
        // The switch's local (`declared + 2`) follows both scratch locals.
        _ if plan.twin.is_some() => &[(1, ValType::I32), (2, ValType::I64)],
        Scratch::None => &[],
        Scratch::I32 => &[(1, ValType::I32)],
        Scratch::Both => &[(1, ValType::I32), (1, ValType::I64)],
    };
    (groups + extra_groups.len() as u32).encode(&mut out);
    out.extend_from_slice(&wasm[groups_start..groups_end]);
    for (count, ty) in extra_groups {
        count.encode(&mut out);
        ty.encode(&mut out);
    }
    let locals_end = out.len();
    let (wrapper, middle) = if plan.traced {
        let wrapper = match plan.guess {
            Some(_) if facts.legacy => Wrapper::Legacy,
            Some(style) if facts.unwinds || !facts.callees.is_empty() => style,
            _ => Wrapper::Block,
        };
        let start = wrap(rw, plan.id, plan.block_type, wrapper, &mut out, |out| {
            out.extend_from_slice(&code)
        });
        (Some(wrapper), start..start + code.len())
    } else {
        match (plan.counter, plan.twin) {
            (Some(counter), Some(twin)) => {
                switch_to_twin(counter, twin, plan.params, declared + 2, &mut out)
            }
            (Some(counter), None) => {
                Instruction::GlobalGet(counter).encode(&mut out);
                Instruction::I64Const(1).encode(&mut out);
                Instruction::I64Add.encode(&mut out);
                Instruction::GlobalSet(counter).encode(&mut out);
            }
            _ => {}
        }
        let start = out.len();
        out.extend_from_slice(&code);
        Instruction::End.encode(&mut out);
        (None, start..start + code.len())
    };
    Ok(Rewritten {
        bytes: out,
        locals_end,
        middle,
        wrapper,
        facts,
        id: plan.id,
        block_type: plan.block_type,
    })
}

/// Emits `enter`, the wrapper's opening, the code `middle` writes, the wrapper's closing,
/// `exit` and the function's `end`. Returns where the middle starts in `out`.
fn wrap(
    rw: &Rewriter<'_, '_>,
    id: u32,
    block_type: BlockType,
    wrapper: Wrapper,
    out: &mut Vec<u8>,
    middle: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let exit = hook_call(id, rw.hook_index(1));
    out.extend_from_slice(&hook_call(id, rw.hook_index(0)));
    match wrapper {
        Wrapper::Block => Instruction::Block(block_type).encode(out),
        Wrapper::Standard => {
            Instruction::Block(block_type).encode(out);
            Instruction::Block(BlockType::Result(ValType::EXNREF)).encode(out);
            Instruction::TryTable(block_type, Cow::Borrowed(&[Catch::AllRef { label: 0 }]))
                .encode(out);
        }
        Wrapper::Legacy => Instruction::Try(block_type).encode(out),
    }
    let start = out.len();
    middle(out);
    match wrapper {
        Wrapper::Block => Instruction::End.encode(out),
        Wrapper::Standard => {
            Instruction::End.encode(out); // try_table
            Instruction::Br(1).encode(out);
            Instruction::End.encode(out); // handler block: the exnref is on the stack
            out.extend_from_slice(&exit);
            Instruction::ThrowRef.encode(out);
            Instruction::End.encode(out);
        }
        Wrapper::Legacy => {
            Instruction::CatchAll.encode(out);
            out.extend_from_slice(&exit);
            Instruction::Rethrow(0).encode(out);
            Instruction::End.encode(out);
        }
    }
    out.extend_from_slice(&exit);
    Instruction::End.encode(out);
    start
}

/// A switchable function's entry: with its counter at least zero (as the module starts), counts
/// the call; with it negative (the host switched the function back to the hooks for this run),
/// tail-calls the traced `twin` with the same arguments instead. The counter is read once, into
/// `local`.
fn switch_to_twin(counter: u32, twin: u32, params: u32, local: u32, out: &mut Vec<u8>) {
    Instruction::GlobalGet(counter).encode(out);
    Instruction::LocalTee(local).encode(out);
    Instruction::I64Const(0).encode(out);
    Instruction::I64LtS.encode(out);
    Instruction::If(BlockType::Empty).encode(out);
    for param in 0..params {
        Instruction::LocalGet(param).encode(out);
    }
    Instruction::ReturnCall(twin).encode(out);
    Instruction::End.encode(out);
    Instruction::LocalGet(local).encode(out);
    Instruction::I64Const(1).encode(out);
    Instruction::I64Add.encode(out);
    Instruction::GlobalSet(counter).encode(out);
}

/// The largest delta the `memory-grow` hook reports: `i32::MAX` pages.
const MAX_REPORTED_DELTA: i64 = i32::MAX as i64;

/// With a 64-bit delta on the stack: keeps it, and pushes it as an i32 saturated at
/// [`MAX_REPORTED_DELTA`] (the delta is unsigned, so any value above it saturates).
fn saturated_delta(scratch64: u32, code: &mut Vec<u8>) {
    Instruction::LocalTee(scratch64).encode(code);
    Instruction::I64Const(MAX_REPORTED_DELTA).encode(code);
    Instruction::LocalGet(scratch64).encode(code);
    Instruction::I64Const(MAX_REPORTED_DELTA).encode(code);
    Instruction::I64LtU.encode(code);
    Instruction::Select.encode(code);
    Instruction::I32WrapI64.encode(code);
}

/// Scratch locals a body needs to pass the `memory.grow` delta to the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scratch {
    None,
    I32,
    /// The i64 scratch follows the i32 one, so both are declared.
    Both,
}

/// `i32.const id; call hook`.
fn hook_call(id: u32, hook: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12);
    Instruction::I32Const(id as i32).encode(&mut bytes);
    Instruction::Call(hook).encode(&mut bytes);
    bytes
}
