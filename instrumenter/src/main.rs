//! `iota-instrument`: rewrite wasm modules so every function reports enter/exit to the host.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};
use iota_instrument::{IfInstrumented, Instrumented, Options};

/// Instrument WebAssembly modules for function-level tracing.
///
/// Every defined function calls `dylibso:observe/instrument` `enter(id)` first and `exit(id)` on
/// every way out; `memory-grow(pages)` precedes each `memory.grow`. The id is the function's index
/// in the output module; `--map` writes the id → name table.
#[derive(Parser, Debug)]
#[command(version, max_term_width = 100)]
struct Cli {
    /// Input modules; `-` reads standard input.
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

    /// Only check: exit 0 if every input is instrumented, 1 otherwise. Writes nothing.
    #[arg(long)]
    check: bool,

    /// Instrument only functions whose (demangled or raw) name matches this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,

    /// Leave functions whose name matches this glob uninstrumented. Repeatable; wins over --include.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,

    /// Keep `.debug_*` and `sourceMappingURL` sections (dropped by default: code offsets move).
    #[arg(long)]
    keep_debug: bool,

    /// Copy already instrumented inputs unchanged instead of failing on them.
    #[arg(long)]
    skip_instrumented: bool,

    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = check_usage(&cli) {
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let mut failed = false;
    for input in &cli.inputs {
        let outcome = if cli.check {
            check(input, cli.quiet)
        } else {
            instrument_one(&cli, input)
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => failed = true,
            Err(err) if is_broken_pipe(&err) => return ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}: {err:#}", input.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
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
    Ok(())
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
    if cli.skip_instrumented {
        options.if_instrumented(IfInstrumented::PassThrough);
    }
    let out = iota_instrument::instrument(&wasm, &options)?;

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
    eprintln!(
        "{} -> {}: {traced} of {} functions instrumented, {} -> {} bytes",
        input.display(),
        output.display(),
        out.functions.len(),
        wasm.len(),
        out.wasm.len()
    );
}

/// Prints whether `input` is instrumented; `Ok(true)` when it is.
fn check(input: &Path, quiet: bool) -> Result<bool> {
    let wasm = read_input(input)?;
    let instrumented = iota_instrument::is_instrumented(&wasm)?;
    if !instrumented {
        eprintln!("error: {}: not instrumented", input.display());
    } else if !quiet {
        eprintln!("{}: instrumented", input.display());
    }
    Ok(instrumented)
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

/// Writes `bytes` to `path` atomically (temporary file + rename), or to standard output.
fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    if is_stdio(path) {
        let mut stdout = io::stdout().lock();
        if stdout.is_terminal() && bytes.first() == Some(&0) {
            bail!("refusing to write binary WebAssembly to a terminal; use -o FILE or redirect");
        }
        stdout.write_all(bytes)?;
        return Ok(stdout.flush()?);
    }
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
