//! Run isolation: no guest, client or upload can stall the server. Each test synchronises on
//! what the server reports (`/metrics` gauges, a guest blocked on its stdin, a stopped compile
//! worker), never on how long something takes.

use std::time::{Duration, Instant};

use crate::harness::{Server, Spans, data_dir, error_of, fixture, signal, trace_id_of, wait_until};

/// `_start` calls `$nap`, which sleeps 60 s in `poll_oneoff` (a relative monotonic-clock
/// subscription).
pub const SLEEPER: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $nap
    (i32.store offset=16 (i32.const 0) (i32.const 1))
    (i64.store offset=24 (i32.const 0) (i64.const 60000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))
  (func (export "_start") (call $nap)))"#;

/// Reads stdin to its end, then prints `old`.
const READS_THEN_PRINTS_OLD: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "old\n")
  (func $drain
    (i32.store (i32.const 0) (i32.const 256))
    (i32.store (i32.const 4) (i32.const 256))
    (loop $more
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $more (i32.load (i32.const 8)))))
  (func (export "_start")
    (call $drain)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Reads a byte of stdin: `s` makes it compute until stopped; anything else ends the run.
const SPINS_ON_S: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $spin (loop $forever (br $forever)))
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (i32.eq (i32.load8_u (i32.const 64)) (i32.const 115)) (then (call $spin)))))"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap()
}

/// Runs `name` with `stdin` (a short run) until two runs have started and ended on the HTTP
/// side: its runs start there from then on.
fn start_runs_inline(server: &Server, name: &str, stdin: &str) {
    let before = server.metric("iota_runs_inline_total");
    wait_until("two runs inline", || {
        assert_eq!(server.run(&format!("name={name}"), stdin).status(), 200);
        server.metric("iota_runs_inline_total") >= before + 2
    });
}

/// The recent traces whose run ended with `error`.
fn traces_ending_with(server: &Server, error: &str) -> Vec<serde_json::Value> {
    let traces = server.get("/traces").json::<serde_json::Value>().unwrap();
    traces["traces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["error"] == error)
        .cloned()
        .collect()
}

/// Runs that started on the HTTP side: those that ended there and those that moved.
fn started_inline(server: &Server) -> u64 {
    server.metric("iota_runs_inline_total") + server.metric("iota_runs_moved_total")
}

#[test]
fn a_sleeping_guest_ends_at_its_deadline_with_its_partial_trace() {
    let server = Server::start(&data_dir("sleeper"), &["--run-timeout-ms", "1000"], &[]);
    server.upload_ok("sleeper", &wasm(SLEEPER));
    let clock = Instant::now();
    let response = server.run("name=sleeper", "");
    let trace_id = trace_id_of(&response);
    let (status, error) = error_of(response);
    assert_eq!((status, error.as_str()), (504, "guest timed out"));
    assert!(
        clock.elapsed() < Duration::from_secs(2),
        "answered within the timeout + 1 s, took {:?}",
        clock.elapsed()
    );
    let spans = Spans::of(&server.trace(&trace_id));
    spans.assert_nested();
    let nap = spans.named("nap");
    assert_eq!(nap.len(), 1, "the sleeping frame is in the trace");
    assert_eq!(nap[0]["error"], "timed out");
    assert_eq!(nap[0]["attributes"]["iota.call.unfinished"], true);
    assert_eq!(server.metric("iota_runs_active"), 0);
}

#[test]
fn a_guest_blocked_on_its_stdin_ends_at_its_deadline() {
    let server = Server::start(&data_dir("stdin-block"), &["--run-timeout-ms", "1000"], &[]);
    server.upload_ok("reader", &wasm(READS_THEN_PRINTS_OLD));
    // A version's first run starts on the run threads; later ones, on the HTTP side.
    for inline in [false, true] {
        if inline {
            start_runs_inline(&server, "reader", "");
        }
        let started = started_inline(&server);
        // Five of ten bytes sent: the guest waits for the rest, which never comes.
        let request = server.post_partial("/run?name=reader", 10, b"12345");
        let (status, body) = request.response();
        assert_eq!(status, 504, "{body}");
        assert!(body.contains("guest timed out"), "{body}");
        assert_eq!(started_inline(&server) - started, u64::from(inline));
    }
}

#[test]
fn short_runs_start_on_the_http_side_and_a_computing_one_moves_off_it() {
    let server = Server::start(&data_dir("inline"), &["--run-timeout-ms", "60000"], &[]);
    server.upload_ok("spinner", &wasm(SPINS_ON_S));
    start_runs_inline(&server, "spinner", "x");
    let moved = server.metric("iota_runs_moved_total");
    let spinner = server.post_partial("/run?name=spinner", 1, b"s");
    // It starts where the short runs did, and moves to the run threads once it has computed
    // past the inline budget.
    server.wait_for_metric("iota_runs_moved_total", moved + 1);
    assert_eq!(server.metric("iota_runs_active"), 1, "still computing");
    let response = server.run("name=spinner", "x");
    assert_eq!(response.status(), 200, "served beside the computing run");
    assert_eq!(server.metric("iota_runs_active"), 1);
    drop(spinner);
    server.wait_for_metric("iota_runs_active", 0);
    let cancelled = traces_ending_with(&server, "cancelled: client disconnected");
    assert_eq!(cancelled.len(), 1, "the moved run keeps its trace");
    let spans = Spans::of(&server.trace(cancelled[0]["trace_id"].as_str().unwrap()));
    assert_eq!(
        spans.named("spin")[0]["attributes"]["iota.call.unfinished"],
        true
    );
}

#[test]
fn a_computing_run_that_moved_off_the_http_side_ends_at_its_deadline() {
    let server = Server::start(
        &data_dir("inline-deadline"),
        &["--run-timeout-ms", "1000"],
        &[],
    );
    server.upload_ok("spinner", &wasm(SPINS_ON_S));
    start_runs_inline(&server, "spinner", "x");
    let moved = server.metric("iota_runs_moved_total");
    // Its deadline was set on the HTTP side, and fires on the run threads.
    let (status, error) = error_of(server.run("name=spinner", "s"));
    assert_eq!((status, error.as_str()), (504, "guest timed out"));
    assert_eq!(server.metric("iota_runs_moved_total"), moved + 1);
}

#[test]
fn a_client_gone_while_its_run_waits_on_the_http_side_cancels_it_with_its_trace() {
    let server = Server::start(
        &data_dir("inline-gone"),
        &["--run-timeout-ms", "60000"],
        &[],
    );
    server.upload_ok("reader", &wasm(READS_THEN_PRINTS_OLD));
    start_runs_inline(&server, "reader", "");
    let started = started_inline(&server);
    let waiting = server.post_partial("/run?name=reader", 10, b"12345");
    server.wait_for_metric("iota_runs_active", 1);
    drop(waiting);
    server.wait_for_metric("iota_runs_cancelled_total", 1);
    server.wait_for_metric("iota_runs_active", 0);
    // Counted once it moved to the run threads, when its handler went away.
    assert_eq!(
        started_inline(&server),
        started + 1,
        "started on the HTTP side"
    );
    let traces = server.get("/traces").json::<serde_json::Value>().unwrap();
    let errors: Vec<_> = traces["traces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["error"].as_str())
        .collect();
    assert_eq!(errors, ["cancelled: client disconnected"]);
}

#[test]
fn with_no_inline_budget_every_run_starts_on_the_run_threads() {
    let server = Server::start(&data_dir("no-inline"), &["--inline-run-us", "0"], &[]);
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    for _ in 0..5 {
        assert_eq!(
            server.run("name=count_vowels", "aeiou").text().unwrap(),
            "5\n"
        );
    }
    assert_eq!(started_inline(&server), 0);
}

#[test]
fn a_body_larger_than_declared_limits_is_refused_while_streaming() {
    let server = Server::start(&data_dir("stream-limit"), &["--max-run-body", "1000"], &[]);
    server.upload_ok("reader", &wasm(READS_THEN_PRINTS_OLD));
    // Chunked: no length to check up front; the guest reads until the limit is crossed.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /run?name=reader HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    for _ in 0..3 {
        write!(stream, "200\r\n{}\r\n", "a".repeat(0x200)).unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("request body larger than 1000 bytes"),
        "{response}"
    );
}

#[test]
fn disconnected_clients_cancel_their_runs_and_free_their_slots() {
    let server = Server::start(
        &data_dir("disconnect"),
        &[
            "--max-concurrent-runs",
            "2",
            "--run-timeout-ms",
            "60000",
            "--run-queue-timeout-ms",
            "5000",
        ],
        &[],
    );
    server.upload_ok("sleeper", &wasm(SLEEPER));
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    let clients: Vec<_> = (0..40)
        .map(|_| server.post_partial("/run?name=sleeper", 0, b""))
        .collect();
    server.wait_for_metric("iota_runs_active", 2);
    drop(clients);
    // Both sleepers are cancelled at once (they would hold their slots for 60 s), and the
    // requests still waiting for a slot leave the queue (or, if a slot frees first, start and
    // are cancelled in turn): a normal run gets a slot in time.
    let response = server.run("name=count_vowels", "Hello, world!");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "3\n");
    server.wait_for_metric("iota_runs_active", 0);
    let cancelled_runs = server.metric("iota_runs_cancelled_total");
    assert!((2..=40).contains(&cancelled_runs), "{cancelled_runs}");
    let cancelled = traces_ending_with(&server, "cancelled: client disconnected");
    assert_eq!(
        cancelled.len() as u64,
        cancelled_runs,
        "each cancelled run keeps its trace"
    );
    // A run is active from its slot on: one cancelled before its guest reached `nap` has no
    // `nap` span (seen with the suite's other servers loading the machine); one in it has it
    // open, closed at the cancellation.
    for trace in &cancelled {
        let spans = Spans::of(&server.trace(trace["trace_id"].as_str().unwrap()));
        assert_eq!(spans.0[1]["error"], "cancelled: client disconnected");
        for nap in spans.named("nap") {
            assert_eq!(nap["attributes"]["iota.call.unfinished"], true);
        }
    }
}

#[test]
fn overload_is_a_503_with_retry_after() {
    let server = Server::start(
        &data_dir("overload"),
        &[
            "--max-concurrent-runs",
            "1",
            "--run-timeout-ms",
            "60000",
            "--run-queue-timeout-ms",
            "200",
        ],
        &[],
    );
    server.upload_ok("sleeper", &wasm(SLEEPER));
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    let sleeper = server.post_partial("/run?name=sleeper", 0, b"");
    server.wait_for_metric("iota_runs_active", 1);
    let response = server.run("name=count_vowels", "aa");
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, error) = error_of(response);
    assert_eq!(status, 503);
    assert_eq!(
        error,
        "server busy: no run slot freed up within 200 ms; retry later"
    );
    assert_eq!(server.metric("iota_runs_rejected_total"), 1);
    drop(sleeper);
    server.wait_for_metric("iota_runs_active", 0);
    assert_eq!(server.run("name=count_vowels", "aa").text().unwrap(), "2\n");
}

#[test]
fn reupload_during_a_run_lets_the_run_finish_on_the_old_version() {
    let server = Server::start(&data_dir("inflight"), &[], &[]);
    server.upload_ok("m", &wasm(READS_THEN_PRINTS_OLD));
    // The old version runs and waits for the rest of its stdin.
    let mut in_flight = server.post_partial("/run?name=m", 4, b"ab");
    server.wait_for_metric("iota_runs_active", 1);
    server.upload_ok("m", &fixture("count_vowels.wasm"));
    assert_eq!(
        server.run("name=m", "Hello, world!").text().unwrap(),
        "3\n",
        "new version served"
    );
    in_flight.send(b"cd");
    assert_eq!(
        in_flight.response(),
        (200, "old\n".to_string()),
        "the run in flight kept its version"
    );
}

/// The pid of the server's one compile worker, once it runs.
fn compile_worker(server: &Server) -> u32 {
    let mut workers = Vec::new();
    crate::harness::wait_until("a compile worker", || {
        workers = server.children_running("compile-worker");
        workers.len() == 1
    });
    workers[0]
}

#[test]
fn uploads_queue_then_get_503_and_runs_keep_working() {
    let server = std::sync::Arc::new(Server::start(
        &data_dir("upload-queue"),
        &["--max-concurrent-uploads", "1", "--max-queued-uploads", "1"],
        &[],
    ));
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    let first = {
        let server = server.clone();
        std::thread::spawn(move || server.upload_ok("a", &fixture("fib.wasm")))
    };
    // The first upload's worker is stopped mid-compile: the upload holds the compile slot.
    let worker = compile_worker(&server);
    signal(worker, "STOP");
    server.wait_for_metric("iota_uploads_compiling", 1);
    let second = {
        let server = server.clone();
        std::thread::spawn(move || server.upload_ok("b", &fixture("grow.wasm")))
    };
    server.wait_for_metric("iota_uploads_waiting", 1);

    let response = server.upload("c", &fixture("fib.wasm"), "");
    assert_eq!(response.headers()["retry-after"], "10");
    let (status, error) = error_of(response);
    assert_eq!(status, 503);
    assert_eq!(
        error,
        "too many uploads in progress (2 compiling or waiting); retry later"
    );
    assert_eq!(server.metric("iota_uploads_rejected_total"), 1);
    for _ in 0..20 {
        assert_eq!(
            server.run("name=count_vowels", "aeiou").text().unwrap(),
            "5\n"
        );
    }

    signal(worker, "CONT");
    first.join().unwrap();
    second.join().unwrap();
    assert_eq!(server.run("name=a", "10").text().unwrap(), "55\n");
    assert_eq!(server.metric("iota_uploads_waiting"), 0);
}

#[test]
fn an_upload_past_the_compile_time_limit_is_stopped_and_refused() {
    let dir = data_dir("compile-timeout");
    let server = std::sync::Arc::new(Server::start(&dir, &["--compile-timeout-ms", "1500"], &[]));
    let upload = {
        let server = server.clone();
        std::thread::spawn(move || error_of(server.upload("slow", &fixture("fib.wasm"), "")))
    };
    let worker = compile_worker(&server);
    // A stopped worker never finishes: only the time limit ends it.
    signal(worker, "STOP");
    let (status, error) = upload.join().unwrap();
    assert_eq!(status, 422);
    assert_eq!(
        error,
        "instrumenting and compiling the module took longer than the limit of 1.5s; it was stopped"
    );
    crate::harness::wait_until("the worker is gone", || {
        server.children_running("compile-worker").is_empty()
    });
    assert_eq!(server.get("/modules/slow").status(), 404);
    assert_eq!(
        std::fs::read_dir(dir.join("scratch")).unwrap().count(),
        0,
        "its scratch space is removed"
    );
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = ["modules", "blobs", "compiled"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn storage_is_reclaimed_after_replace_and_delete() {
    let dir = data_dir("reclaim");
    let server = Server::start(&dir, &[], &[]);
    let empty = server.metric("iota_data_dir_bytes");
    server.upload_ok("keep", &fixture("count_vowels.wasm"));
    let with_keep = files_in(&dir);
    let with_keep_bytes = server.metric("iota_data_dir_bytes");
    assert!(with_keep_bytes > empty);

    server.upload_ok("m", &fixture("fib.wasm"));
    server.upload_ok("m", &fixture("grow.wasm"));
    let info = server
        .get("/modules/m")
        .json::<serde_json::Value>()
        .unwrap();
    let files = files_in(&dir);
    assert_eq!(
        files.len(),
        with_keep.len() * 2,
        "only the current version of m beside keep: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(info["sha256"].as_str().unwrap()))
    );

    assert_eq!(server.delete("/modules/m").status(), 204);
    assert_eq!(files_in(&dir), with_keep, "m's content is gone");
    assert_eq!(server.metric("iota_data_dir_bytes"), with_keep_bytes);
    assert_eq!(server.delete("/modules/keep").status(), 204);
    assert_eq!(server.metric("iota_data_dir_bytes"), empty);
}

#[test]
fn leftovers_and_unreferenced_content_are_removed_at_startup() {
    let dir = data_dir("startup-gc");
    let server = Server::start(&dir, &[], &[]);
    server.upload_ok("m", &fixture("count_vowels.wasm"));
    server.stop();
    let kept = files_in(&dir);
    std::fs::write(dir.join("blobs/0123abcd.wasm"), b"orphan").unwrap();
    std::fs::write(dir.join("compiled/0123abcd-00.cwasm"), b"orphan").unwrap();
    std::fs::write(dir.join("blobs/feed.tmp42"), b"half written").unwrap();
    std::fs::create_dir_all(dir.join("scratch/upload-1")).unwrap();
    std::fs::write(dir.join("scratch/upload-1/input.wasm"), b"x").unwrap();

    let server = Server::start(&dir, &[], &[]);
    assert_eq!(files_in(&dir), kept);
    assert_eq!(std::fs::read_dir(dir.join("scratch")).unwrap().count(), 0);
    assert_eq!(server.run("name=m", "aa").text().unwrap(), "2\n");
}

/// `_start` calls `$leave`, which calls `proc_exit(CODE)`.
fn exits_with(code: i32) -> Vec<u8> {
    wasm(&format!(
        r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory (export "memory") 1)
          (func $leave (call $proc_exit (i32.const {code})))
          (func (export "_start") (call $leave)))"#
    ))
}

#[test]
fn proc_exit_zero_is_no_error_and_nonzero_is() {
    let server = Server::start(&data_dir("proc-exit"), &[], &[]);
    server.upload_ok("ok", &exits_with(0));
    server.upload_ok("three", &exits_with(3));

    let response = server.run("name=ok", "");
    assert_eq!(response.status(), 200);
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    let names: Vec<_> = spans
        .0
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["POST /run", "run ok", "_start", "leave", "wasi:proc_exit"]
    );
    for span in &spans.0 {
        assert!(span.get("error").is_none(), "no error on {span}");
    }
    assert_eq!(
        spans.named("leave")[0]["attributes"]["iota.call.unfinished"],
        true
    );

    let response = server.run("name=three", "");
    assert_eq!(response.status(), 422);
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    for span in &spans.0 {
        assert_eq!(span["error"], "exited with code 3", "{span}");
    }
}

#[test]
fn the_read_token_guards_modules_traces_and_metrics() {
    let server = Server::start(&data_dir("read-token"), &["--read-token", "r3ad"], &[]);
    server.upload_ok("m", &fixture("count_vowels.wasm"));
    let trace_id = trace_id_of(&server.run("name=m", "a"));
    let client = crate::harness::client();
    for path in [
        "/modules".to_string(),
        "/modules/m".to_string(),
        "/traces".to_string(),
        format!("/traces/{trace_id}"),
        "/metrics".to_string(),
    ] {
        let url = format!("{}{path}", server.url);
        let refused = client.get(&url).send().unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        let wrong = client.get(&url).bearer_auth("nope").send().unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let allowed = client.get(&url).bearer_auth("r3ad").send().unwrap();
        assert_eq!(allowed.status(), 200, "{path}");
    }
    assert_eq!(server.get("/healthz").status(), 200);
}

const REACTOR: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $ready (mut i32) (i32.const 0))
  (data (i32.const 32) "hello\n")
  (data (i32.const 48) "not initialized\n")
  (func $say (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_initialize") (global.set $ready (i32.const 1)))
  (func (export "hello")
    (if (global.get $ready)
      (then (call $say (i32.const 32) (i32.const 6)))
      (else (call $say (i32.const 48) (i32.const 16)))))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "other")))"#;

#[test]
fn reactors_run_the_chosen_export_after_initialize() {
    let server = Server::start(&data_dir("reactor"), &[], &[]);
    let info = server.upload_ok_with("r", &wasm(REACTOR), "&timing=every_call");
    assert_eq!(
        info["entry"],
        serde_json::json!({"kind": "reactor", "initialize": true, "functions": ["hello", "other"]})
    );
    let response = server.run("name=r&fn=hello", "");
    assert_eq!(response.status(), 200);
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "hello\n");
    let spans = Spans::of(&server.trace(&trace_id));
    spans.assert_nested();
    let names: Vec<_> = spans.0[2..]
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["_initialize", "hello", "say", "wasi:fd_write"]);

    let (status, error) = error_of(server.run("name=r", ""));
    assert_eq!(
        (status, error.as_str()),
        (
            400,
            "this module is a reactor: choose the function to run with `fn=`, one of: hello, other"
        )
    );
    let (status, error) = error_of(server.run("name=r&fn=add", ""));
    assert_eq!(
        (status, error.as_str()),
        (
            400,
            "no exported function `add` of type [] -> [] to run; choose one of: hello, other"
        )
    );
    server.upload_ok("cmd", &fixture("count_vowels.wasm"));
    let (status, error) = error_of(server.run("name=cmd&fn=main", ""));
    assert_eq!(status, 400);
    assert!(error.contains("is a WASI command"), "{error}");
}

#[test]
fn a_module_that_cannot_run_is_refused_at_upload() {
    let server = Server::start(&data_dir("no-entry"), &[], &[]);
    let module = wasm(
        r#"(module (memory (export "memory") 1) (func (export "get") (result i32) (i32.const 7)))"#,
    );
    let (status, error) = error_of(server.upload("lib", &module, ""));
    assert_eq!(status, 400);
    assert!(
        error.starts_with("module cannot be run: it exports no `_start`"),
        "{error}"
    );
    assert!(error.contains("`memory` (memory), `get` (func"), "{error}");
    assert_eq!(server.get("/modules/lib").status(), 404);
}

/// Two memories of 80 pages (5 MiB) each: one fits in 8 MiB, both do not.
const TWO_MEMORIES: &str = r#"(module
  (memory $a 80) (memory $b 80)
  (func (export "_start")))"#;

/// A 96-page (6 MiB) memory whose whole content it writes to stdout.
const BIG_WRITER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 96)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 4194304))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

#[test]
fn the_memory_limit_covers_all_memories_and_host_buffers() {
    let server = Server::start(&data_dir("run-memory"), &["--memory-limit-mb", "8"], &[]);
    server.upload_ok("two", &wasm(TWO_MEMORIES));
    let (status, error) = error_of(server.run("name=two", ""));
    assert_eq!(status, 500);
    assert!(
        error.starts_with("guest trapped: memory limit exceeded: growing a memory by 5242880 bytes would take the run past its limit of 8388608 bytes"),
        "{error}"
    );

    // 6 MiB of memory leaves less than 2 MiB of the 8 for the 4 MiB of stdout.
    server.upload_ok("writer", &wasm(BIG_WRITER));
    let response = server.run("name=writer", "");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-iota-stdout-truncated"], "true");
    let trace_id = trace_id_of(&response);
    let stdout = response.bytes().unwrap().len();
    assert!((1 << 20..2 << 20).contains(&stdout), "{stdout} bytes kept");
    let spans = Spans::of(&server.trace(&trace_id));
    let held = spans.0[1]["attributes"]["iota.run.memory_bytes"]
        .as_u64()
        .unwrap();
    assert!(held <= 8 << 20 && held > 7 << 20, "{held}");
}

#[test]
fn the_compile_memory_limit_counts_from_the_workers_start() {
    // The allocator reserves address space for its heaps as a process starts (1 GiB), none of
    // it used: a smaller limit still leaves the compile its room.
    let server = Server::start(
        &data_dir("compile-memory"),
        &["--compile-memory-limit-mb", "256"],
        &[],
    );
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    assert_eq!(
        server.run("name=count_vowels", "aeiou").text().unwrap(),
        "5\n"
    );
    // One the compile cannot fit in is an upload refused for it.
    let tight = Server::start(
        &data_dir("compile-memory-tight"),
        &["--compile-memory-limit-mb", "1"],
        &[],
    );
    let (status, error) = error_of(tight.upload("count_vowels", &fixture("count_vowels.wasm"), ""));
    assert_eq!(status, 422, "{error}");
    assert_eq!(
        error,
        "instrumenting and compiling the module needed more than the limit of 1 MiB of memory"
    );
}
