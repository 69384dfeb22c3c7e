//! The hook ABI shared with Dylibso's Observe SDK.

/// Import module of the hooks that [`instrument`](crate::instrument) adds.
pub const HOOK_MODULE: &str = "dylibso:observe/instrument";
/// Called first thing in every instrumented function, with its id.
pub const ENTER: &str = "enter";
/// Called on every way out of an instrumented function, with its id.
pub const EXIT: &str = "exit";
/// Called before each `memory.grow`, with the delta in pages.
pub const MEMORY_GROW: &str = "memory-grow";

/// Import module used by older Observe SDK instrumenters.
pub const LEGACY_HOOK_MODULE: &str = "dylibso_observe";
/// Legacy name of [`ENTER`].
pub const LEGACY_ENTER: &str = "instrument_enter";
/// Legacy name of [`EXIT`].
pub const LEGACY_EXIT: &str = "instrument_exit";
/// Legacy name of [`MEMORY_GROW`].
pub const LEGACY_MEMORY_GROW: &str = "instrument_memory_grow";

/// Exported by the rewrite for each function whose calls are counted rather than traced: a
/// mutable `i64` global named this prefix followed by the function's hook id, holding its
/// number of calls.
pub const COUNTER_EXPORT_PREFIX: &str = "iota.count.";

/// Exported by the rewrite, besides [`COUNTER_EXPORT_PREFIX`], for each function counted only
/// because the host asked ([`Timing::Learned`](crate::Timing::Learned)): the same global, under
/// this prefix and the hook id. Set negative before a run, it switches the function back to
/// calling the enter and exit hooks for that run: a call tail-calls the function's traced twin
/// (the same body with the hooks, appended after the module's functions), and the counter
/// stays as set.
pub const SWITCH_EXPORT_PREFIX: &str = "iota.switch.";

/// Import module of [`COUNTS`].
pub const COUNTS_MODULE: &str = "iota";
/// Imported by a rewrite asked to [`report_counts`](crate::Options::report_counts): as
/// `_start` returns, the module calls it with every counter (see [`COUNTER_EXPORT_PREFIX`]), in
/// pairs of hook id (`i32`) and calls (`i64`), [`COUNTS_PER_CALL`] pairs a call, the last call's
/// unused pairs with id -1. A host that takes them need not read the counter globals after such
/// a run; after a trap or an exit, which skip the report, it reads them as before.
pub const COUNTS: &str = "counts";
/// Pairs of [`COUNTS`] per call.
pub const COUNTS_PER_CALL: usize = 7;

/// Custom section that marks a module rewritten by this crate.
pub const MARKER_SECTION: &str = "iota.instrumented";

/// The hooks in import order; their indices follow the module's own imported functions.
pub(crate) const HOOKS: [&str; 3] = [ENTER, EXIT, MEMORY_GROW];

/// Whether `module`/`name` is an enter or exit hook under either naming scheme.
pub fn is_trace_hook(module: &str, name: &str) -> bool {
    (module == HOOK_MODULE && (name == ENTER || name == EXIT))
        || (module == LEGACY_HOOK_MODULE && (name == LEGACY_ENTER || name == LEGACY_EXIT))
}
