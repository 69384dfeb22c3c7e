//! Running modules: output, exit codes, traces and their nesting, trace context.

use crate::harness::{Server, Spans, data_dir, error_of, fixture, trace_id_of};

#[test]
fn count_vowels_runs_and_reports_its_trace() {
    let server = Server::start(&data_dir("vowels"), &[], &[]);
    let info = server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    assert_eq!(info["tracing"], "iota");
    assert!(info["traced_functions"].as_u64().unwrap() > 100);

    let response = server.run("name=count_vowels", "Hello, world!");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-iota-exit-code"], "0");
    let trace_id = headers["x-iota-trace-id"].to_str().unwrap().to_string();
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")) && traceparent.ends_with("-01"),
        "{traceparent}"
    );
    assert_eq!(response.text().unwrap(), "3\n");

    let trace = server.trace(&trace_id);
    let spans = Spans::of(&trace);
    assert_eq!(spans.0[0]["name"], "POST /run");
    assert_eq!(spans.0[1]["name"], "run count_vowels");
    assert_eq!(spans.0[1]["parent_span_id"], spans.0[0]["span_id"]);
    assert_eq!(spans.named("_start").len(), 1);
    spans.assert_nested();
    let listed = server.get("/traces").json::<serde_json::Value>().unwrap();
    assert_eq!(listed["traces"][0]["trace_id"], trace_id.as_str());
}

#[test]
fn recursive_calls_become_nested_spans_with_exact_counts() {
    let server = Server::start(&data_dir("fib"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    let response = server.run("name=fib", "12");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "144\n");
    let trace = server.trace(&trace_id);
    let spans = Spans::of(&trace);
    spans.assert_nested();
    let fib: Vec<_> = spans
        .0
        .iter()
        .filter(|s| s["name"].as_str().unwrap().contains("fib::fib"))
        .collect();
    assert_eq!(fib.len(), 465, "fib(12) makes 465 calls");
    for span in &fib {
        assert_eq!(span["attributes"]["code.function.name"], span["name"]);
        assert!(span["attributes"]["wasm.function.index"].is_i64());
    }
    // Recursion nests: some fib span's parent is another fib span.
    let ids: std::collections::HashSet<_> =
        fib.iter().map(|s| s["span_id"].as_str().unwrap()).collect();
    assert!(
        fib.iter()
            .any(|s| ids.contains(s["parent_span_id"].as_str().unwrap()))
    );
    // Exact aggregates, in the trace and (top ten by self time) on the run span.
    let functions = trace["functions"].as_array().unwrap();
    let fib_stats = functions
        .iter()
        .find(|f| f["name"].as_str().unwrap().contains("fib::fib"))
        .unwrap();
    assert_eq!(fib_stats["calls"], 465);
    assert!(fib_stats["self_ns"].as_u64().unwrap() <= fib_stats["total_ns"].as_u64().unwrap());
    let run = &spans.0[1]["attributes"];
    assert_eq!(
        run["iota.functions.called"].as_u64().unwrap() as usize,
        functions.len()
    );
}

#[test]
fn span_cap_keeps_the_longest_calls_and_their_ancestors() {
    let server = Server::start(&data_dir("cap"), &["--max-spans", "50"], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    let response = server.run("name=fib", "15");
    let trace_id = trace_id_of(&response);
    let spans = Spans::of(&server.trace(&trace_id));
    assert_eq!(spans.0.len(), 52, "request + run + 50 function spans");
    spans.assert_nested();
    let run = &spans.0[1]["attributes"];
    assert_eq!(run["iota.spans.exported"], 50);
    assert!(run["iota.calls.recorded"].as_i64().unwrap() > 1973);
}

#[test]
fn traceparent_makes_the_run_a_child_of_the_caller() {
    let server = Server::start(&data_dir("traceparent"), &[], &[]);
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = server.run_with(
        "name=count_vowels",
        "aeiou",
        &[(
            "traceparent",
            &format!("00-{caller_trace}-{caller_span}-01"),
        )],
    );
    assert_eq!(response.headers()["x-iota-trace-id"], caller_trace);
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(traceparent.starts_with(&format!("00-{caller_trace}-")));
    assert!(
        !traceparent.contains(caller_span),
        "the response names the run's own span"
    );
    let spans = Spans::of(&server.trace(caller_trace));
    assert_eq!(spans.0[0]["parent_span_id"], caller_span);
    assert_eq!(
        traceparent.split('-').nth(2).unwrap(),
        spans.0[0]["span_id"]
    );

    // A malformed traceparent starts a new trace instead of failing the run.
    let response = server.run_with("name=count_vowels", "a", &[("traceparent", "00-zz-01")]);
    assert_eq!(response.status(), 200);
    assert_ne!(response.headers()["x-iota-trace-id"], caller_trace);
}

#[test]
fn args_stdin_and_exit_codes() {
    let server = Server::start(&data_dir("exit"), &[], &[]);
    server.upload_ok("exit3", &fixture("exit3.wasm"));
    let response = server.run("name=exit3", "");
    assert_eq!(response.status(), 422);
    assert_eq!(response.headers()["x-iota-exit-code"], "3");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "exiting\n");
    let spans = Spans::of(&server.trace(&trace_id));
    assert_eq!(spans.0[0]["error"], "exited with code 3");
    spans.assert_nested();
}

#[test]
fn trap_returns_500_with_message_and_a_closed_trace() {
    let server = Server::start(&data_dir("trap"), &[], &[]);
    server.upload_ok_with("trap", &fixture("trap.wasm"), "&timing=every_call");
    let response = server.run("name=trap", "");
    let trace_id = trace_id_of(&response);
    let body: serde_json::Value = response.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    assert!(
        body["backtrace"].as_str().unwrap().contains("do_trap"),
        "{body}"
    );
    assert_eq!(body["stdout"], "before trap\n");
    let spans = Spans::of(&server.trace(&trace_id));
    spans.assert_nested();
    let run = &spans.0[1];
    assert!(
        run["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "exception")
    );
    // The frames open at the trap are closed by the host, marked as errors.
    let unfinished: Vec<_> = spans.0[2..]
        .iter()
        .filter(|s| s.get("error").is_some())
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        unfinished.iter().any(|n| n.contains("do_trap")),
        "{unfinished:?}"
    );
    assert!(
        unfinished.iter().any(|n| n.contains("level1")),
        "{unfinished:?}"
    );
}

#[test]
fn timeout_returns_504_and_the_server_keeps_serving() {
    let server = Server::start(&data_dir("timeout"), &["--run-timeout-ms", "300"], &[]);
    let spin =
        wat::parse_str(r#"(module (func $spin (export "_start") (loop $l (br $l))))"#).unwrap();
    server.upload_ok("spin", &spin);
    let clock = std::time::Instant::now();
    let (status, error) = error_of(server.run("name=spin", ""));
    assert_eq!((status, error.as_str()), (504, "guest timed out"));
    assert!(clock.elapsed() < std::time::Duration::from_secs(5));
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    assert_eq!(server.run("name=count_vowels", "oo").text().unwrap(), "2\n");
}

#[test]
fn memory_growth_is_an_event_of_the_growing_call() {
    let server = Server::start(&data_dir("grow"), &[], &[]);
    server.upload_ok("grow", &fixture("grow.wasm"));
    let response = server.run("name=grow", "");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.status(), 200);
    let spans = Spans::of(&server.trace(&trace_id));
    let grows: i64 = spans
        .0
        .iter()
        .flat_map(|s| s["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["name"] == "memory.grow")
        .map(|e| e["attributes"]["wasm.memory.grow.pages"].as_i64().unwrap())
        .sum();
    assert!(grows >= 128, "8 MiB needs at least 128 pages, saw {grows}");
}
