//! The `iota-instrument` command line: outputs, maps, batch mode, `--check`, exit codes.
//!
//! Golden files: each `tests/cli/NAME.wat` is assembled to `NAME.wasm` in an empty directory
//! and its `;; RUN: ARGS` lines run there in order (`%` stands for `NAME.wasm`;
//! `;; RUN-CLOSED-STDOUT: ARGS` runs with standard output a pipe nobody reads); `;; COPY:
//! PATH...` copies the module to more paths first, `;; WRITE: PATH TEXT` writes a file of TEXT
//! and `;; MKDIR: PATH` makes a directory. The
//! transcript of the runs must equal `NAME.wat.stdout` (standard output, then every file left in
//! the directory) and `NAME.wat.stderr` (standard error and exit code). `BLESS=1 cargo test -p
//! iota-instrument --test cli` rewrites them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SAMPLE: &str = r#"(module
  (func $main (export "_start") call $work)
  (func $work))"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iota-instrument"))
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iota-cli-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_sample(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, wat::parse_str(SAMPLE).unwrap()).unwrap();
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cli");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wat"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "golden cases missing from {}",
        dir.display()
    );
    let mut mismatches = Vec::new();
    for case in &cases {
        let (stdout, stderr) = run_golden(case);
        for (ext, actual) in [("stdout", stdout), ("stderr", stderr)] {
            let mut expected_path = case.as_os_str().to_os_string();
            expected_path.push(format!(".{ext}"));
            let expected_path = PathBuf::from(expected_path);
            if bless {
                fs::write(&expected_path, &actual).unwrap();
                continue;
            }
            let expected = fs::read_to_string(&expected_path).unwrap_or_default();
            if expected != actual {
                mismatches.push(format!(
                    "--- {} expected:\n{expected}--- actual:\n{actual}",
                    expected_path.display()
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden files differ (BLESS=1 rewrites them):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Runs one golden case; returns its stdout and stderr transcripts.
fn run_golden(case: &Path) -> (String, String) {
    let text = fs::read_to_string(case).unwrap();
    let stem = case.file_stem().unwrap().to_string_lossy().into_owned();
    let work = scratch(&format!("golden-{stem}"));
    let module = format!("{stem}.wasm");
    let wasm = wat::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    fs::write(work.join(&module), &wasm).unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(paths) = line.strip_prefix(";; COPY:") {
            for path in paths.split_whitespace() {
                let path = work.join(path);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, &wasm).unwrap();
            }
        } else if let Some(rest) = line.strip_prefix(";; WRITE:") {
            let (path, contents) = rest.trim().split_once(' ').unwrap();
            fs::write(work.join(path), contents).unwrap();
        } else if let Some(path) = line.strip_prefix(";; MKDIR:") {
            fs::create_dir_all(work.join(path.trim())).unwrap();
        } else if let Some((args, closed)) = line
            .strip_prefix(";; RUN:")
            .map(|a| (a, false))
            .or_else(|| {
                line.strip_prefix(";; RUN-CLOSED-STDOUT:")
                    .map(|a| (a, true))
            })
        {
            let args: Vec<String> = args
                .split_whitespace()
                .map(|a| {
                    if a == "%" {
                        module.clone()
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let mut command = bin();
            command.args(&args).current_dir(&work);
            if closed {
                // A pipe whose reader is gone before the command starts: every write fails.
                let (reader, writer) = std::io::pipe().unwrap();
                drop(reader);
                command.stdout(writer);
            }
            let out = run(&mut command);
            let command = format!(
                "$ iota-instrument {}{}\n",
                args.join(" "),
                if closed { " >&-closed-pipe" } else { "" }
            );
            stdout.push_str(&command);
            if out.stdout.starts_with(b"\0asm") {
                stdout.push_str(&format!("<wasm module, {} bytes>\n", out.stdout.len()));
            } else {
                stdout.push_str(&String::from_utf8_lossy(&out.stdout));
            }
            stderr.push_str(&command);
            stderr.push_str(&String::from_utf8_lossy(&out.stderr));
            stderr.push_str(&format!("[exit {}]\n", out.status.code().unwrap_or(-1)));
        }
    }
    stdout.push_str("== files ==\n");
    for (path, size) in files_under(&work, &work) {
        let bytes = fs::read(work.join(&path)).unwrap();
        let state = match iota_instrument::is_instrumented(&bytes) {
            _ if !path.ends_with(".wasm") => "",
            Ok(true) => ", instrumented",
            Ok(false) => ", not instrumented",
            Err(_) => ", not a module",
        };
        stdout.push_str(&format!("{path}: {size} bytes{state}\n"));
    }
    (stdout, stderr)
}

/// Every file under `dir`, as a path relative to `root` with `/` separators, sorted.
fn files_under(root: &Path, dir: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(root, &path));
        } else {
            let relative = path.strip_prefix(root).unwrap();
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push((name, path.metadata().unwrap().len()));
        }
    }
    files.sort();
    files
}

#[test]
fn outputs_do_not_share_a_fixed_temporary_name() {
    let dir = scratch("tempname");
    let input = write_sample(&dir, "app.wasm");
    // The path a fixed temporary name would use is taken.
    fs::create_dir_all(dir.join("out.wasm.tmp")).unwrap();
    let out = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(dir.join("out.wasm"))
        .arg("-q"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(iota_instrument::is_instrumented(&fs::read(dir.join("out.wasm")).unwrap()).unwrap());
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".iota-instrument-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn instruments_a_file_and_check_gates_on_it() {
    let dir = scratch("single");
    let input = write_sample(&dir, "app.wasm");
    let output = dir.join("app.out.wasm");
    let map = dir.join("app.map.json");
    let out = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .arg("--map")
        .arg(&map));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2 of 2 functions instrumented"),
        "{}",
        stderr(&out)
    );
    assert!(iota_instrument::is_instrumented(&fs::read(&output).unwrap()).unwrap());

    let entries: Vec<iota_instrument::FunctionEntry> =
        serde_json::from_slice(&fs::read(&map).unwrap()).unwrap();
    let names: Vec<_> = entries.iter().map(|e| (e.id, e.name.as_str())).collect();
    assert_eq!(names, [(3, "main"), (4, "work")]);

    let ok = run(bin().arg("--check").arg(&output));
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let bad = run(bin().arg("--check").arg(&output).arg(&input));
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("app.wasm: not instrumented"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn stdin_to_stdout_is_deterministic() {
    let wasm = wat::parse_str(SAMPLE).unwrap();
    let once = || {
        let mut child = bin()
            .args(["-", "-o", "-", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&wasm).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(out.stderr.is_empty(), "quiet prints nothing");
        out.stdout
    };
    let first = once();
    assert_eq!(first, once());
    assert!(iota_instrument::is_instrumented(&first).unwrap());
}

#[test]
fn batch_reports_each_failure_and_continues() {
    let dir = scratch("batch");
    let good = write_sample(&dir, "good.wasm");
    let bad = dir.join("bad.wasm");
    fs::write(&bad, b"\0asm\x01\0\0\0\x01\xff").unwrap();
    let out_dir = dir.join("out");
    let out = run(bin()
        .arg(&bad)
        .arg(&good)
        .arg("--out-dir")
        .arg(&out_dir)
        .arg("--maps"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.wasm: invalid WebAssembly:") && err.contains("at offset 0x"),
        "{err}"
    );
    assert!(out_dir.join("good.wasm").exists());
    assert!(out_dir.join("good.wasm.map.json").exists());
    assert!(!out_dir.join("bad.wasm").exists());
}

#[test]
fn already_instrumented_input_fails_unless_skipped() {
    let dir = scratch("twice");
    let input = write_sample(&dir, "app.wasm");
    let once = dir.join("once.wasm");
    assert!(run(bin().arg(&input).arg("-o").arg(&once)).status.success());
    let again = run(bin().arg(&once).arg("-o").arg(dir.join("twice.wasm")));
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already instrumented"),
        "{}",
        stderr(&again)
    );
    let skipped = run(bin()
        .arg(&once)
        .arg("-o")
        .arg(dir.join("twice.wasm"))
        .arg("--skip-instrumented"));
    assert!(skipped.status.success());
    assert_eq!(
        fs::read(&once).unwrap(),
        fs::read(dir.join("twice.wasm")).unwrap()
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = scratch("usage");
    let a = write_sample(&dir, "a.wasm");
    let b = write_sample(&dir, "b.wasm");
    let two_without_dir = run(bin().arg(&a).arg(&b).arg("-o").arg(dir.join("x")));
    assert_eq!(two_without_dir.status.code(), Some(2));
    let no_output = run(bin().arg(&a));
    assert_eq!(no_output.status.code(), Some(2));
    assert!(
        stderr(&no_output).contains("-o FILE"),
        "{}",
        stderr(&no_output)
    );
    assert_eq!(run(bin().arg("--no-such-flag")).status.code(), Some(2));
}

#[test]
fn exclude_leaves_functions_untraced() {
    let dir = scratch("exclude");
    let input = write_sample(&dir, "app.wasm");
    let map = dir.join("map.json");
    let out = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(dir.join("o.wasm"))
        .arg("--map")
        .arg(&map)
        .args(["--exclude", "wo*"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let entries: Vec<iota_instrument::FunctionEntry> =
        serde_json::from_slice(&fs::read(&map).unwrap()).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.instrumented).collect::<Vec<_>>(),
        [true, false]
    );
}
