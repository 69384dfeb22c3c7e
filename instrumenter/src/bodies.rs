//! Validation and rewrite of every function body, in parallel across bodies.
//!
//! Module-level validation is one sequential pass over the sections, which hands out each body
//! with its validator. Each body is then validated and rewritten on the same thread, while its
//! bytes are still in cache; results come back in index order, and the error reported is the
//! one of the lowest function index, so neither depends on scheduling.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use wasmparser::{
    FuncToValidate, FuncValidatorAllocations, FunctionBody, Operator, Parser, ValidPayload,
    Validator, ValidatorResources,
};

use crate::body::{self, Rewritten};
use crate::error::{Error, Result};
use crate::features;
use crate::rewrite::Rewriter;

/// A defined function's body and what validates it.
pub(crate) struct PendingBody<'a> {
    validator: FuncToValidate<ValidatorResources>,
    body: FunctionBody<'a>,
}

/// Validates everything but the function bodies (with the supported proposals) and returns the
/// bodies, in order, ready for [`check_bodies`] or [`rewrite_bodies`].
pub(crate) fn validate_module(wasm: &[u8]) -> Result<Vec<PendingBody<'_>>> {
    let mut validator = Validator::new_with_features(features::features());
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(Error::from);
        let valid = payload.and_then(|p| validator.payload(&p).map_err(Error::from));
        match valid {
            Ok(ValidPayload::Func(validator, body)) => bodies.push(PendingBody { validator, body }),
            Ok(_) => {}
            Err(err) => return Err(features::explain(wasm, err)),
        }
    }
    Ok(bodies)
}

/// Validates the bodies; returns, per body, whether it calls one of `enter_hooks` first
/// (`i32.const id; call enter`).
pub(crate) fn check_bodies(
    wasm: &[u8],
    imported_funcs: u32,
    bodies: Vec<PendingBody<'_>>,
    enter_hooks: &[u32],
) -> Result<Vec<bool>> {
    in_order(wasm, imported_funcs, bodies, |pending| {
        Ok(calls_enter_first(pending.body, enter_hooks).unwrap_or(false))
    })
}

/// Validates each body and rewrites it as `rw` plans, in order.
pub(crate) fn rewrite_bodies(
    rw: &Rewriter<'_, '_>,
    bodies: Vec<PendingBody<'_>>,
) -> Result<Vec<Rewritten>> {
    let imported = rw.facts.imported_funcs;
    in_order(rw.wasm, imported, bodies, |pending| {
        let slot = pending.slot;
        let plan = rw.plan_for(slot);
        body::rewrite(rw, &plan, pending.body).map_err(|e| e.in_function(plan.original_index))
    })
}

/// Rewrites again, in parallel, the bodies `counted` flags, now that `rw` counts their calls.
/// Returns the traced bodies they replace of the functions that get a traced twin, in the
/// twins' order.
pub(crate) fn recount_bodies(
    rw: &Rewriter<'_, '_>,
    bodies: &[FunctionBody<'_>],
    counted: &[bool],
    rewritten: &mut [Rewritten],
) -> Result<Vec<Rewritten>> {
    let replaced: Vec<Option<Rewritten>> = rewritten
        .par_iter_mut()
        .enumerate()
        .with_min_len(64)
        .filter(|(slot, _)| counted[*slot])
        .map(|(slot, out)| {
            let plan = rw.plan_for(slot);
            let counting = body::rewrite(rw, &plan, &bodies[slot])
                .map_err(|e| e.in_function(plan.original_index))?;
            let traced = std::mem::replace(out, counting);
            Ok(plan.twin.map(|_| traced))
        })
        .collect::<Result<_>>()?;
    Ok(replaced.into_iter().flatten().collect())
}

/// A body being processed and its position among the defined functions.
struct Slot<'p, 'a> {
    slot: usize,
    body: &'p FunctionBody<'a>,
}

/// Validates every body and applies `f` to the valid ones, in parallel; results in order. On
/// failure, the error of the lowest function index: bodies after a failed one are skipped,
/// bodies before it never are.
fn in_order<T: Send>(
    wasm: &[u8],
    imported_funcs: u32,
    bodies: Vec<PendingBody<'_>>,
    f: impl Fn(Slot<'_, '_>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let first_failed = AtomicUsize::new(usize::MAX);
    let results: Vec<Option<Result<T>>> = bodies
        .into_par_iter()
        .enumerate()
        .with_min_len(64)
        .map_init(
            FuncValidatorAllocations::default,
            |allocations, (slot, pending)| {
                if slot > first_failed.load(Ordering::Relaxed) {
                    return None;
                }
                let result = validate_one(pending.validator, &pending.body, allocations)
                    .map_err(|e| e.in_function(imported_funcs + slot as u32))
                    .and_then(|()| {
                        f(Slot {
                            slot,
                            body: &pending.body,
                        })
                    });
                if result.is_err() {
                    first_failed.fetch_min(slot, Ordering::Relaxed);
                }
                Some(result)
            },
        )
        .collect();
    let mut out = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Some(Ok(value)) => out.push(value),
            Some(Err(err)) => return Err(features::explain(wasm, err)),
            None => unreachable!("a body is skipped only after a failure at a lower index"),
        }
    }
    Ok(out)
}

/// Whether the body starts with `i32.const _; call E` for one of `enter_hooks`.
fn calls_enter_first(body: &FunctionBody<'_>, enter_hooks: &[u32]) -> Result<bool> {
    let mut ops = body.get_operators_reader()?;
    let first = ops.read()?;
    let second = ops.read()?;
    Ok(matches!(
        (first, second),
        (Operator::I32Const { .. }, Operator::Call { function_index })
            if enter_hooks.contains(&function_index)
    ))
}

fn validate_one(
    validator: FuncToValidate<ValidatorResources>,
    body: &FunctionBody<'_>,
    allocations: &mut FuncValidatorAllocations,
) -> Result<()> {
    let mut validator = validator.into_validator(std::mem::take(allocations));
    let result = validator.validate(body).map_err(Error::from);
    *allocations = validator.into_allocations();
    result
}
