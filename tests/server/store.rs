//! The registry: persistence across restarts, atomic replacement, deletion.

use crate::harness::{Server, data_dir, error_of, fixture};

fn compiled_artifacts(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("compiled"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn modules_survive_a_restart_without_recompiling() {
    let dir = data_dir("restart");
    let server = Server::start(&dir, &[], &[]);
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    server.upload_ok("fib", &fixture("fib.wasm"));
    let before = compiled_artifacts(&dir);
    assert_eq!(before.len(), 2);
    server.stop();

    let server = Server::start(&dir, &[], &[]);
    let modules = server.get("/modules").json::<serde_json::Value>().unwrap();
    let names: Vec<_> = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["count_vowels", "fib"]);
    assert_eq!(
        server
            .run("name=count_vowels", "Hello, world!")
            .text()
            .unwrap(),
        "3\n"
    );
    assert_eq!(server.run("name=fib", "10").text().unwrap(), "55\n");
    assert_eq!(
        compiled_artifacts(&dir),
        before,
        "artifacts reused, not rewritten"
    );
    let info = server
        .get("/modules/fib")
        .json::<serde_json::Value>()
        .unwrap();
    assert_eq!(info["name"], "fib");
}

#[test]
fn reupload_replaces_and_failed_upload_keeps_the_old_version() {
    let server = Server::start(&data_dir("replace"), &[], &[]);
    server.upload_ok("m", &fixture("count_vowels.wasm"));
    assert_eq!(server.run("name=m", "aa").text().unwrap(), "2\n");
    let (status, _) = error_of(server.upload("m", b"not wasm", ""));
    assert_eq!(status, 400);
    assert_eq!(
        server.run("name=m", "aa").text().unwrap(),
        "2\n",
        "old version still served"
    );
    server.upload_ok("m", &fixture("fib.wasm"));
    assert_eq!(server.run("name=m", "10").text().unwrap(), "55\n");
}

#[test]
fn delete_removes_the_module_for_good() {
    let dir = data_dir("delete");
    let server = Server::start(&dir, &[], &[]);
    server.upload_ok("m", &fixture("count_vowels.wasm"));
    assert_eq!(server.delete("/modules/m").status(), 204);
    assert_eq!(error_of(server.delete("/modules/m")).0, 404);
    assert_eq!(error_of(server.run("name=m", "")).0, 404);
    server.stop();
    let server = Server::start(&dir, &[], &[]);
    assert_eq!(error_of(server.get("/modules/m")).0, 404);
}
