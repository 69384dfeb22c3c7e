//! Every bad input gets a clear error and the right status; the server keeps serving.

use crate::harness::{Server, Spans, data_dir, error_of, fixture, trace_id_of};

#[test]
fn bad_requests_get_specific_errors() {
    let server = Server::start(&data_dir("errors"), &["--max-upload", "200000"], &[]);
    let wasm = fixture("count_vowels.wasm");

    let (status, error) = error_of(server.run("name=missing", ""));
    assert_eq!((status, error.as_str()), (404, "no module named `missing`"));

    for bad in ["..%2Fx", "", "a%20b", "na%C3%AFve", &"x".repeat(65)] {
        let (status, error) = error_of(server.upload(bad, &wasm, ""));
        assert_eq!(status, 400, "{bad}");
        assert!(error.starts_with("invalid module name"), "{bad}: {error}");
    }
    let (status, error) = error_of(server.post_raw("/upload", wasm.clone(), "application/wasm"));
    assert_eq!(
        (status, error.as_str()),
        (400, "missing query parameter `name`")
    );

    let (status, error) = error_of(server.upload("junk", b"\0asm\x01\0\0\0\x05\x03", ""));
    assert_eq!(status, 400);
    assert!(
        error.starts_with("invalid WebAssembly:") && error.contains("at offset 0x"),
        "{error}"
    );

    let (status, error) = server.post_refused("/upload?name=big", vec![0u8; 300_000]);
    assert_eq!(status, 413, "{error}");
    assert!(error.contains("larger than 200000 bytes"), "{error}");

    let (status, error) =
        error_of(server.post_raw("/upload?name=x", Vec::new(), "application/wasm"));
    assert_eq!(status, 400);
    assert!(error.starts_with("empty upload"), "{error}");

    let form_without_wasm =
        "--b\r\ncontent-disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n";
    let (status, error) = error_of(server.post_raw(
        "/upload?name=x",
        form_without_wasm.as_bytes().to_vec(),
        "multipart/form-data; boundary=b",
    ));
    assert_eq!(
        (status, error.as_str()),
        (400, "multipart body has no field `wasm`")
    );

    let truncated = "--b\r\ncontent-disposition: form-data; name=\"wasm\"\r\n\r\n\0asm";
    let (status, error) = error_of(server.post_raw(
        "/upload?name=x",
        truncated.as_bytes().to_vec(),
        "multipart/form-data; boundary=b",
    ));
    assert_eq!(status, 400);
    assert!(error.starts_with("malformed multipart body"), "{error}");

    let (status, error) = error_of(server.upload("x", b"\0asm", "&instrument=maybe"));
    assert_eq!(
        (status, error.as_str()),
        (
            400,
            "invalid `instrument=maybe`: expected one of true, false"
        )
    );

    let (status, error) = error_of(server.get("/traces/xyz"));
    assert_eq!(status, 400, "{error}");
    let (status, _) = error_of(server.get("/traces/4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(status, 404);

    // Nothing above disturbed the server.
    assert_eq!(server.get("/healthz").text().unwrap(), "ok\n");
    assert_eq!(
        server.get("/modules").json::<serde_json::Value>().unwrap()["modules"],
        serde_json::json!([])
    );
}

#[test]
fn unknown_imports_are_named_or_linked_as_traps() {
    let server = Server::start(&data_dir("imports"), &[], &[]);
    let wasm = wat::parse_str(
        r#"(module
            (import "host" "never_called" (func $never))
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 0))))"#,
    )
    .unwrap();
    let (status, error) = error_of(server.upload("imp", &wasm, ""));
    assert_eq!(status, 400);
    assert!(error.contains("host::never_called"), "{error}");
    assert!(error.contains("unknown_imports=trap"), "{error}");

    let response = server.upload("imp", &wasm, "&unknown_imports=trap");
    assert_eq!(response.status(), 201);
    assert_eq!(server.run("name=imp", "").status(), 200);
}

#[test]
fn uninstrumented_and_preinstrumented_modules_run() {
    let server = Server::start(&data_dir("modes"), &[], &[]);
    let wasm = fixture("count_vowels.wasm");
    let info: serde_json::Value = server
        .upload("plain", &wasm, "&instrument=false")
        .json()
        .unwrap();
    assert_eq!(info["tracing"], "none");
    let response = server.run("name=plain", "aei");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "3\n");
    let spans = Spans::of(&server.trace(&trace_id));
    assert!(spans.0.len() > 2);
    for span in &spans.0[2..] {
        let name = span["name"].as_str().unwrap();
        assert!(name.starts_with("wasi:"), "only host calls: {name}");
        assert_eq!(span["parent_span_id"], spans.0[1]["span_id"]);
    }
    server.upload_ok_with("bare", &wasm, "&instrument=false&host_spans=false");
    let response = server.run("name=bare", "aei");
    let trace_id = trace_id_of(&response);
    assert_eq!(response.text().unwrap(), "3\n");
    assert_eq!(
        server.trace(&trace_id)["spans"].as_array().unwrap().len(),
        2,
        "request and run spans only"
    );

    let pre = iota_instrument::instrument(&wasm, &iota_instrument::Options::new())
        .unwrap()
        .wasm;
    let info = server.upload_ok("pre", &pre);
    assert_eq!(info["tracing"], "preinstrumented");
    let response = server.run("name=pre", "aei");
    let trace_id = trace_id_of(&response);
    assert!(
        server.trace(&trace_id)["spans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "_start")
    );
}
