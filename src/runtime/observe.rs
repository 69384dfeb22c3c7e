//! The Observe SDK's guest API on the host: `dylibso:observe/api` (`span-enter`, `span-exit`,
//! `span-tags`, `log`, `metric`) and its legacy `dylibso_observe` names, recording into the
//! run's recorder. What the guest passes is checked: a pointer or length outside its memory is
//! a trap with a clear message, never a host failure; an unbalanced `span-exit` is counted.

use wasmtime::{Caller, Extern, Linker};
use wasmtime::{Result, bail};

use super::RunState;
use crate::trace::observe::parse_tags;
use crate::trace::recorder::Note;

/// The current module name of the API.
pub const API_MODULE: &str = "dylibso:observe/api";
/// The legacy module name.
pub const LEGACY_API_MODULE: &str = "dylibso_observe";

/// Longest string the guest may pass in one call.
const MAX_STRING: u64 = 64 << 10;

/// `metric`'s one format: statsd.
const STATSD: u32 = 1;

/// Reads `len` bytes at `ptr` of the guest's memory as text (invalid UTF-8 replaced).
fn read_text(caller: &mut Caller<'_, RunState>, call: &str, ptr: u64, len: u64) -> Result<String> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        bail!("observe api: `{call}` needs the module to export its memory as `memory`");
    };
    if len > MAX_STRING {
        bail!("observe api: `{call}` was passed {len} bytes, more than the {MAX_STRING} allowed");
    }
    let data = memory.data(&*caller);
    let range = usize::try_from(ptr)
        .ok()
        .and_then(|start| Some(start..start.checked_add(len as usize)?))
        .filter(|range| range.end <= data.len());
    let Some(range) = range else {
        bail!(
            "observe api: `{call}` was passed bytes {ptr}..{} outside the guest's memory ({} bytes)",
            ptr.saturating_add(len),
            data.len()
        );
    };
    Ok(String::from_utf8_lossy(&data[range]).into_owned())
}

fn span_enter(caller: &mut Caller<'_, RunState>, ptr: u64, len: u64) -> Result<()> {
    let name = read_text(caller, "span-enter", ptr, len)?;
    caller.data_mut().recorder.enter_span(&name);
    Ok(())
}

fn span_tags(caller: &mut Caller<'_, RunState>, ptr: u64, len: u64) -> Result<()> {
    let tags = parse_tags(&read_text(caller, "span-tags", ptr, len)?);
    if !tags.is_empty() {
        caller.data_mut().recorder.note(Note::Tags(tags));
    }
    Ok(())
}

fn log(caller: &mut Caller<'_, RunState>, level: u32, ptr: u64, len: u64) -> Result<()> {
    let message = read_text(caller, "log", ptr, len)?;
    caller
        .data_mut()
        .recorder
        .note(Note::Log { level, message });
    Ok(())
}

fn metric(caller: &mut Caller<'_, RunState>, format: u32, ptr: u64, len: u64) -> Result<()> {
    if format != STATSD {
        bail!("observe api: `metric` format {format} is not supported (1: statsd)");
    }
    let line = read_text(caller, "metric", ptr, len)?;
    caller.data_mut().recorder.metric(line);
    Ok(())
}

/// Defines the API, under its current and legacy names, in `linker`.
///
/// # Errors
///
/// If the names are already defined.
pub fn add_observe_api(linker: &mut Linker<RunState>) -> Result<()> {
    linker.func_wrap(
        API_MODULE,
        "span-enter",
        |mut c: Caller<'_, RunState>, ptr: u32, len: u32| {
            span_enter(&mut c, ptr.into(), len.into())
        },
    )?;
    linker.func_wrap(API_MODULE, "span-exit", |mut c: Caller<'_, RunState>| {
        c.data_mut().recorder.exit_span();
    })?;
    linker.func_wrap(
        API_MODULE,
        "span-tags",
        |mut c: Caller<'_, RunState>, ptr: u32, len: u32| span_tags(&mut c, ptr.into(), len.into()),
    )?;
    linker.func_wrap(
        API_MODULE,
        "log",
        |mut c: Caller<'_, RunState>, level: u32, ptr: u32, len: u32| {
            log(&mut c, level, ptr.into(), len.into())
        },
    )?;
    linker.func_wrap(
        API_MODULE,
        "metric",
        |mut c: Caller<'_, RunState>, format: u32, ptr: u32, len: u32| {
            metric(&mut c, format, ptr.into(), len.into())
        },
    )?;
    linker.func_wrap(
        LEGACY_API_MODULE,
        "span_enter",
        |mut c: Caller<'_, RunState>, ptr: u64, len: u32| span_enter(&mut c, ptr, len.into()),
    )?;
    linker.func_wrap(
        LEGACY_API_MODULE,
        "span_exit",
        |mut c: Caller<'_, RunState>| {
            c.data_mut().recorder.exit_span();
        },
    )?;
    linker.func_wrap(
        LEGACY_API_MODULE,
        "span_tags",
        |mut c: Caller<'_, RunState>, ptr: u64, len: u32| span_tags(&mut c, ptr, len.into()),
    )?;
    linker.func_wrap(
        LEGACY_API_MODULE,
        "log",
        |mut c: Caller<'_, RunState>, level: u32, ptr: u64, len: u32| {
            log(&mut c, level, ptr, len.into())
        },
    )?;
    linker.func_wrap(
        LEGACY_API_MODULE,
        "metric",
        |mut c: Caller<'_, RunState>, format: u32, ptr: u64, len: u32| {
            metric(&mut c, format, ptr, len.into())
        },
    )?;
    Ok(())
}
