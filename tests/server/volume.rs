//! Span volume: a run of millions of calls stays within its bounds with exact per-function
//! totals; the minimum span duration and per-module limits are honoured.

use crate::harness::{Server, Spans, data_dir, error_of, fixture, trace_id_of};

/// Calls fib(n) makes: 2·fib(n+1) − 1.
fn fib_calls(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..=n {
        (a, b) = (b, a + b);
    }
    2 * a - 1
}

/// The `functions` entry whose name contains `needle`.
fn function<'a>(trace: &'a serde_json::Value, needle: &str) -> &'a serde_json::Value {
    trace["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no function like {needle}"))
}

fn u64_of(value: &serde_json::Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn eleven_million_calls_stay_within_bounds_with_exact_totals() {
    let server = Server::start(&data_dir("volume"), &["--run-timeout-ms", "600000"], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    let rss_before = peak_rss_kib(server.pid());
    let response = server.run("name=fib", "33");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "3524578\n");
    let rss_after = peak_rss_kib(server.pid());
    let trace = server.trace(&trace_id);

    let fib = function(&trace, "fib::fib");
    assert_eq!(u64_of(&fib["calls"]), fib_calls(33));
    assert_eq!(fib_calls(33), 11_405_773);

    // Self times partition the root's total exactly: nothing is lost to the dropped events.
    let functions = trace["functions"].as_array().unwrap();
    let root = function(&trace, "_start");
    let self_sum: u64 = functions.iter().map(|f| u64_of(&f["self_ns"])).sum();
    assert_eq!(self_sum, u64_of(&root["total_ns"]));
    assert!(u64_of(&fib["max_ns"]) <= u64_of(&fib["total_ns"]));
    assert!(u64_of(&fib["self_ns"]) <= u64_of(&fib["total_ns"]));

    let spans = Spans::of(&trace);
    spans.assert_nested();
    let run = &spans.0[1]["attributes"];
    let total_calls: u64 = functions.iter().map(|f| u64_of(&f["calls"])).sum();
    assert_eq!(u64_of(&run["iota.calls.total"]), total_calls);
    // The log filled and kept the longest calls: the minimum span duration rose.
    assert!(u64_of(&run["iota.span.min_ns"]) > 0);
    assert_eq!(u64_of(&run["iota.events.dropped"]), 0);
    assert!(u64_of(&run["iota.calls.recorded"]) <= 1 << 19);
    assert_eq!(
        u64_of(&run["iota.calls.recorded"])
            + u64_of(&run["iota.calls.short"])
            + u64_of(&run["iota.calls.counted"]),
        total_calls
    );
    // Every call longer than the final minimum is logged; the exported ones are the longest.
    let min_ns = u64_of(&run["iota.span.min_ns"]);
    let fib_spans: Vec<u64> = spans
        .0
        .iter()
        .filter(|s| s["name"].as_str().unwrap().contains("fib::fib"))
        .map(|s| u64_of(&s["duration_ns"]))
        .collect();
    assert!(fib_spans.iter().all(|&d| d >= min_ns));
    // The longest 10,000 calls, plus any ancestors that tied with a kept callee.
    assert!(u64_of(&run["iota.spans.exported"]) <= 10_000 + 34);
    let recorder_bytes = u64_of(&run["iota.recorder.bytes"]);
    assert!(
        recorder_bytes <= 64 << 20,
        "trace memory {recorder_bytes} bytes"
    );
    // The whole server's peak resident set, guest memory included, grows by less than 64 MiB.
    assert!(
        rss_after - rss_before <= 64 << 10,
        "peak RSS grew by {} KiB",
        rss_after - rss_before
    );
    eprintln!(
        "fib(33): {total_calls} calls, recorder {:.1} MiB, server peak RSS {:.1} -> {:.1} MiB",
        recorder_bytes as f64 / (1 << 20) as f64,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
}

#[test]
fn short_calls_fold_into_their_callers_and_still_count() {
    let server = Server::start(&data_dir("min-span"), &[], &[]);
    let info: serde_json::Value = server
        .upload("fib", &fixture("fib.wasm"), "&min_span_us=20")
        .json()
        .unwrap();
    assert_eq!(info["spans"]["min_span_us"], 20);
    let response = server.run("name=fib", "20");
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(response.text().unwrap(), "6765\n");

    let spans = Spans::of(&trace);
    spans.assert_nested();
    for span in &spans.0[2..] {
        assert!(
            u64_of(&span["duration_ns"]) >= 20_000,
            "span shorter than the minimum: {span}"
        );
    }
    let fib_spans = spans
        .0
        .iter()
        .filter(|s| s["name"].as_str().unwrap().contains("fib::fib"))
        .count() as u64;
    let run = &spans.0[1]["attributes"];
    let short = u64_of(&run["iota.calls.short"]);
    assert!(
        short > 0 && fib_spans < fib_calls(20),
        "{short} {fib_spans}"
    );
    assert_eq!(
        u64_of(&function(&trace, "fib::fib")["calls"]),
        fib_calls(20)
    );
    assert_eq!(
        u64_of(&run["iota.calls.recorded"]) + short + u64_of(&run["iota.calls.counted"]),
        u64_of(&run["iota.calls.total"])
    );
}

#[test]
fn modules_choose_their_span_limits_within_the_server_s() {
    let server = Server::start(&data_dir("module-limits"), &["--max-spans", "100"], &[]);
    let info: serde_json::Value = server
        .upload("fib", &fixture("fib.wasm"), "&max_spans=20")
        .json()
        .unwrap();
    assert_eq!(info["spans"]["max_spans"], 20);
    let response = server.run("name=fib", "15");
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    spans.assert_nested();
    assert_eq!(spans.0[1]["attributes"]["iota.spans.exported"], 20);
    let stored = server
        .get("/modules/fib")
        .json::<serde_json::Value>()
        .unwrap();
    assert_eq!(stored["spans"]["max_spans"], 20);

    // A module without its own limits gets the server's.
    server.upload_ok("plain", &fixture("fib.wasm"));
    let response = server.run("name=plain", "15");
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    assert_eq!(spans.0[1]["attributes"]["iota.spans.exported"], 100);

    for (query, message) in [
        (
            "&max_spans=101",
            "invalid `max_spans=101`: at most 100 allowed",
        ),
        (
            "&max_spans=-1",
            "invalid `max_spans=-1`: expected a whole number",
        ),
        (
            "&min_span_us=1ms",
            "invalid `min_span_us=1ms`: expected a whole number",
        ),
    ] {
        let (status, error) = error_of(server.upload("bad", &fixture("fib.wasm"), query));
        assert_eq!((status, error.as_str()), (400, message));
    }
    assert_eq!(server.get("/modules/bad").status(), 404);
}
