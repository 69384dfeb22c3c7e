//! Resource limits and what a run's trace records beyond stdout.

use crate::harness::{Server, Spans, data_dir, error_of, fixture, trace_id_of};

#[test]
fn stdout_cap_truncates_and_stderr_is_a_trace_event() {
    let server = Server::start(&data_dir("stdio"), &["--max-stdout", "1000"], &[]);
    server.upload_ok("writer", &fixture("writer.wasm"));
    let response = server.run("name=writer", "");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-iota-stdout-truncated"], "true");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.bytes().unwrap().len(), 1000);
    let spans = Spans::of(&server.trace(&trace_id));
    let stderr = spans.0[1]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "stderr")
        .expect("stderr event on the run span");
    assert_eq!(
        stderr["attributes"]["log.record.original"],
        "problem on stderr\n"
    );
    assert_eq!(stderr["attributes"]["log.iostream"], "stderr");
}

#[test]
fn memory_limit_stops_a_memory_bomb() {
    let server = Server::start(&data_dir("bomb"), &["--memory-limit-mb", "8"], &[]);
    server.upload_ok("bomb", &fixture("memory_bomb.wasm"));
    let (status, error) = error_of(server.run("name=bomb", ""));
    assert_eq!(status, 500);
    assert!(
        error.starts_with("guest trapped: memory limit exceeded: growing a memory by"),
        "{error}"
    );
    assert_eq!(server.get("/healthz").status(), 200);
}

#[test]
fn run_body_over_the_limit_is_413() {
    let server = Server::start(&data_dir("runbody"), &["--max-run-body", "1000"], &[]);
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    let (status, error) = error_of(server.run("name=count_vowels", &"a".repeat(1001)));
    assert_eq!(
        (status, error.as_str()),
        (413, "request body larger than 1000 bytes")
    );
    assert_eq!(
        server
            .run("name=count_vowels", &"a".repeat(1000))
            .text()
            .unwrap(),
        "1000\n"
    );
}

#[test]
fn legacy_observe_hook_names_are_traced() {
    let server = Server::start(&data_dir("legacy"), &[], &[]);
    let info = server.upload_ok("legacy", &fixture("legacy_hooks.wasm"));
    assert_eq!(info["tracing"], "preinstrumented");
    let response = server.run("name=legacy", "");
    assert_eq!(response.status(), 200);
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    spans.assert_nested();
    let names: Vec<_> = spans.0[2..]
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["_start", "work"]);
    assert_eq!(spans.0[3]["parent_span_id"], spans.0[2]["span_id"]);
}
