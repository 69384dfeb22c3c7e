//! Components through the server: WASI 0.2 commands and `wasi:http` handlers, uploaded,
//! instrumented, run and traced like core modules.

use std::io::{Read, Write};

use crate::harness::{Server, Spans, data_dir, error_of, fixture, trace_id_of};

/// Spans whose name contains `needle`.
fn count(spans: &Spans, needle: &str) -> usize {
    spans
        .0
        .iter()
        .filter(|s| s["name"].as_str().unwrap().contains(needle))
        .count()
}

#[test]
fn a_command_component_runs_like_a_core_command() {
    let server = Server::start(&data_dir("component-command"), &[], &[]);
    let info = server.upload_ok("cv", &fixture("count_vowels.component.wasm"));
    assert_eq!(info["kind"], "component");
    assert_eq!(info["entry"]["kind"], "command");
    assert_eq!(info["tracing"], "iota");
    assert!(info["traced_functions"].as_u64().unwrap() > 100);
    let listed = server
        .get("/modules/cv")
        .json::<serde_json::Value>()
        .unwrap();
    assert_eq!(listed["kind"], "component");
    let core = server.upload_ok("cv1", &fixture("count_vowels.wasm"));
    assert_eq!(core["kind"], "module");

    let response = server.run("name=cv", "Hello, world!");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-iota-exit-code"], "0");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "3\n");
    let spans = Spans::of(&server.trace(&trace_id));
    assert_eq!(spans.0[0]["name"], "POST /run");
    assert_eq!(spans.0[1]["name"], "run cv");
    assert_eq!(spans.0[1]["parent_span_id"], spans.0[0]["span_id"]);
    assert_eq!(count(&spans, "count_vowels::is_vowel"), 13);
    spans.assert_nested();

    // Exit status and traps, as for core modules.
    server.upload_ok("exit", &fixture("exit3.component.wasm"));
    let response = server.run("name=exit", "");
    assert_eq!(response.status(), 422);
    assert_eq!(response.headers()["x-iota-exit-code"], "1");
    server.upload_ok("fib", &fixture("fib.component.wasm"));
    let (status, error) = error_of(server.run("name=fib", "not a number"));
    assert_eq!(status, 500);
    assert!(error.starts_with("guest trapped: "), "{error}");
}

#[test]
fn component_recursion_is_traced_call_by_call_under_the_callers_trace() {
    let server = Server::start(&data_dir("component-fib"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.component.wasm"));
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = server.run_with("name=fib", "12", &[("traceparent", caller)]);
    assert_eq!(response.status(), 200);
    let trace_id = trace_id_of(&response);
    assert_eq!(trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(response.text().unwrap(), "144\n");
    let spans = Spans::of(&server.trace(&trace_id));
    assert_eq!(spans.0[0]["parent_span_id"], "b7ad6b7169203331");
    assert_eq!(count(&spans, "fib::fib"), 465, "fib(12) makes 465 calls");
    spans.assert_nested();

    // Three core modules in two nested components, a call between them, a realloc the host
    // calls: ids unique across the component, 177 calls of `fib` for fib(10).
    server.upload_ok("multi", &fixture("multi_module.wasm"));
    let response = server.run("name=multi", "10");
    assert_eq!(response.status(), 200);
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "55\n");
    let spans = Spans::of(&server.trace(&trace_id));
    assert_eq!(spans.named("fib").len(), 177);
    assert_eq!(spans.named("run").len(), 1);
    spans.assert_nested();
}

#[test]
fn an_http_handler_gets_the_request_and_its_response_comes_back() {
    let server = Server::start(&data_dir("component-http"), &[], &[]);
    let info = server.upload_ok("web", &fixture("http_handler.wasm"));
    assert_eq!(info["kind"], "component");
    assert_eq!(info["entry"]["kind"], "http-handler");

    let client = crate::harness::client();
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client
        .get(format!("{}/web/fib/12", server.url))
        .header("traceparent", caller)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let trace_id = trace_id_of(&response);
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(response.text().unwrap(), "fib(12) = 144\n");
    let spans = Spans::of(&server.trace(&trace_id));
    let request = &spans.0[0];
    assert_eq!(request["name"], "GET /{name}/{*path}");
    assert_eq!(request["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(request["attributes"]["url.path"], "/web/fib/12");
    assert_eq!(request["attributes"]["http.response.status_code"], 200);
    assert_eq!(spans.0[1]["name"], "run web");
    assert_eq!(count(&spans, "http_handler::fib"), 465);
    spans.assert_nested();

    // Method, path, query, headers and body reach the handler.
    let response = client
        .put(format!("{}/web/echo?x=1", server.url))
        .header("x-test", "yes")
        .body("four")
        .send()
        .unwrap();
    assert_eq!(
        response.text().unwrap(),
        "PUT /echo?x=1\nx-test: yes\nbody: 4 bytes\n"
    );
    let response = server.post_raw("/web/vowels", b"Hello, world!".to_vec(), "text/plain");
    assert_eq!(response.text().unwrap(), "3\n");
    // Its own statuses, and `POST /run` hands it `POST /`.
    assert_eq!(server.get("/web/nowhere").status(), 404);
    let response = server.run("name=web", "");
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().unwrap(), "no route /\n");

    // A trap: 500 with the trace, as for a command.
    let (status, error) = error_of(server.get("/web/trap"));
    assert_eq!(status, 500);
    assert!(error.starts_with("guest trapped: "), "{error}");

    // What is not a handler.
    server.upload_ok("cv", &fixture("count_vowels.component.wasm"));
    let (status, error) = error_of(server.get("/cv/x"));
    assert_eq!(status, 400);
    assert!(error.contains("not an HTTP handler"), "{error}");
    assert_eq!(error_of(server.get("/nobody/x")).0, 404);
    let (status, error) = error_of(server.run("name=web&fn=handle", ""));
    assert_eq!(status, 400);
    assert!(error.contains("HTTP handler"), "{error}");
}

/// A server answering every request with `hello from upstream`.
fn upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 19\r\nconnection: close\r\n\r\nhello from upstream",
            );
        }
    });
    address
}

#[test]
fn outgoing_requests_are_denied_unless_the_upload_allows_them() {
    let upstream = upstream();
    let server = Server::start(&data_dir("component-outgoing"), &[], &[]);
    let fetch = format!("/web/fetch?url=http://{upstream}/x");
    server.upload_ok("web", &fixture("http_handler.wasm"));
    let response = server.get(&fetch);
    assert_eq!(response.status(), 502, "the handler saw an error");
    assert_eq!(response.text().unwrap(), "ErrorCode::HttpRequestDenied\n");

    let info = server.upload_ok_with(
        "web",
        &fixture("http_handler.wasm"),
        &format!("&outgoing_http={upstream}"),
    );
    assert_eq!(info["outgoing_http"][0], upstream.as_str());
    let response = server.get(&fetch);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "200\nhello from upstream");
    // Only there.
    let elsewhere = server.get("/web/fetch?url=http://127.0.0.1:9/x");
    assert_eq!(elsewhere.text().unwrap(), "ErrorCode::HttpRequestDenied\n");

    let (status, error) =
        error_of(server.upload("bad", &fixture("http_handler.wasm"), "&outgoing_http=a/b"));
    assert_eq!(status, 400);
    assert!(error.contains("outgoing_http"), "{error}");
    let (status, error) =
        error_of(server.upload("core", &fixture("fib.wasm"), "&outgoing_http=example.com"));
    assert_eq!(status, 400);
    assert!(error.contains("for components"), "{error}");
}

#[test]
fn component_runs_keep_the_limits() {
    // A 1 ms deadline: fib(30) is 1.6 million traced calls.
    let server = Server::start(
        &data_dir("component-limits"),
        &["--run-timeout-ms", "1", "--max-run-body", "16"],
        &[],
    );
    server.upload_ok("web", &fixture("http_handler.wasm"));
    server.upload_ok("fib", &fixture("fib.component.wasm"));
    let (status, error) = error_of(server.get("/web/fib/30"));
    assert_eq!((status, error.as_str()), (504, "guest timed out"));
    let (status, _) = error_of(server.run("name=fib", "30"));
    assert_eq!(status, 504);
    // Bodies over the limit: 413 for a handler's request as for a command's stdin.
    let big = vec![b'a'; 4096];
    let (status, _) = error_of(server.post_raw("/web/vowels", big.clone(), "text/plain"));
    assert_eq!(status, 413);
    let (status, _) = server.post_refused("/run?name=fib", big);
    assert_eq!(status, 413);

    // The memory limit covers a component's memories: a memory whose minimum is over it is
    // refused at upload, one that grows past it traps.
    let small = Server::start(
        &data_dir("component-memory"),
        &["--memory-limit-mb", "2"],
        &[],
    );
    small.upload_ok("cv", &fixture("count_vowels.component.wasm"));
    let stdin = "a".repeat(4 << 20);
    let (status, error) = error_of(small.run("name=cv", &stdin));
    assert_eq!(status, 500);
    assert!(error.contains("memory limit exceeded"), "{error}");
    let tiny = Server::start(
        &data_dir("component-memory-tiny"),
        &["--memory-limit-mb", "1"],
        &[],
    );
    let (status, error) = error_of(tiny.upload("cv", &fixture("count_vowels.component.wasm"), ""));
    assert_eq!(status, 400);
    assert!(error.contains("limits"), "{error}");
}

#[test]
fn components_uninstrumented_preinstrumented_and_after_a_restart() {
    let dir = data_dir("component-kinds");
    let server = Server::start(&dir, &[], &[]);
    let info = server.upload_ok_with("plain", &fixture("fib.component.wasm"), "&instrument=false");
    assert_eq!(info["tracing"], "none");
    let response = server.run("name=plain", "5");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "5\n");
    assert_eq!(Spans::of(&server.trace(&trace_id)).0.len(), 2);

    let traced = iota_instrument::instrument(
        &fixture("fib.component.wasm"),
        &iota_instrument::Options::new(),
    )
    .unwrap();
    let info = server.upload_ok("pre", &traced.wasm);
    assert_eq!(info["tracing"], "preinstrumented");
    assert_eq!(info["runnable_sha256"], info["sha256"]);

    let (status, error) = error_of(server.upload("bad", b"\0asm\x0d\0\x01\0\x07", ""));
    assert_eq!(status, 400);
    assert!(error.contains("invalid WebAssembly"), "{error}");
    let (status, error) = error_of(server.upload(
        "lib",
        &wat::parse_str("(component (core module (func)))").unwrap(),
        "",
    ));
    assert_eq!(status, 400);
    assert!(error.contains("wasi:cli/run"), "{error}");

    // Stored components load again after a restart, without recompiling.
    drop(server);
    let server = Server::start(&dir, &[], &[]);
    let response = server.run("name=pre", "10");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "55\n");
    assert_eq!(count(&Spans::of(&server.trace(&trace_id)), "fib::fib"), 177);
}
