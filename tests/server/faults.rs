//! Faults: every kind of trap, and a server killed during an upload. After each, the server
//! serves and stored modules are intact.

use std::io::Write;
use std::time::Duration;

use crate::harness::{Server, data_dir, error_of, fixture};

fn assert_healthy_with(server: &Server, module: &str) {
    assert_eq!(server.get("/healthz").text().unwrap(), "ok\n");
    assert_eq!(
        server
            .run(&format!("name={module}"), "Hello, world!")
            .text()
            .unwrap(),
        "3\n"
    );
}

#[test]
fn every_kind_of_trap_is_a_clear_500() {
    let server = Server::start(&data_dir("traps"), &[], &[]);
    server.upload_ok("keep", &fixture("count_vowels.wasm"));
    let cases = [
        (
            "unreachable",
            "(func (export \"_start\") unreachable)",
            "wasm `unreachable` instruction executed",
        ),
        (
            "oob",
            "(memory 1) (func (export \"_start\") (drop (i32.load (i32.const 70000))))",
            "out of bounds memory access",
        ),
        (
            "div",
            "(func (export \"_start\") (drop (i32.div_s (i32.const 1) (i32.const 0))))",
            "integer divide by zero",
        ),
        (
            "overflow",
            "(func $f (export \"_start\") (call $f))",
            "call stack exhausted",
        ),
    ];
    for (name, body, message) in cases {
        let wasm = wat::parse_str(format!("(module {body})")).unwrap();
        server.upload_ok(name, &wasm);
        let (status, error) = error_of(server.run(&format!("name={name}"), ""));
        assert_eq!(status, 500, "{name}");
        assert_eq!(error, format!("guest trapped: {message}"), "{name}");
        assert_healthy_with(&server, "keep");
    }
}

#[test]
fn killed_during_an_upload_keeps_the_old_version() {
    let dir = data_dir("sigkill");
    let mut server = Server::start(&dir, &[], &[]);
    server.upload_ok("m", &fixture("count_vowels.wasm"));
    let old = server
        .get("/modules/m")
        .json::<serde_json::Value>()
        .unwrap();

    // An upload of a new version is on the wire, half sent, when the server is killed.
    let addr = server.url.trim_start_matches("http://").to_string();
    let new = fixture("fib.wasm");
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(stream, "POST /upload?name=m HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\n\r\n", new.len()).unwrap();
    stream.write_all(&new[..new.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.kill();
    // Leftovers of writes cut short, as a crash mid-write would leave them.
    std::fs::write(
        dir.join("modules/m.tmp123"),
        b"{\"name\": \"m\", \"sha256\": \"trunc",
    )
    .unwrap();
    std::fs::write(dir.join("blobs/deadbeef.tmp9"), &new[..100]).unwrap();

    let server = Server::start(&dir, &[], &[]);
    assert_eq!(
        server
            .get("/modules/m")
            .json::<serde_json::Value>()
            .unwrap(),
        old
    );
    assert_healthy_with(&server, "m");
    let modules = server.get("/modules").json::<serde_json::Value>().unwrap();
    assert_eq!(
        modules["modules"].as_array().unwrap().len(),
        1,
        "no partial module is served"
    );
    assert!(!dir.join("modules/m.tmp123").exists(), "leftovers removed");
    assert!(
        !dir.join("blobs/deadbeef.tmp9").exists(),
        "leftovers removed"
    );
}
