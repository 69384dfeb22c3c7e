//! Sampling as OpenTelemetry users expect it (the caller's `traceparent` flag, `tracestate`,
//! `OTEL_TRACES_SAMPLER`), and the semantic conventions of the request span.

use crate::harness::{Server, Spans, data_dir, fixture, trace_id_of};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traceparent(flags: &str) -> String {
    format!("00-{TRACE}-00f067aa0ba902b7-{flags}")
}

fn fib_calls(trace: &serde_json::Value) -> u64 {
    trace["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().unwrap().contains("fib::fib"))
        .map(|f| f["calls"].as_u64().unwrap())
        .unwrap()
}

#[test]
fn the_callers_sampled_flag_decides_and_its_tracestate_is_kept() {
    let server = Server::start(&data_dir("sampling-parent"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));

    let sampled = traceparent("01");
    let response = server.run_with(
        "name=fib",
        "12",
        &[
            ("traceparent", &sampled),
            ("tracestate", "vendor=abc,other=1"),
        ],
    );
    assert_eq!(response.headers()["tracestate"], "vendor=abc,other=1");
    let header = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(header.starts_with(&format!("00-{TRACE}-")) && header.ends_with("-01"));
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(Spans::of(&trace).named("fib::fib").len(), 465);

    // Not sampled by the caller: no call spans, but every call still counted.
    let unsampled = traceparent("00");
    let response = server.run_with("name=fib", "12", &[("traceparent", &unsampled)]);
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(response.text().unwrap(), "144\n");
    assert_eq!(
        trace["spans"].as_array().unwrap().len(),
        2,
        "request and run only"
    );
    assert_eq!(fib_calls(&trace), 465);
}

#[test]
fn otel_traces_sampler_is_honoured() {
    let server = Server::start(
        &data_dir("sampling-off"),
        &[],
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    );
    server.upload_ok("fib", &fixture("fib.wasm"));
    let response = server.run_with("name=fib", "12", &[("traceparent", &traceparent("01"))]);
    assert!(
        response.headers()["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(trace["spans"].as_array().unwrap().len(), 2);
    assert_eq!(fib_calls(&trace), 465);
}

#[test]
fn the_request_span_follows_the_http_and_faas_conventions() {
    let server = Server::start(&data_dir("semconv"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    server.upload_ok("exit3", &fixture("exit3.wasm"));
    let request_span = |query: &str| {
        let response = server.run(query, "5");
        let spans = Spans::of(&server.trace(&trace_id_of(&response)));
        spans.0[0].clone()
    };
    let first = request_span("name=fib");
    let a = &first["attributes"];
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["http.route"], "/run");
    assert_eq!(a["url.path"], "/run");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["faas.trigger"], "http");
    assert_eq!(a["faas.invocation_id"], first["span_id"]);
    assert_eq!(a["faas.coldstart"], true);
    assert!(a.get("error.type").is_none());
    let second = request_span("name=fib");
    assert_eq!(second["attributes"]["faas.coldstart"], false);
    assert_ne!(
        second["attributes"]["faas.invocation_id"],
        a["faas.invocation_id"]
    );

    let failed = request_span("name=exit3");
    assert_eq!(failed["attributes"]["http.response.status_code"], 422);
    assert_eq!(failed["attributes"]["error.type"], "exit");
    assert_eq!(failed["attributes"]["process.exit.code"], 3);
}
