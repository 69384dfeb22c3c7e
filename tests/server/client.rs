//! The `iota` client commands end to end against the real server.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::harness::{Server, data_dir};

/// Runs `iota ARGS` against `server` with `stdin` and extra environment.
fn iota(server: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iota"));
    command
        .args(args)
        .env("IOTA_SERVER", server)
        .env_remove("IOTA_UPLOAD_TOKEN")
        .env_remove("IOTA_RUN_TOKEN")
        .env_remove("IOTA_READ_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fixture_path(name: &str) -> String {
    format!("{}/fixtures/wasm/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_command_against_the_server_with_exit_codes_that_follow_the_run() {
    let server = Server::start(&data_dir("client"), &["--run-timeout-ms", "1000"], &[]);
    let url = server.url.as_str();
    let ok = |args: &[&str], stdin: &[u8]| {
        let out = iota(url, args, stdin, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };

    let uploaded = ok(&["upload", &fixture_path("fib.wasm"), "--name", "fib"], b"");
    assert!(uploaded.starts_with("uploaded fib: "), "{uploaded}");
    for name in ["trap", "exit3", "sleeper"] {
        ok(
            &[
                "upload",
                &fixture_path(&format!("{name}.wasm")),
                "--name",
                name,
            ],
            b"",
        );
    }
    let json: serde_json::Value = serde_json::from_str(&ok(
        &[
            "upload",
            "-",
            "--name",
            "fib2",
            "--option",
            "max_spans=10",
            "--json",
        ],
        &std::fs::read(fixture_path("fib.wasm")).unwrap(),
    ))
    .unwrap();
    assert_eq!(json["spans"]["max_spans"], 10);

    // run: stdout and the guest's exit code; trap and timeout have codes of their own.
    let out = iota(url, &["run", "fib", "--show-trace"], b"12", &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "144\n");
    let trace_id = text(&out.stderr)
        .trim()
        .strip_prefix("trace: ")
        .expect("trace id on stderr")
        .to_string();
    let out = iota(url, &["run", "exit3"], b"", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = iota(url, &["run", "trap"], b"", &[]);
    assert_eq!(out.status.code(), Some(134));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: guest trapped: "), "{stderr}");
    assert!(stderr.contains("trap::do_trap"), "{stderr}");
    let out = iota(url, &["run", "sleeper"], b"", &[]);
    assert_eq!(out.status.code(), Some(124));
    assert!(text(&out.stderr).contains("guest timed out"));
    let out = iota(url, &["run", "fib", "--json"], b"15", &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["exit_code"].as_i64(), json["stdout"].as_str()),
        (Some(0), Some("610\n"))
    );

    // modules: a table with the run statistics, or JSON.
    let table = ok(&["modules"], b"");
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("P99"),
        "{table}"
    );
    let fib_row = table.lines().find(|l| l.starts_with("fib ")).unwrap();
    assert!(fib_row.contains("0.0%"), "{fib_row}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["modules", "--json"], b"")).unwrap();
    assert_eq!(json["modules"].as_array().unwrap().len(), 5);
    let fib_stats = json["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "fib")
        .unwrap();
    assert_eq!(fib_stats["runs"], 2);

    // traces [N] and trace ID.
    let traces = ok(&["traces", "fib"], b"");
    assert_eq!(traces.lines().count(), 3, "{traces}");
    assert!(traces.contains(&trace_id));
    let json: serde_json::Value = serde_json::from_str(&ok(&["traces", "--json"], b"")).unwrap();
    assert_eq!(json["traces"].as_array().unwrap().len(), 5);
    let shown = ok(&["trace", &trace_id], b"");
    let fib_line = shown
        .lines()
        .find(|l| l.starts_with("fib::fib "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(fib_line.split_whitespace().nth(1), Some("465"));
    let folded = ok(&["trace", &trace_id, "--format", "folded"], b"");
    let fib_self: u64 = folded
        .lines()
        .filter(|l| l.rsplit_once(' ').unwrap().0.ends_with(";fib::fib"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    let trace = server.trace(&trace_id);
    let exact_self = trace["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "fib::fib")
        .unwrap()["self_ns"]
        .as_u64()
        .unwrap();
    assert_eq!(fib_self, exact_self);
    let file = data_dir("client-pprof").with_extension("pb.gz");
    ok(
        &[
            "trace",
            &trace_id,
            "--format",
            "pprof",
            "-o",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(&std::fs::read(&file).unwrap()[..2], &[0x1f, 0x8b]);
    let _ = std::fs::remove_file(&file);

    // Refusals: 65; an unknown format is named.
    let out = iota(url, &["trace", &trace_id, "--format", "flame"], b"", &[]);
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out.stderr).contains("expected one of json, folded"));
    let out = iota(
        url,
        &["trace", "0123456789abcdef0123456789abcdef"],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(65));

    // rm: gone afterwards.
    assert_eq!(ok(&["rm", "fib2"], b""), "removed fib2\n");
    let out = iota(url, &["run", "fib2"], b"", &[]);
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out.stderr).contains("no module named `fib2`"));
    let out = iota(url, &["rm", "fib2"], b"", &[]);
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn tokens_come_from_the_environment_and_an_absent_server_is_unavailable() {
    let server = Server::start(
        &data_dir("client-tokens"),
        &[
            "--upload-token",
            "up",
            "--run-token",
            "go",
            "--read-token",
            "look",
        ],
        &[],
    );
    let url = server.url.as_str();
    let fib = fixture_path("fib.wasm");
    let tokens = [
        ("IOTA_UPLOAD_TOKEN", "up"),
        ("IOTA_RUN_TOKEN", "go"),
        ("IOTA_READ_TOKEN", "look"),
    ];
    let out = iota(url, &["upload", &fib, "--name", "fib"], b"", &[]);
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let out = iota(url, &["upload", &fib, "--name", "fib"], b"", &tokens);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        iota(url, &["run", "fib"], b"5", &[]).status.code(),
        Some(65)
    );
    let out = iota(url, &["run", "fib"], b"5", &tokens);
    assert_eq!(text(&out.stdout), "5\n");
    assert_eq!(iota(url, &["modules"], b"", &[]).status.code(), Some(65));
    assert_eq!(iota(url, &["modules"], b"", &tokens).status.code(), Some(0));
    assert_eq!(iota(url, &["traces"], b"", &tokens).status.code(), Some(0));
    assert_eq!(
        iota(url, &["rm", "fib"], b"", &tokens).status.code(),
        Some(0)
    );

    // Nothing listens on a port the server just gave up.
    let gone = server.url.clone();
    server.stop();
    let out = iota(&gone, &["modules"], b"", &[]);
    assert_eq!(out.status.code(), Some(69));
    assert!(text(&out.stderr).contains("cannot reach"));
}
