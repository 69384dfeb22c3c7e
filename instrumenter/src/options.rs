//! What to instrument and how.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, ErrorKind, Result};

/// What to do with a module that already reports to the enter/exit hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IfInstrumented {
    /// Fail with [`ErrorKind::AlreadyInstrumented`]. The default.
    #[default]
    Fail,
    /// Return the module unchanged, with its function map.
    PassThrough,
}

/// Which functions get a handler that calls `exit` when an exception unwinds them.
///
/// The handler is a `try_table (catch_all_ref)` around the body that calls `exit` and rethrows
/// with `throw_ref` (legacy `try`/`catch_all`/`rethrow` in modules that use legacy exception
/// handling). It only goes on functions an exception can unwind: those that throw, call an
/// import that may throw (not WASI, the hooks or the Observe API), call through a table or a
/// reference, or call a defined function that can be unwound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnwindExits {
    /// In every module: an exception thrown by the host or by another instance through an
    /// import, `call_indirect` or `call_ref` still calls `exit` in every frame it unwinds. The
    /// output of a module that uses no exceptions then needs an engine with the exception
    /// handling proposal (wasmtime, V8 and SpiderMonkey have it). The default.
    #[default]
    Always,
    /// Only in modules that use exception handling themselves (declare or import a tag, or use
    /// an exception instruction): the output needs no proposal the input did not, but an
    /// exception from outside the module unwinds its frames without calling `exit` (a host
    /// that sees one can close the frames left open, as after a trap).
    IfModuleUsesExceptions,
}

/// Settings for [`instrument`](crate::instrument).
///
/// The defaults instrument every defined function, call `exit` when any exception unwinds a
/// function ([`UnwindExits::Always`]), drop `.debug_*` sections (their code offsets would be
/// stale) and refuse an already instrumented module.
#[derive(Debug, Clone, Default)]
pub struct Options {
    include: Vec<String>,
    exclude: Vec<String>,
    keep_debug: bool,
    if_instrumented: IfInstrumented,
    unwind_exits: UnwindExits,
    symbol_map: Option<SymbolMap>,
    call_timing: CallTiming,
    /// Hook ids of functions to count even where the cost model would time them.
    count_also: Vec<u32>,
    /// Those functions count with a plain counter, without a switch back to the hooks.
    count_also_without_switch: bool,
    /// `_start` hands the counters to [`COUNTS`](crate::COUNTS) as it returns.
    report_counts: bool,
    /// Added to every function id: a component's modules get ids above one another's.
    pub(crate) id_base: u32,
}

/// Which calls report `enter`/`exit` (timed) and which only count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallTiming {
    /// Every call of every selected function is timed: it calls `enter` and `exit`. Any host of
    /// the hook ABI (Observe SDK hosts too) sees every call.
    EveryCall,
    /// Functions whose every call runs at most `budget` operators (no loop, no call of an
    /// import or through a table, only calls of such functions) are counted instead: a global
    /// exported as [`COUNTER_EXPORT_PREFIX`](crate::COUNTER_EXPORT_PREFIX) and the id counts
    /// their calls, exactly, and their time stays in their caller's. The default, with a
    /// budget of [`CallTiming::DEFAULT_BUDGET`]. Only a host that reads the counters (`iota
    /// serve`) sees those calls.
    ShortCallsCounted {
        /// Most operators a counted call may run, callees included.
        budget: u32,
    },
}

impl CallTiming {
    /// The default budget of a counted call, in operators: a few microseconds at most.
    pub const DEFAULT_BUDGET: u32 = 1_000;
}

impl Default for CallTiming {
    fn default() -> Self {
        CallTiming::ShortCallsCounted {
            budget: Self::DEFAULT_BUDGET,
        }
    }
}

/// Function names from a symbol map beside the module: lines `INDEX:NAME`, with INDEX the
/// function's index in the module (imports included). This is the format of Emscripten's
/// `--emit-symbol-map` and of Binaryen's `wasm-opt --symbolmap`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolMap {
    names: std::collections::BTreeMap<u32, String>,
}

impl SymbolMap {
    /// Parses a symbol map; empty lines are skipped.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SymbolMap`] naming the first line that is not `INDEX:NAME`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut names = std::collections::BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let entry = line
                .split_once(':')
                .and_then(|(index, name)| Some((index.trim().parse::<u32>().ok()?, name)))
                .filter(|(_, name)| !name.is_empty());
            let Some((index, name)) = entry else {
                return Err(Error::new(ErrorKind::SymbolMap {
                    line: number + 1,
                    reason: format!("expected `INDEX:NAME`, found {line:?}"),
                }));
            };
            names.entry(index).or_insert_with(|| name.to_string());
        }
        Ok(SymbolMap { names })
    }

    /// The name of function `index`, if the map has one.
    pub fn name(&self, index: u32) -> Option<&str> {
        self.names.get(&index).map(String::as_str)
    }
}

impl Options {
    /// Options with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which calls are timed and which only counted (default: short calls counted).
    pub fn call_timing(&mut self, timing: CallTiming) -> &mut Self {
        self.call_timing = timing;
        self
    }

    pub(crate) fn timing(&self) -> CallTiming {
        self.call_timing
    }

    /// Counts the calls of the functions with these hook ids (ids of a previous output of the
    /// same input and options) rather than timing them, whatever the cost model says: for a
    /// host that has seen their calls stay short. Ignored with [`CallTiming::EveryCall`].
    pub fn count_also(&mut self, ids: impl IntoIterator<Item = u32>) -> &mut Self {
        self.count_also.extend(ids);
        self
    }

    pub(crate) fn counted_also(&self) -> &[u32] {
        &self.count_also
    }

    /// Whether the functions of [`count_also`](Self::count_also) get a switch (the default):
    /// their counter, exported also as [`SWITCH_EXPORT_PREFIX`](crate::SWITCH_EXPORT_PREFIX)
    /// and the id, times them again (through the enter and exit hooks) for a run the host
    /// sets it negative before. The check costs each of their calls a compare and a branch;
    /// without a switch they cost what a counted call does.
    pub fn count_also_switch(&mut self, switch: bool) -> &mut Self {
        self.count_also_without_switch = !switch;
        self
    }

    pub(crate) fn counted_also_switch(&self) -> bool {
        !self.count_also_without_switch
    }

    /// Whether a module that counts calls and exports a `_start` of type `[] -> []` reports its
    /// counters as `_start` returns (off by default): the export then names a wrapper that
    /// calls `_start` and hands every counter to the [`COUNTS`](crate::COUNTS) import, so the
    /// host reads them from one call rather than global by global. The extra import shifts
    /// every defined function's index by one; hook ids stay as they are without it.
    pub fn report_counts(&mut self, report: bool) -> &mut Self {
        self.report_counts = report;
        self
    }

    pub(crate) fn reports_counts(&self) -> bool {
        self.report_counts
    }

    /// Names functions from `map` (it wins over the module's `name` section and DWARF).
    pub fn symbol_map(&mut self, map: SymbolMap) -> &mut Self {
        self.symbol_map = Some(map);
        self
    }

    pub(crate) fn symbols(&self) -> Option<&SymbolMap> {
        self.symbol_map.as_ref()
    }

    /// Instrument only functions whose name matches this glob (demangled or raw name).
    ///
    /// May be given several times; with none, every function is included.
    pub fn include(&mut self, pattern: impl Into<String>) -> &mut Self {
        self.include.push(pattern.into());
        self
    }

    /// Leave functions whose name matches this glob uninstrumented. Exclusion wins over inclusion.
    pub fn exclude(&mut self, pattern: impl Into<String>) -> &mut Self {
        self.exclude.push(pattern.into());
        self
    }

    /// Keep `.debug_*` and `sourceMappingURL` sections (default: dropped, since code offsets move).
    pub fn keep_debug(&mut self, keep: bool) -> &mut Self {
        self.keep_debug = keep;
        self
    }

    /// What to do with an already instrumented module (default: [`IfInstrumented::Fail`]).
    pub fn if_instrumented(&mut self, policy: IfInstrumented) -> &mut Self {
        self.if_instrumented = policy;
        self
    }

    /// Which functions call `exit` when an exception unwinds them
    /// (default: [`UnwindExits::Always`]).
    pub fn unwind_exits(&mut self, unwind: UnwindExits) -> &mut Self {
        self.unwind_exits = unwind;
        self
    }

    pub(crate) fn unwind(&self) -> UnwindExits {
        self.unwind_exits
    }

    pub(crate) fn keeps_debug(&self) -> bool {
        self.keep_debug
    }

    pub(crate) fn instrumented_policy(&self) -> IfInstrumented {
        self.if_instrumented
    }

    pub(crate) fn selector(&self) -> Result<Selector> {
        Ok(Selector {
            include: build_set(&self.include)?,
            exclude: build_set(&self.exclude)?,
        })
    }
}

/// Compiled include/exclude patterns.
pub(crate) struct Selector {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Selector {
    /// Whether a function with these names is instrumented.
    pub(crate) fn selects(&self, names: &[&str]) -> bool {
        let included = match &self.include {
            None => true,
            Some(set) => names.iter().any(|n| set.is_match(n)),
        };
        let excluded = match &self.exclude {
            None => false,
            Some(set) => names.iter().any(|n| set.is_match(n)),
        };
        included && !excluded
    }

    pub(crate) fn selects_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }
}

fn build_set(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|e| {
            Error::new(ErrorKind::Pattern {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })
        })?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| {
        Error::new(ErrorKind::Pattern {
            pattern: patterns.join(", "),
            reason: e.to_string(),
        })
    })
}
