//! The `iota-instrument` command line: outputs, maps, batch mode, `--check`, exit codes.

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
