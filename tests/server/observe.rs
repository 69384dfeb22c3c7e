//! What a trace shows beyond the function calls: WASI calls timed at the boundary, and the
//! spans, tags, logs and metrics a guest sends through the Observe SDK's API.

use crate::dwarf_module::{DWARF_NAME, module_with_dwarf};
use crate::harness::{Server, Spans, data_dir, error_of, fixture, trace_id_of};

fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    &span["attributes"][key]
}

fn parent_name<'a>(spans: &'a Spans, span: &serde_json::Value) -> &'a str {
    spans
        .0
        .iter()
        .find(|s| s["span_id"] == span["parent_span_id"])
        .and_then(|s| s["name"].as_str())
        .unwrap_or("")
}

#[test]
fn wasi_calls_are_host_spans_under_their_caller() {
    let server = Server::start(&data_dir("host-spans"), &[], &[]);
    server.upload_ok("host", &fixture("host_calls.wasm"));
    let response = server.run("name=host", "");
    assert_eq!(response.status(), 200);
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(response.text().unwrap(), "hello\n");
    let spans = Spans::of(&trace);
    spans.assert_nested();

    let writes = spans.named("wasi:fd_write");
    assert_eq!(writes.len(), 2);
    let stdout = writes
        .iter()
        .find(|s| attribute(s, "iota.wasi.fd") == 1)
        .unwrap();
    assert_eq!(attribute(stdout, "iota.wasi.bytes"), 6);
    assert_eq!(parent_name(&spans, stdout), "write");
    let stderr = writes
        .iter()
        .find(|s| attribute(s, "iota.wasi.fd") == 2)
        .unwrap();
    assert_eq!(attribute(stderr, "iota.wasi.bytes"), 4);
    assert_eq!(attribute(stderr, "iota.call.kind"), "host");

    let poll = spans.named("wasi:poll_oneoff");
    assert_eq!(poll.len(), 1);
    assert_eq!(parent_name(&spans, poll[0]), "nap");
    // The host slept the 2 ms the guest asked for, inside the span.
    assert!(poll[0]["duration_ns"].as_u64().unwrap() >= 2_000_000);

    // Host calls count in the per-function totals like any call.
    let functions = trace["functions"].as_array().unwrap();
    let total = |name: &str| {
        functions
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["calls"].as_u64().unwrap())
    };
    assert_eq!(total("wasi:fd_write"), Some(2));
    assert_eq!(total("wasi:poll_oneoff"), Some(1));

    // Turned off for a module at upload: no host spans, same output.
    server.upload_ok_with("quiet", &fixture("host_calls.wasm"), "&host_spans=false");
    let response = server.run("name=quiet", "");
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(response.text().unwrap(), "hello\n");
    let spans = Spans::of(&trace);
    assert!(
        spans
            .0
            .iter()
            .all(|s| !s["name"].as_str().unwrap().starts_with("wasi:"))
    );
    assert!(!spans.named("nap").is_empty());
}

#[test]
fn the_server_can_turn_host_spans_off() {
    let server = Server::start(&data_dir("no-host-spans"), &["--host-spans", "false"], &[]);
    server.upload_ok("host", &fixture("host_calls.wasm"));
    let response = server.run("name=host", "");
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    let names: Vec<_> = spans.0[2..]
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["_start", "greet", "write", "nap", "write"]);
}

#[test]
fn observe_api_spans_tags_and_logs_nest_among_function_spans() {
    let server = Server::start(&data_dir("observe"), &[], &[]);
    let info = server.upload_ok("obs", &fixture("observe_api.wasm"));
    assert_eq!(info["tracing"], "iota");
    let response = server.run("name=obs", "");
    assert_eq!(response.status(), 200);
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(response.text().unwrap(), "done\n");
    let spans = Spans::of(&trace);
    spans.assert_nested();

    let request = spans.named("request");
    assert_eq!(request.len(), 1);
    let request = request[0];
    assert_eq!(parent_name(&spans, request), "handle");
    assert_eq!(attribute(request, "iota.call.kind"), "observe");
    assert_eq!(attribute(request, "user"), "42");
    assert_eq!(attribute(request, "plan"), "pro");
    let query = spans.named("db-query")[0];
    assert_eq!(parent_name(&spans, query), "step");
    assert_eq!(parent_name(&spans, spans.named("step")[0]), "request");

    let logs = |span: &serde_json::Value| -> Vec<(String, String)> {
        span["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["name"] == "log")
            .map(|e| {
                let a = &e["attributes"];
                (
                    a["iota.log.severity_text"].as_str().unwrap().to_string(),
                    a["log.record.original"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        logs(query),
        [("WARN".to_string(), "slow query".to_string())]
    );
    assert_eq!(logs(request), [("INFO".to_string(), "handled".to_string())]);
    assert_eq!(
        attribute(&spans.0[1], "iota.observe.unbalanced_span_exits"),
        1,
        "the extra span-exit is counted"
    );
    assert_eq!(
        trace["metrics"],
        serde_json::json!(["handled:1|c|#route:/x"])
    );
}

#[test]
fn the_legacy_observe_names_work_and_bad_pointers_trap_clearly() {
    let server = Server::start(&data_dir("observe-legacy"), &[], &[]);
    server.upload_ok("legacy", &fixture("observe_legacy.wasm"));
    let response = server.run("name=legacy", "");
    assert_eq!(response.status(), 200);
    let trace = server.trace(&trace_id_of(&response));
    let spans = Spans::of(&trace);
    let job = spans.named("job")[0];
    assert_eq!(parent_name(&spans, job), "_start");
    assert_eq!(attribute(job, "team"), "infra");
    let log = &job["events"][0];
    assert_eq!(log["attributes"]["iota.log.severity_text"], "ERROR");
    assert_eq!(log["attributes"]["log.record.original"], "legacy log");
    assert_eq!(trace["metrics"], serde_json::json!(["jobs:1|c"]));

    server.upload_ok("bad", &fixture("observe_bad_pointer.wasm"));
    let (status, error) = error_of(server.run("name=bad", ""));
    assert_eq!(status, 500);
    assert_eq!(
        error,
        "guest trapped: observe api: `span-enter` was passed bytes 65530..65630 outside the \
         guest's memory (65536 bytes)"
    );
    assert_eq!(server.get("/healthz").status(), 200);
}

#[test]
fn functions_are_named_and_placed_from_dwarf_or_a_symbol_map() {
    let server = Server::start(&data_dir("dwarf-names"), &[], &[]);
    server.upload_ok_with("dwarf", &fixture("dwarf_names.wasm"), "&timing=every_call");
    let response = server.run("name=dwarf", "");
    assert_eq!(response.status(), 200);
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    let squares = spans.named("dwarf_names::shapes::area::square");
    assert_eq!(squares.len(), 4, "one per side");
    for square in &squares {
        assert_eq!(
            attribute(square, "code.file.path"),
            "fixtures/rust/dwarf_names.rs"
        );
        assert_eq!(attribute(square, "code.line.number"), 12);
        assert_eq!(
            parent_name(&spans, square),
            "dwarf_names::shapes::area::total"
        );
    }

    // A symbol map sent with the module names functions first.
    let index = iota_instrument::instrument(
        &fixture("dwarf_names.wasm"),
        &iota_instrument::Options::new(),
    )
    .unwrap()
    .functions
    .into_iter()
    .find(|f| f.name.ends_with("::square"))
    .unwrap()
    .original_index;
    let upload = |map: String| {
        let form = reqwest::blocking::multipart::Form::new()
            .part(
                "wasm",
                reqwest::blocking::multipart::Part::bytes(fixture("dwarf_names.wasm"))
                    .file_name("m.wasm"),
            )
            .text("symbol_map", map);
        crate::harness::client()
            .post(format!(
                "{}/upload?name=mapped&timing=every_call",
                server.url
            ))
            .multipart(form)
            .send()
            .unwrap()
    };
    assert_eq!(upload(format!("{index}:square_of_a_side\n")).status(), 201);
    let response = server.run("name=mapped", "");
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    assert_eq!(spans.named("square_of_a_side").len(), 4);

    let (status, error) = error_of(upload("this is no map".into()));
    assert_eq!(status, 400);
    assert_eq!(
        error,
        "invalid symbol map, line 1: expected `INDEX:NAME`, found \"this is no map\""
    );
}

#[test]
fn an_upload_says_when_its_dwarf_matches_no_function() {
    let server = Server::start(&data_dir("dwarf-unplaced"), &[], &[]);
    // Timed, so that each call is a span (both functions are provably short).
    let placed = server.upload_ok_with("placed", &module_with_dwarf(true), "&timing=every_call");
    assert_eq!(placed.get("warnings"), None, "{placed}");
    let response = server.run("name=placed", "");
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    assert_eq!(spans.named(DWARF_NAME).len(), 1);

    let unplaced =
        server.upload_ok_with("unplaced", &module_with_dwarf(false), "&timing=every_call");
    let said = serde_json::json!([
        "DWARF debug information matches none of the module's 2 functions: its code addresses \
         are not this code's (as when a tool rewrote the module after linking without updating \
         them), so no names or source locations come from it"
    ]);
    assert_eq!(unplaced["warnings"], said);
    let info = server
        .get("/modules/unplaced")
        .json::<serde_json::Value>()
        .unwrap();
    assert_eq!(info["warnings"], said);
    // The module runs all the same, its functions named as they can be.
    let response = server.run("name=unplaced", "");
    assert_eq!(response.status(), 200);
    let spans = Spans::of(&server.trace(&trace_id_of(&response)));
    assert_eq!(spans.named("_start").len(), 1);
    assert!(spans.named(DWARF_NAME).is_empty());
}
