//! The `iota` client: `upload`, `run`, `modules`, `traces`, `trace` and `rm` against a running
//! `iota serve`, over HTTP only.
//!
//! The server is `--server URL` (or `IOTA_SERVER`, default `http://127.0.0.1:3000`); tokens come
//! from the same variables the server reads (`IOTA_UPLOAD_TOKEN` for `upload` and `rm`,
//! `IOTA_RUN_TOKEN` for `run`, `IOTA_READ_TOKEN` for the rest), never from the command line.
//! Output is a table for people, or the server's JSON with `--json`. Exit codes: see [`Exit`].

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;

/// The client's subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Upload a module (instrumented and compiled by the server).
    Upload(UploadArgs),
    /// Run a module: stdin is its input, its stdout is printed, its exit code is ours.
    Run(RunArgs),
    /// List the modules with their run statistics.
    Modules(Connection),
    /// List the recent traces, newest first (of one module, if named).
    Traces(TracesArgs),
    /// Show one trace: its per-function totals, or its profile in a format.
    Trace(TraceArgs),
    /// Delete a module.
    Rm(RmArgs),
}

/// Where the server is and how to print.
#[derive(Args, Debug)]
pub struct Connection {
    /// The server's URL.
    #[arg(long, env = "IOTA_SERVER", default_value = "http://127.0.0.1:3000")]
    server: String,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `iota upload`.
#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The `.wasm` file (`-` for stdin).
    file: String,
    /// Name to store it under.
    #[arg(long)]
    name: String,
    /// An upload option `KEY=VALUE` (`instrument=false`, `unknown_imports=trap`,
    /// `max_spans=N`, `min_span_us=N`, `host_spans=false`); repeatable.
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    #[command(flatten)]
    connection: Connection,
}

/// `iota run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The module's name.
    name: String,
    /// Arguments passed to the guest after its name.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
    /// The reactor function to call.
    #[arg(long = "fn", value_name = "FUNCTION")]
    function: Option<String>,
    /// Print the trace id on stderr after the run.
    #[arg(long)]
    show_trace: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `iota traces`.
#[derive(Args, Debug)]
pub struct TracesArgs {
    /// Only this module's traces.
    module: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

/// `iota trace`.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The trace id (32 hex digits).
    id: String,
    /// Print the profile in this format instead of the totals: folded, speedscope, pprof
    /// (gzipped protobuf), svg, stacks (JSON), or json (the whole trace).
    #[arg(long)]
    format: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<std::path::PathBuf>,
    #[command(flatten)]
    connection: Connection,
}

/// `iota rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// The module's name.
    name: String,
    #[command(flatten)]
    connection: Connection,
}

/// Exit codes of the client. A `run` otherwise exits with the guest's exit code (its low 8
/// bits; a non-zero code whose low 8 bits are 0 becomes 1), so codes below can also be the
/// guest's: stderr says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 2: bad usage or local input (a file that cannot be read, binary output to a terminal).
    Usage = 2,
    /// 65: the server refused the request (4xx: bad input, unknown module or trace, wrong
    /// token, too large).
    Refused = 65,
    /// 69: the server could not be reached, or failed (5xx other than a trap, 503 busy).
    Unavailable = 69,
    /// 124: the run timed out (as `timeout(1)`).
    Timeout = 124,
    /// 134: the guest trapped (as `wasmtime run`).
    Trap = 134,
}

/// A failure, with the exit code it gives.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

type Outcome = Result<u8, Failure>;

/// Runs `command`; returns the process's exit code.
pub fn run(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Upload(args) => upload(&args),
        ClientCommand::Run(args) => run_module(&args),
        ClientCommand::Modules(connection) => modules(&connection),
        ClientCommand::Traces(args) => traces(&args),
        ClientCommand::Trace(args) => trace(&args),
        ClientCommand::Rm(args) => remove(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.exit as u8)
        }
    }
}

/// The HTTP client: no overall timeout (runs and uploads take what they take).
fn http() -> Result<Client, Failure> {
    // rustls is linked with its ring provider chosen at run time; install it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .timeout(None::<Duration>)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Failure::new(Exit::Unavailable, format!("HTTP client: {e}")))
}

fn url(connection: &Connection, path: &str) -> String {
    format!("{}{path}", connection.server.trim_end_matches('/'))
}

/// Adds `Authorization: Bearer` from the environment variable `token_var`, if set.
fn with_token(request: RequestBuilder, token_var: &str) -> RequestBuilder {
    match std::env::var(token_var) {
        Ok(token) if !token.is_empty() => request.bearer_auth(token),
        _ => request,
    }
}

fn send(request: RequestBuilder, server: &str) -> Result<Response, Failure> {
    request
        .send()
        .map_err(|e| Failure::new(Exit::Unavailable, format!("cannot reach {server}: {e}")))
}

/// The server's error for a failed request: 4xx refused, 5xx unavailable.
fn refusal(response: Response) -> Failure {
    let status = response.status();
    let body = response.text().unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(body);
    let exit = if status.is_client_error() {
        Exit::Refused
    } else {
        Exit::Unavailable
    };
    Failure::new(exit, format!("{status}: {message}"))
}

/// GETs `path` with the read token and parses JSON.
fn get_json(connection: &Connection, path: &str) -> Result<Value, Failure> {
    let request = with_token(http()?.get(url(connection, path)), "IOTA_READ_TOKEN");
    let response = send(request, &connection.server)?;
    if !response.status().is_success() {
        return Err(refusal(response));
    }
    response
        .json()
        .map_err(|e| Failure::new(Exit::Unavailable, format!("reading the answer: {e}")))
}

fn print_json(value: &Value) -> Outcome {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
    Ok(0)
}

fn upload(args: &UploadArgs) -> Outcome {
    let wasm = if args.file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::new(Exit::Usage, format!("reading stdin: {e}")))?;
        bytes
    } else {
        std::fs::read(&args.file)
            .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", args.file)))?
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("name", &args.name);
    for option in &args.options {
        let (key, value) = option.split_once('=').ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!("invalid --option `{option}`: expected KEY=VALUE"),
            )
        })?;
        query.append_pair(key, value);
    }
    let request = http()?
        .post(url(
            &args.connection,
            &format!("/upload?{}", query.finish()),
        ))
        .header("content-type", "application/wasm")
        .body(wasm);
    let response = send(
        with_token(request, "IOTA_UPLOAD_TOKEN"),
        &args.connection.server,
    )?;
    if !response.status().is_success() {
        return Err(refusal(response));
    }
    let reply: Value = response
        .json()
        .map_err(|e| Failure::new(Exit::Unavailable, format!("reading the answer: {e}")))?;
    if args.connection.json {
        return print_json(&reply);
    }
    println!(
        "uploaded {}: {} functions ({} traced), {} -> {} bytes, sha256 {}",
        reply["name"].as_str().unwrap_or_default(),
        reply["functions"],
        reply["traced_functions"],
        reply["original_size"],
        reply["runnable_size"],
        reply["sha256"].as_str().unwrap_or_default(),
    );
    Ok(0)
}

fn run_module(args: &RunArgs) -> Outcome {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("name", &args.name);
    for arg in &args.args {
        query.append_pair("arg", arg);
    }
    if let Some(function) = &args.function {
        query.append_pair("fn", function);
    }
    let stdin = std::io::stdin();
    // Nothing piped in: the guest gets an empty stdin rather than waiting for the terminal.
    let body = if stdin.is_terminal() {
        reqwest::blocking::Body::from(Vec::new())
    } else {
        reqwest::blocking::Body::new(stdin)
    };
    let request = http()?
        .post(url(&args.connection, &format!("/run?{}", query.finish())))
        .body(body);
    let response = send(
        with_token(request, "IOTA_RUN_TOKEN"),
        &args.connection.server,
    )?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let trace_id = header("x-iota-trace-id");
    let exit_code = header("x-iota-exit-code").and_then(|c| c.parse::<i64>().ok());
    let show_trace = |trace_id: &Option<String>| {
        if let Some(id) = trace_id {
            eprintln!("trace: {id}");
        }
    };
    match (status, exit_code) {
        (200 | 422, Some(code)) => {
            let stdout = response
                .bytes()
                .map_err(|e| Failure::new(Exit::Unavailable, format!("reading stdout: {e}")))?;
            if args.connection.json {
                print_json(&serde_json::json!({
                    "exit_code": code,
                    "trace_id": trace_id,
                    "stdout": String::from_utf8_lossy(&stdout),
                }))?;
            } else {
                write_stdout(&stdout)?;
            }
            if args.show_trace {
                show_trace(&trace_id);
            }
            Ok(exit_byte(code))
        }
        (500 | 504, _) if trace_id.is_some() => {
            let body: Value = response.json().unwrap_or_default();
            let message = body["error"].as_str().unwrap_or("run failed").to_string();
            let exit = if status == 504 {
                Exit::Timeout
            } else if message.starts_with("guest trapped") {
                Exit::Trap
            } else {
                Exit::Unavailable
            };
            if args.connection.json {
                print_json(&body)?;
            } else if let Some(stdout) = body["stdout"].as_str() {
                write_stdout(stdout.as_bytes())?;
            }
            let mut message = message;
            if let Some(backtrace) = body["backtrace"].as_str() {
                message = format!("{message}\n{backtrace}");
            }
            show_trace(&trace_id);
            Err(Failure::new(exit, message))
        }
        _ => Err(refusal(response)),
    }
}

/// A guest exit code as a process exit code: its low 8 bits, or 1 where those are 0.
fn exit_byte(code: i64) -> u8 {
    match (code & 0xff) as u8 {
        0 if code != 0 => 1,
        byte => byte,
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        // A reader that went away (`| head`) is no error of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::new(Exit::Usage, format!("writing stdout: {e}")))
        }
        _ => Ok(()),
    }
}

fn modules(connection: &Connection) -> Outcome {
    let modules = get_json(connection, "/modules")?;
    let stats = get_json(connection, "/stats")?;
    if connection.json {
        return print_json(&serde_json::json!({
            "modules": modules["modules"],
            "stats": stats["modules"],
        }));
    }
    let empty = Vec::new();
    let stats = stats["modules"].as_array().unwrap_or(&empty);
    let mut rows = Vec::new();
    for m in modules["modules"].as_array().unwrap_or(&empty) {
        let name = m["name"].as_str().unwrap_or_default();
        let s = stats.iter().find(|s| s["name"] == name);
        let runs = s.and_then(|s| s["runs"].as_u64()).unwrap_or(0);
        let figure = |key: &str| {
            s.filter(|_| runs > 0)
                .and_then(|s| s[key].as_u64())
                .map_or_else(String::new, fmt_ns)
        };
        rows.push(vec![
            name.to_string(),
            m["functions"].to_string(),
            m["original_size"].to_string(),
            m["uploaded_at"]
                .as_u64()
                .map_or_else(String::new, |t| ago(t * 1_000_000_000)),
            runs.to_string(),
            s.filter(|_| runs > 0)
                .and_then(|s| s["error_rate"].as_f64())
                .map_or_else(String::new, |r| format!("{:.1}%", 100.0 * r)),
            figure("p50_ns"),
            figure("p99_ns"),
        ]);
    }
    rows.sort();
    print_table(
        &[
            "NAME",
            "FUNCTIONS",
            "BYTES",
            "UPLOADED",
            "RUNS",
            "ERRORS",
            "P50",
            "P99",
        ],
        &rows,
    );
    Ok(0)
}

fn traces(args: &TracesArgs) -> Outcome {
    let connection = &args.connection;
    let mut traces = get_json(connection, "/traces")?;
    if let (Some(module), Some(list)) = (&args.module, traces["traces"].as_array_mut()) {
        list.retain(|t| t["module"] == module.as_str());
    }
    if connection.json {
        return print_json(&traces);
    }
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = traces["traces"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|t| {
            vec![
                t["trace_id"].as_str().unwrap_or_default().to_string(),
                t["module"].as_str().unwrap_or_default().to_string(),
                t["start_unix_nanos"].as_u64().map_or_else(String::new, ago),
                t["duration_ns"].as_u64().map_or_else(String::new, fmt_ns),
                t["spans"].to_string(),
                t["error"]
                    .as_str()
                    .or(t["outcome"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            ]
        })
        .collect();
    print_table(
        &["TRACE", "MODULE", "STARTED", "DURATION", "SPANS", "OUTCOME"],
        &rows,
    );
    Ok(0)
}

fn trace(args: &TraceArgs) -> Outcome {
    let connection = &args.connection;
    let id = &args.id;
    let Some(format) = args.format.as_deref().filter(|f| *f != "table") else {
        let trace = get_json(connection, &format!("/traces/{id}"))?;
        if connection.json {
            return print_json(&trace);
        }
        return print_trace(&trace);
    };
    let path = if format == "json" {
        format!("/traces/{id}")
    } else {
        format!("/traces/{id}?format={format}")
    };
    let request = with_token(http()?.get(url(connection, &path)), "IOTA_READ_TOKEN");
    let response = send(request, &connection.server)?;
    if !response.status().is_success() {
        return Err(refusal(response));
    }
    let body = response
        .bytes()
        .map_err(|e| Failure::new(Exit::Unavailable, format!("reading the answer: {e}")))?;
    match &args.output {
        Some(file) => std::fs::write(file, &body)
            .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", file.display())))?,
        None if format == "pprof" && std::io::stdout().is_terminal() => {
            return Err(Failure::new(
                Exit::Usage,
                "a pprof profile is binary: redirect stdout or use -o FILE",
            ));
        }
        None => write_stdout(&body)?,
    }
    Ok(0)
}

fn print_trace(trace: &Value) -> Outcome {
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let request = spans.first().cloned().unwrap_or_default();
    let run = spans.get(1).cloned().unwrap_or_default();
    println!(
        "trace {}  module {}  {}  run {}  {} spans",
        trace["trace_id"].as_str().unwrap_or_default(),
        trace["module"].as_str().unwrap_or_default(),
        request["error"].as_str().unwrap_or("ok"),
        run["duration_ns"].as_u64().map_or_else(String::new, fmt_ns),
        spans.len(),
    );
    for event in run["events"].as_array().into_iter().flatten() {
        match event["name"].as_str() {
            Some("exception") => println!(
                "trap: {}\n{}",
                event["attributes"]["exception.message"]
                    .as_str()
                    .unwrap_or_default(),
                event["attributes"]["exception.stacktrace"]
                    .as_str()
                    .unwrap_or_default()
            ),
            Some("stderr") => println!(
                "stderr:\n{}",
                event["attributes"]["log.record.original"]
                    .as_str()
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
    println!();
    let rows: Vec<Vec<String>> = trace["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let ns = |key: &str| f[key].as_u64().map_or_else(String::new, fmt_ns);
            vec![
                f["name"].as_str().unwrap_or_default().to_string(),
                f["calls"].to_string(),
                ns("total_ns"),
                ns("self_ns"),
                ns("max_ns"),
            ]
        })
        .collect();
    print_table(&["FUNCTION", "CALLS", "TOTAL", "SELF", "MAX"], &rows);
    Ok(0)
}

fn remove(args: &RmArgs) -> Outcome {
    let request = http()?.delete(url(&args.connection, &format!("/modules/{}", args.name)));
    let response = send(
        with_token(request, "IOTA_UPLOAD_TOKEN"),
        &args.connection.server,
    )?;
    if !response.status().is_success() {
        return Err(refusal(response));
    }
    if args.connection.json {
        return print_json(&serde_json::json!({ "deleted": args.name }));
    }
    println!("removed {}", args.name);
    Ok(0)
}

/// Prints `rows` under `headers`, columns padded; columns after the first are right-aligned.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = width - cell.chars().count();
            if i == 0 {
                out.push_str(cell);
                if i + 1 < cells.len() {
                    out.push_str(&" ".repeat(pad));
                }
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        out
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// A duration in nanoseconds, for people.
fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// How long ago a time in nanoseconds since the Unix epoch was.
fn ago(unix_nanos: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let secs = now.saturating_sub(unix_nanos / 1_000_000_000);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_exit_codes_keep_their_low_byte_and_never_turn_into_success() {
        assert_eq!(exit_byte(0), 0);
        assert_eq!(exit_byte(3), 3);
        assert_eq!(exit_byte(255), 255);
        assert_eq!(exit_byte(256), 1);
        assert_eq!(exit_byte(257), 1);
        assert_eq!(exit_byte(-1), 255);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_ns(999), "999 ns");
        assert_eq!(fmt_ns(1_500), "1.5 µs");
        assert_eq!(fmt_ns(2_500_000), "2.50 ms");
        assert_eq!(fmt_ns(3_000_000_000), "3.00 s");
    }
}
