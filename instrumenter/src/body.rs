//! Rewriting one function body: enter on entry, exit on every way out, memory growth reported.
//!
//! Operators that need no change are copied byte for byte; only calls to defined functions,
//! `ref.func`, returns, tail calls, `memory.grow` and the final `end` are re-emitted.

use std::borrow::Cow;

use wasm_encoder::{BlockType, Catch, Encode, Instruction, ValType};
use wasmparser::{FunctionBody, Operator};

use crate::error::{Error, ErrorKind, Result};
use crate::rewrite::Rewriter;

/// How an exception escaping the function is made to call `exit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExceptionStyle {
    /// The module cannot throw: no handler is needed.
    None,
    /// `try_table (catch_all_ref)` + `throw_ref`.
    Standard,
    /// Legacy `try` / `catch_all` / `rethrow`, for modules written against it.
    Legacy,
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
    pub exceptions: ExceptionStyle,
}

/// Appends the rewritten body of `body` (locals and code, without the size prefix) to `out`.
/// Returns whether the body uses legacy exception handling (`try`, `catch`, `delegate`...).
pub(crate) fn rewrite(
    rw: &Rewriter<'_, '_>,
    plan: &BodyPlan,
    body: &FunctionBody<'_>,
    out: &mut Vec<u8>,
) -> Result<bool> {
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
    let body_len = body.range().end - body.range().start;
    let mut code = Vec::with_capacity(body_len as usize + 2 * exit.len() + 16);
    if plan.traced {
        code.extend_from_slice(&hook_call(plan.id, rw.hook_index(0)));
        open_wrapper(plan, &mut code);
    }

    let mut ops = body.get_operators_reader()?;
    let mut copied_to = ops.original_position() as usize;
    let mut depth: u32 = 0;
    let mut scratch_needed = Scratch::None;
    let mut finished = false;
    let mut legacy_exceptions = false;
    while !ops.eof() {
        let at = ops.original_position() as usize;
        let op = ops.read()?;
        // Each arm that re-emits copies the untouched bytes before `at` first.
        let flush = |code: &mut Vec<u8>| code.extend_from_slice(&wasm[copied_to..at]);
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. } => depth += 1,
            Operator::Try { .. } => {
                depth += 1;
                legacy_exceptions = true;
            }
            Operator::Delegate { .. } => depth -= 1,
            Operator::Catch { .. } | Operator::CatchAll | Operator::Rethrow { .. } => {
                legacy_exceptions = true;
            }
            Operator::End if depth > 0 => depth -= 1,
            Operator::End => {
                flush(&mut code);
                if plan.traced {
                    close_wrapper(plan, &exit, &mut code);
                    code.extend_from_slice(&exit);
                }
                Instruction::End.encode(&mut code);
                copied_to = ops.original_position() as usize;
                finished = true;
                break;
            }
            Operator::Call { function_index } | Operator::RefFunc { function_index }
                if function_index >= rw.facts.imported_funcs =>
            {
                flush(&mut code);
                let function_index = rw.output_function_index(function_index);
                match op {
                    Operator::Call { .. } => Instruction::Call(function_index),
                    _ => Instruction::RefFunc(function_index),
                }
                .encode(&mut code);
                copied_to = ops.original_position() as usize;
            }
            Operator::ReturnCall { function_index } => {
                flush(&mut code);
                if plan.traced {
                    code.extend_from_slice(&exit);
                }
                Instruction::ReturnCall(rw.output_function_index(function_index)).encode(&mut code);
                copied_to = ops.original_position() as usize;
            }
            Operator::Return
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
                if plan.traced =>
            {
                flush(&mut code);
                code.extend_from_slice(&exit);
                copied_to = at;
            }
            Operator::MemoryGrow { mem } => {
                flush(&mut code);
                let is64 = rw
                    .facts
                    .memory64
                    .get(mem as usize)
                    .copied()
                    .unwrap_or(false);
                let local = if is64 { scratch64 } else { scratch32 };
                Instruction::LocalTee(local).encode(&mut code);
                if is64 {
                    Instruction::I32WrapI64.encode(&mut code);
                    scratch_needed = Scratch::Both;
                } else if scratch_needed == Scratch::None {
                    scratch_needed = Scratch::I32;
                }
                Instruction::Call(rw.hook_index(2)).encode(&mut code);
                Instruction::LocalGet(local).encode(&mut code);
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

    let extra_groups: &[(u32, ValType)] = match scratch_needed {
        Scratch::None => &[],
        Scratch::I32 => &[(1, ValType::I32)],
        Scratch::Both => &[(1, ValType::I32), (1, ValType::I64)],
    };
    (groups + extra_groups.len() as u32).encode(out);
    out.extend_from_slice(&wasm[groups_start..groups_end]);
    for (count, ty) in extra_groups {
        count.encode(out);
        ty.encode(out);
    }
    out.extend_from_slice(&code);
    Ok(legacy_exceptions)
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

/// Opens the blocks that replace the function label, so a branch to it reaches `exit`.
fn open_wrapper(plan: &BodyPlan, code: &mut Vec<u8>) {
    match plan.exceptions {
        ExceptionStyle::None => Instruction::Block(plan.block_type).encode(code),
        ExceptionStyle::Standard => {
            Instruction::Block(plan.block_type).encode(code);
            Instruction::Block(BlockType::Result(ValType::EXNREF)).encode(code);
            Instruction::TryTable(
                plan.block_type,
                Cow::Borrowed(&[Catch::AllRef { label: 0 }]),
            )
            .encode(code);
        }
        ExceptionStyle::Legacy => Instruction::Try(plan.block_type).encode(code),
    }
}

/// Closes the wrapper; an escaping exception calls `exit` and is thrown on.
fn close_wrapper(plan: &BodyPlan, exit: &[u8], code: &mut Vec<u8>) {
    match plan.exceptions {
        ExceptionStyle::None => Instruction::End.encode(code),
        ExceptionStyle::Standard => {
            Instruction::End.encode(code); // try_table
            Instruction::Br(1).encode(code);
            Instruction::End.encode(code); // handler block: the exnref is on the stack
            code.extend_from_slice(exit);
            Instruction::ThrowRef.encode(code);
            Instruction::End.encode(code);
        }
        ExceptionStyle::Legacy => {
            Instruction::CatchAll.encode(code);
            code.extend_from_slice(exit);
            Instruction::Rethrow(0).encode(code);
            Instruction::End.encode(code);
        }
    }
}
