//! `iota-instrument`: rewrite wasm modules so every function reports enter/exit to the host.

use std::collections::HashMap;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, ValueEnum};
use iota_instrument::{CallTiming, IfInstrumented, Instrumented, Options, SymbolMap, UnwindExits};

/// Instrument WebAssembly modules and components for function-level tracing.
///
/// Every defined function calls `dylibso:observe/instrument` `enter(id)` first and `exit(id)` on
/// every way out, except provably short ones, which count their calls in an exported global
/// `iota.count.<id>` (`--time-every-call` times them too); `memory-grow(pages)` precedes each
/// `memory.grow`. `--map` writes the id → name table and how each function is traced. In a
/// component every core module is instrumented with every call timed, ids are unique across the
/// component, the hooks are one imported interface, and the map gives each function's `module`.
#[derive(Parser, Debug)]
#[command(version, max_term_width = 100)]
struct Cli {
    /// Input modules or components; `-` reads standard input.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,

    /// Output file for a single input; `-` writes standard output.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["out_dir", "check"])]
    output: Option<PathBuf>,

    /// Write each output to DIR under its input's file name (for many inputs).
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    out_dir: Option<PathBuf>,

    /// Write the function map (id, original index, names, traced or not) as JSON.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["out_dir", "check"])]
    map: Option<PathBuf>,

    /// With --out-dir: also write each function map as DIR/<input name>.map.json.
    #[arg(long, requires = "out_dir")]
    maps: bool,

    /// Only check: exit 0 if every input is a valid, instrumented module or component, 1
    /// otherwise.
    /// Writes nothing.
    #[arg(long)]
    check: bool,

    /// Which functions call `exit` when an exception unwinds them: in every module (`always`,
    /// the default; the output then needs an engine with exception handling), or only in
    /// modules that use exceptions themselves.
    #[arg(long, value_name = "WHEN", default_value = "always")]
    unwind_exits: Unwind,

    /// Instrument only functions whose (demangled or raw) name matches this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,

    /// Leave functions whose name matches this glob uninstrumented. Repeatable; wins over --include.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,

    /// Time every call of every function (each calls `enter` and `exit`, as any Observe SDK host
    /// expects), instead of counting the calls of provably short functions in the module.
    #[arg(long)]
    time_every_call: bool,

    /// Most operators a counted call may run, callees included (without --time-every-call).
    #[arg(long, value_name = "OPERATORS", default_value_t = iota_instrument::CallTiming::DEFAULT_BUDGET)]
    count_budget: u32,

    /// Also count (not time) the functions whose hook ids this file lists, one per line or
    /// separated by spaces or commas (ids of an earlier output of the same input).
    #[arg(long, value_name = "FILE", conflicts_with = "time_every_call")]
    count_also: Option<PathBuf>,

    /// With --count-also: count those functions with a plain counter, without the switch (an
    /// `iota.switch.<id>` export and a traced twin) that lets a host time them again.
    #[arg(long, requires = "count_also")]
    no_switch: bool,

    /// A command's `_start` hands every counter to the `iota`/`counts` import as it returns, so
    /// that the host need not read the counter globals one by one (the iota server takes them).
    #[arg(long, conflicts_with = "time_every_call")]
    report_counts: bool,

    /// Keep `.debug_*` and `sourceMappingURL` sections (dropped by default: code offsets move).
    #[arg(long)]
    keep_debug: bool,

    /// Name functions from a symbol map (lines `INDEX:NAME`, as Emscripten's `--emit-symbol-map`
    /// and `wasm-opt --symbolmap` write them); it wins over the `name` section and DWARF.
    /// Single input only.
    #[arg(long, value_name = "FILE", conflicts_with = "out_dir")]
    symbol_map: Option<PathBuf>,

    /// Copy already instrumented inputs unchanged instead of failing on them.
    #[arg(long)]
    skip_instrumented: bool,

    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

/// `--unwind-exits` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Unwind {
    /// Every function an exception can unwind, in every module.
    Always,
    /// Only in modules that declare or import a tag or use an exception instruction.
    IfModuleUsesExceptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = check_usage(&cli) {
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let mut batch = Batch::default();
    for input in &cli.inputs {
        let outcome = if cli.check {
            check(input, cli.quiet)
        } else {
            instrument_one(&cli, input)
        };
        if let Err(err) = batch.record(outcome) {
            eprintln!("error: {}: {err:#}", input.display());
        }
        if batch.stopped {
            break;
        }
    }
    batch.exit_code()
}

/// The outcome of a run over many inputs.
#[derive(Debug, Default)]
struct Batch {
    failed: bool,
    /// Standard output was closed by the reader: nothing more can be delivered.
    stopped: bool,
}

impl Batch {
    /// Records one input's outcome; returns the error to report, if any.
    fn record(&mut self, outcome: Result<bool>) -> Result<()> {
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.failed = true;
                Ok(())
            }
            Err(err) if is_broken_pipe(&err) => {
                self.stopped = true;
                Ok(())
            }
            Err(err) => {
                self.failed = true;
                Err(err)
            }
        }
    }

    /// 1 if any input failed (also when a closed pipe stopped the run after a failure), else 0.
    fn exit_code(&self) -> ExitCode {
        if self.failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

fn check_usage(cli: &Cli) -> Result<(), String> {
    let many = cli.inputs.len() > 1;
    if cli.check {
        return Ok(());
    }
    if many && cli.out_dir.is_none() {
        return Err("several inputs need --out-dir DIR (or --check)".into());
    }
    if cli.out_dir.is_some() && cli.inputs.iter().any(|i| is_stdio(i)) {
        return Err("standard input (`-`) cannot be used with --out-dir".into());
    }
    if cli.out_dir.is_none() && cli.output.is_none() {
        return Err("give an output: -o FILE (`-` for standard output) or --out-dir DIR".into());
    }
    if let (Some(output), Some(map)) = (&cli.output, &cli.map) {
        if is_stdio(output) && is_stdio(map) {
            return Err(
                "-o - and --map - would both write to standard output; send one to a file".into(),
            );
        }
        if !is_stdio(output) && same_file(output, map) {
            return Err(format!(
                "-o and --map name the same file: {}",
                output.display()
            ));
        }
    }
    if let Some(dir) = &cli.out_dir {
        check_out_dir(dir, &cli.inputs)?;
    }
    Ok(())
}

/// With `--out-dir`, every input must have its own file name, and no output may replace an input.
fn check_out_dir(dir: &Path, inputs: &[PathBuf]) -> Result<(), String> {
    let mut by_name: HashMap<&std::ffi::OsStr, &Path> = HashMap::new();
    for input in inputs {
        let Some(name) = input.file_name() else {
            return Err(format!("input {} has no file name", input.display()));
        };
        if let Some(earlier) = by_name.insert(name, input) {
            return Err(format!(
                "inputs {} and {} would both be written to {}",
                earlier.display(),
                input.display(),
                dir.join(name).display()
            ));
        }
        if same_file(&dir.join(name), input) {
            return Err(format!(
                "--out-dir {} would overwrite the input {}",
                dir.display(),
                input.display()
            ));
        }
    }
    Ok(())
}

/// Whether `a` and `b` name the same file (the same path when neither exists yet).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => a == b,
        _ => false,
    }
}

/// Instruments one input; `Ok(true)` when done.
fn instrument_one(cli: &Cli, input: &Path) -> Result<bool> {
    let wasm = read_input(input)?;
    let mut options = Options::new();
    for pattern in &cli.include {
        options.include(pattern);
    }
    for pattern in &cli.exclude {
        options.exclude(pattern);
    }
    options.keep_debug(cli.keep_debug);
    options.unwind_exits(match cli.unwind_exits {
        Unwind::Always => UnwindExits::Always,
        Unwind::IfModuleUsesExceptions => UnwindExits::IfModuleUsesExceptions,
    });
    if cli.skip_instrumented {
        options.if_instrumented(IfInstrumented::PassThrough);
    }
    options.call_timing(if cli.time_every_call {
        CallTiming::EveryCall
    } else {
        CallTiming::ShortCallsCounted {
            budget: cli.count_budget,
        }
    });
    if let Some(path) = &cli.count_also {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let ids = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>()
                    .with_context(|| format!("{}: `{s}` is not a function id", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        options.count_also(ids).count_also_switch(!cli.no_switch);
    }
    options.report_counts(cli.report_counts);
    if let Some(path) = &cli.symbol_map {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the symbol map {}", path.display()))?;
        options.symbol_map(SymbolMap::parse(&text)?);
    }
    let out = iota_instrument::instrument(&wasm, &options)?;
    if !cli.quiet {
        warn(input, &out);
    }

    let (output, map) = match &cli.out_dir {
        Some(dir) => {
            let file = input.file_name().context("input has no file name")?;
            let mut map_name = file.to_os_string();
            map_name.push(".map.json");
            (dir.join(file), cli.maps.then(|| dir.join(map_name)))
        }
        None => (
            cli.output.clone().context("no output given")?,
            cli.map.clone(),
        ),
    };
    if let Some(dir) = &cli.out_dir {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_output(&output, &out.wasm)?;
    if let Some(map) = map {
        let mut json = serde_json::to_vec_pretty(&out.functions)?;
        json.push(b'\n');
        write_output(&map, &json)?;
    }
    if !cli.quiet {
        report(input, &output, &wasm, &out);
    }
    Ok(true)
}

fn warn(input: &Path, out: &Instrumented) {
    for warning in &out.warnings {
        eprintln!("warning: {}: {warning}", input.display());
    }
}

fn report(input: &Path, output: &Path, wasm: &[u8], out: &Instrumented) {
    if out.passed_through {
        eprintln!(
            "{}: already instrumented, copied to {}",
            input.display(),
            output.display()
        );
        return;
    }
    let traced = out.functions.iter().filter(|f| f.instrumented).count();
    let counted = out
        .functions
        .iter()
        .filter(|f| f.timing.is_counted())
        .count();
    eprintln!(
        "{} -> {}: {traced} of {} functions{} instrumented ({counted} of them counted, not \
         timed), {} -> {} bytes",
        input.display(),
        output.display(),
        out.functions.len(),
        in_modules(out),
        wasm.len(),
        out.wasm.len()
    );
}

/// ` in N core modules` for a component (the modules that define functions), else nothing.
fn in_modules(out: &Instrumented) -> String {
    let modules: std::collections::BTreeSet<u32> =
        out.functions.iter().filter_map(|f| f.module).collect();
    match modules.len() {
        0 => String::new(),
        1 => " in 1 core module".into(),
        n => format!(" in {n} core modules"),
    }
}

/// Prints whether `input` is a valid instrumented module; `Ok(true)` when it is. The input
/// is validated exactly as for instrumenting it.
fn check(input: &Path, quiet: bool) -> Result<bool> {
    let wasm = read_input(input)?;
    let out = iota_instrument::instrument(
        &wasm,
        Options::new().if_instrumented(IfInstrumented::PassThrough),
    )?;
    if !out.passed_through {
        eprintln!("error: {}: not instrumented", input.display());
    } else if !quiet {
        warn(input, &out);
        let traced = out.functions.iter().filter(|f| f.instrumented).count();
        eprintln!(
            "{}: instrumented ({traced} of {} functions{} call enter or count their calls)",
            input.display(),
            out.functions.len(),
            in_modules(&out)
        );
    }
    Ok(out.passed_through)
}

fn is_stdio(path: &Path) -> bool {
    path == Path::new("-")
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    if is_stdio(path) {
        let mut bytes = Vec::new();
        io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        return Ok(bytes);
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `bytes` to `path` atomically (a temporary file of its own in the same directory,
/// then a rename), or to standard output.
fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    if is_stdio(path) {
        let mut stdout = io::stdout().lock();
        if stdout.is_terminal() && bytes.first() == Some(&0) {
            bail!("refusing to write binary WebAssembly to a terminal; use -o FILE or redirect");
        }
        stdout.write_all(bytes)?;
        return Ok(stdout.flush()?);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".iota-instrument-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken_pipe() -> anyhow::Error {
        io::Error::from(io::ErrorKind::BrokenPipe).into()
    }

    #[test]
    fn a_closed_pipe_stops_the_batch_and_keeps_earlier_failures() {
        let mut batch = Batch::default();
        assert!(batch.record(Err(anyhow::anyhow!("bad module"))).is_err());
        assert!(batch.record(Err(broken_pipe())).is_ok());
        assert!(batch.stopped);
        assert_eq!(batch.exit_code(), ExitCode::from(1));

        let mut clean = Batch::default();
        assert!(clean.record(Ok(true)).is_ok());
        assert!(
            clean
                .record(Err(broken_pipe().context("writing -")))
                .is_ok()
        );
        assert!(clean.stopped);
        assert_eq!(clean.exit_code(), ExitCode::SUCCESS);
    }
}
