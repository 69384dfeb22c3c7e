//! Starting `iota serve` on a free port and talking to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::blocking::{Client, Response, multipart};

/// An HTTP client builder for the tests. The server's TLS stack (rustls, with the provider
/// chosen at run time) is linked into the tests too, so its provider is installed first.
pub fn client_builder() -> reqwest::blocking::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
}

/// A client with default settings.
pub fn client() -> Client {
    client_builder().build().unwrap()
}

/// A running server, stopped (SIGTERM, then kill) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    client: Client,
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/wasm")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh, empty data directory for one test.
pub fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iota-server-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    /// Starts a server on `data_dir` with extra flags and environment.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_iota"));
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("iota starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        let client = client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Server { child, url, client }
    }

    pub fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap()
    }

    pub fn delete(&self, path: &str) -> Response {
        self.client
            .delete(format!("{}{path}", self.url))
            .send()
            .unwrap()
    }

    /// Uploads `wasm` as multipart field `wasm`; `query` is appended to `name=...`.
    pub fn upload(&self, name: &str, wasm: &[u8], query: &str) -> Response {
        let form = multipart::Form::new().part(
            "wasm",
            multipart::Part::bytes(wasm.to_vec()).file_name("module.wasm"),
        );
        self.client
            .post(format!("{}/upload?name={name}{query}", self.url))
            .multipart(form)
            .send()
            .unwrap()
    }

    pub fn upload_ok(&self, name: &str, wasm: &[u8]) -> serde_json::Value {
        self.upload_ok_with(name, wasm, "")
    }

    /// Uploads with `query` appended to `name=...` and expects `201`.
    pub fn upload_ok_with(&self, name: &str, wasm: &[u8], query: &str) -> serde_json::Value {
        let response = self.upload(name, wasm, query);
        let status = response.status();
        let body = response.text().unwrap();
        assert_eq!(status, 201, "upload {name}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn run(&self, query: &str, stdin: &str) -> Response {
        self.run_with(query, stdin, &[])
    }

    pub fn run_with(&self, query: &str, stdin: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = self
            .client
            .post(format!("{}/run?{query}", self.url))
            .body(stdin.to_string());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().unwrap()
    }

    pub fn post_raw(&self, path: &str, body: Vec<u8>, content_type: &str) -> Response {
        self.client
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap()
    }

    /// The trace `id` from `GET /traces/{id}`.
    pub fn trace(&self, id: &str) -> serde_json::Value {
        let response = self.get(&format!("/traces/{id}"));
        assert_eq!(response.status(), 200);
        response.json().unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server outright (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops gracefully (SIGTERM) and waits.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Sends SIGTERM and waits up to `limit` for the server to exit by itself; its exit status,
    /// or `None` if it had to be killed.
    pub fn stop_within(mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl Server {
    /// Sends a POST whose body the server may refuse part way (too large): the body is written
    /// on another thread while the response is read, as a client that watches for an early
    /// answer does. Returns the status and the JSON error.
    pub fn post_refused(&self, path: &str, body: Vec<u8>) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&body); // may fail once the server has answered
        });
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let error = serde_json::from_str::<serde_json::Value>(json)
            .map(|v| v["error"].as_str().unwrap_or_default().to_string());
        (status, error.unwrap_or_else(|_| json.to_string()))
    }
}

/// The `x-iota-trace-id` of a run's response.
pub fn trace_id_of(response: &Response) -> String {
    response.headers()["x-iota-trace-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// The JSON error body of a failed request, with its status.
pub fn error_of(response: Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().expect("JSON error body");
    (
        status,
        body["error"].as_str().expect("`error` field").to_string(),
    )
}

/// A checked view of a trace's spans.
pub struct Spans(pub Vec<serde_json::Value>);

impl Spans {
    pub fn of(trace: &serde_json::Value) -> Spans {
        Spans(trace["spans"].as_array().unwrap().clone())
    }

    pub fn named(&self, name: &str) -> Vec<&serde_json::Value> {
        self.0.iter().filter(|s| s["name"] == name).collect()
    }

    /// Every parent exists, and every child lies within its parent's time.
    pub fn assert_nested(&self) {
        let by_id: std::collections::HashMap<&str, &serde_json::Value> = self
            .0
            .iter()
            .map(|s| (s["span_id"].as_str().unwrap(), s))
            .collect();
        for span in &self.0[1..] {
            let parent_id = span["parent_span_id"]
                .as_str()
                .expect("non-root spans have parents");
            let parent = by_id
                .get(parent_id)
                .unwrap_or_else(|| panic!("missing parent of {span}"));
            let (start, end) = bounds(span);
            let (pstart, pend) = bounds(parent);
            assert!(
                pstart <= start && end <= pend,
                "{} not within {}",
                span["name"],
                parent["name"]
            );
        }
    }
}

fn bounds(span: &serde_json::Value) -> (u128, u128) {
    let start = u128::from(span["start_unix_nanos"].as_u64().unwrap());
    let duration = span["duration_ns"].as_u64().unwrap() as u128;
    (start, start + duration)
}

impl Server {
    /// The value of the Prometheus metric `name` (a counter or gauge without labels).
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").text().unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the metric `name` reaches `value` (a state the server is known to reach).
    pub fn wait_for_metric(&self, name: &str, value: u64) {
        wait_until(&format!("{name} == {value}"), || self.metric(name) == value);
    }

    /// Opens a raw connection and sends the head of `POST {path}` declaring `length` body
    /// bytes, and `body` (possibly fewer bytes than declared: the rest can follow). The
    /// connection closes after the answer.
    pub fn post_partial(&self, path: &str, length: usize, body: &[u8]) -> RawRequest {
        use std::io::Write;
        let addr = self.url.trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        stream.write_all(body).unwrap();
        RawRequest { stream }
    }

    /// The processes the server started whose command line contains `needle`.
    pub fn children_running(&self, needle: &str) -> Vec<u32> {
        let parent = self.pid();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after its `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
        found
    }
}

/// A request on a raw connection, answered when its body is complete (or the run ends).
pub struct RawRequest {
    stream: std::net::TcpStream,
}

impl RawRequest {
    /// Sends more of the body.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads the whole answer: status and body.
    pub fn response(mut self) -> (u16, String) {
        use std::io::Read;
        let mut response = Vec::new();
        self.stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }
}

/// Polls `condition` until it holds; fails after a minute (the condition names a state the
/// server reaches by itself, so this only bounds a broken server).
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (`STOP`, `CONT`, ...) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
