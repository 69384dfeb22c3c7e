//! Components traced to a real collector (rotel, as in `otlp.rs`): a command component and an
//! HTTP handler, each run under a caller's `traceparent`, arrive as one tree per run nested
//! under the caller's span.

use std::collections::HashMap;

use crate::harness::{Server, data_dir, fixture, trace_id_of};
use crate::otlp::{ReceivedSpan, Receiver};

/// Checks that the spans of `trace_id` form one tree under `caller` (the request span, then
/// `run <module>`, then function spans each within its parent's time), and returns them.
fn tree_under(
    receiver: &Receiver,
    trace_id: &str,
    caller: &str,
    expected: usize,
) -> Vec<ReceivedSpan> {
    let spans = receiver.wait_for_spans(trace_id, expected, "every span of the run");
    assert_eq!(spans.len(), expected);
    let by_id: HashMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let roots: Vec<_> = spans.iter().filter(|s| s.parent_id == caller).collect();
    assert_eq!(roots.len(), 1, "one span under the caller's");
    assert_eq!(roots[0].kind, "SPAN_KIND_SERVER");
    for span in &spans {
        if span.parent_id == caller {
            continue;
        }
        let parent = by_id
            .get(span.parent_id.as_str())
            .unwrap_or_else(|| panic!("the parent of {} is in the trace", span.name));
        assert!(
            parent.start <= span.start && span.end <= parent.end,
            "{} within {}",
            span.name,
            parent.name
        );
    }
    spans
}

fn exports_component_traces(protocol: &str) {
    let receiver = Receiver::start();
    let endpoint = match protocol {
        "grpc" => format!("http://{}", receiver.grpc),
        _ => format!("http://{}", receiver.http),
    };
    let server = Server::start(
        &data_dir(&format!("otlp-components-{}", protocol.replace('/', "-"))),
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol],
        &[("OTEL_SERVICE_NAME", "iota-components")],
    );
    server.upload_ok("fib", &fixture("fib.component.wasm"));
    server.upload_ok("web", &fixture("http_handler.wasm"));

    // A command component.
    let (trace, caller) = ("5bd66e2a1b2c4d1e9f0a1b2c3d4e5f60", "a1b2c3d4e5f60718");
    let traceparent = format!("00-{trace}-{caller}-01");
    let response = server.run_with("name=fib", "10", &[("traceparent", &traceparent)]);
    assert_eq!(response.status(), 200);
    assert_eq!(trace_id_of(&response), trace);
    let expected = server.trace(trace)["spans"].as_array().unwrap().len();
    let spans = tree_under(&receiver, trace, caller, expected);
    let root = spans.iter().find(|s| s.parent_id == caller).unwrap();
    assert_eq!(root.name, "POST /run");
    let run = spans.iter().find(|s| s.name == "run fib").unwrap();
    assert_eq!(run.parent_id, root.id);
    let fib: Vec<_> = spans
        .iter()
        .filter(|s| s.name.contains("fib::fib"))
        .collect();
    assert_eq!(fib.len(), 177, "fib(10) makes 177 calls");
    assert!(
        fib.iter()
            .all(|s| s.attributes["wasm.function.index"].starts_with("Int("))
    );

    // An HTTP handler.
    let (trace, caller) = ("6ce77f3b2c3d5e2fa01b2c3d4e5f6071", "b2c3d4e5f6071829");
    let traceparent = format!("00-{trace}-{caller}-01");
    let response = crate::harness::client()
        .get(format!("{}/web/fib/10", server.url))
        .header("traceparent", &traceparent)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(trace_id_of(&response), trace);
    assert_eq!(response.text().unwrap(), "fib(10) = 55\n");
    let expected = server.trace(trace)["spans"].as_array().unwrap().len();
    let spans = tree_under(&receiver, trace, caller, expected);
    let root = spans.iter().find(|s| s.parent_id == caller).unwrap();
    assert_eq!(root.name, "GET /{name}/{*path}");
    assert_eq!(root.attributes["url.path"], "Str(/web/fib/10)");
    assert_eq!(root.attributes["http.response.status_code"], "Int(200)");
    let run = spans.iter().find(|s| s.name == "run web").unwrap();
    assert_eq!(run.parent_id, root.id);
    let fib = spans
        .iter()
        .filter(|s| s.name == "http_handler::fib")
        .count();
    assert_eq!(fib, 177);
    assert!(
        receiver
            .output
            .lock()
            .unwrap()
            .contains("service.name: Str(iota-components)")
    );
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn component_traces_reach_a_real_collector_over_http() {
    exports_component_traces("http/protobuf");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn component_traces_reach_a_real_collector_over_grpc() {
    exports_component_traces("grpc");
}
