//! Validation and rewrite of every function body, in parallel across bodies.
//!
//! Module-level validation is one sequential pass over the sections, which hands out each body
//! with its validator. Each body is then validated and rewritten on the same thread, while its
//! bytes are still in cache; results come back in index order, so the output and the first
//! error reported do not depend on scheduling.

use rayon::prelude::*;
use wasmparser::{
    FuncToValidate, FuncValidatorAllocations, FunctionBody, Parser, ValidPayload, Validator,
    ValidatorResources, WasmFeatures,
};

use crate::body;
use crate::error::{Error, Result};
use crate::rewrite::Rewriter;

/// A defined function's body and what validates it.
pub(crate) struct PendingBody<'a> {
    validator: FuncToValidate<ValidatorResources>,
    body: FunctionBody<'a>,
}

/// Validates everything but the function bodies (with every proposal `wasmparser` knows) and
/// returns the bodies, in order, ready for [`validate_bodies`] or [`rewrite_bodies`].
pub(crate) fn validate_module(wasm: &[u8]) -> Result<Vec<PendingBody<'_>>> {
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let ValidPayload::Func(validator, body) = validator.payload(&payload?)? {
            bodies.push(PendingBody { validator, body });
        }
    }
    Ok(bodies)
}

/// Validates the bodies only.
pub(crate) fn validate_bodies(bodies: Vec<PendingBody<'_>>) -> Result<()> {
    bodies
        .into_par_iter()
        .map_init(FuncValidatorAllocations::default, |allocations, pending| {
            validate_one(pending.validator, &pending.body, allocations)
        })
        .collect::<Result<Vec<()>>>()?;
    Ok(())
}

/// The bodies' bytes, kept for a second rewrite.
pub(crate) fn function_bodies<'a>(bodies: &[PendingBody<'a>]) -> Vec<FunctionBody<'a>> {
    bodies.iter().map(|p| p.body.clone()).collect()
}

/// Validates each body and rewrites it as `rw` plans; returns the rewritten bodies (locals and
/// code, without size prefix) in order, and whether any body uses legacy exception handling.
pub(crate) fn rewrite_bodies(
    rw: &Rewriter<'_, '_>,
    bodies: Vec<PendingBody<'_>>,
) -> Result<(Vec<Vec<u8>>, bool)> {
    let rewritten = bodies
        .into_par_iter()
        .enumerate()
        .with_min_len(64)
        .map_init(
            FuncValidatorAllocations::default,
            |allocations, (slot, pending)| {
                validate_one(pending.validator, &pending.body, allocations)
                    .map_err(|e| e.in_function(rw.plan_for(slot).original_index))?;
                rewrite_one(rw, slot, &pending.body)
            },
        )
        .collect::<Result<Vec<_>>>()?;
    let legacy = rewritten.iter().any(|(_, legacy)| *legacy);
    Ok((rewritten.into_iter().map(|(out, _)| out).collect(), legacy))
}

/// Rewrites bodies already validated.
pub(crate) fn rewrite_validated(
    rw: &Rewriter<'_, '_>,
    bodies: &[FunctionBody<'_>],
) -> Result<Vec<Vec<u8>>> {
    bodies
        .par_iter()
        .enumerate()
        .with_min_len(64)
        .map(|(slot, body)| rewrite_one(rw, slot, body).map(|(out, _)| out))
        .collect()
}

fn rewrite_one(
    rw: &Rewriter<'_, '_>,
    slot: usize,
    body: &FunctionBody<'_>,
) -> Result<(Vec<u8>, bool)> {
    let plan = rw.plan_for(slot);
    let mut out = Vec::new();
    let legacy =
        body::rewrite(rw, &plan, body, &mut out).map_err(|e| e.in_function(plan.original_index))?;
    Ok((out, legacy))
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
