//! OTLP export to a real receiver: the `rotel` collector agent (PyPI) on loopback, over
//! HTTP/protobuf and gRPC. `scripts/install-rotel.sh` installs it; the tests run when
//! `ROTEL_AGENT` names its binary (`scripts/test` does both).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{Server, data_dir, fixture, trace_id_of};

/// A rotel agent printing every span and metric it receives.
pub struct Receiver {
    child: Child,
    pub grpc: String,
    pub http: String,
    pub output: Arc<Mutex<String>>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Receiver {
    pub fn start() -> Receiver {
        let agent = std::env::var("ROTEL_AGENT").expect("ROTEL_AGENT names the rotel-agent binary");
        let (grpc, http) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut child = Command::new(agent)
            .args([
                "start",
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log",
                "logs",
                "--debug-log-verbosity",
                "detailed",
            ])
            .args(["--otlp-grpc-endpoint", &grpc, "--otlp-http-endpoint", &http])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rotel-agent starts");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        let receiver = Receiver {
            child,
            grpc,
            http,
            output,
        };
        receiver.wait_for(|out| out.contains("Starting Rotel"), "rotel to start");
        receiver
    }

    /// A server exporting to this receiver over `protocol`, with extra environment.
    fn server(&self, protocol: &str, test: &str, env: &[(&str, &str)]) -> Server {
        let endpoint = match protocol {
            "grpc" => format!("http://{}", self.grpc),
            _ => format!("http://{}", self.http),
        };
        Server::start(
            &data_dir(&format!("{test}-{}", protocol.replace('/', "-"))),
            &["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol],
            env,
        )
    }

    pub fn wait_for(&self, done: impl Fn(&str) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if done(&self.output.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; rotel printed:\n{}",
            self.output.lock().unwrap()
        );
    }

    /// The spans of `trace_id`, once rotel has printed at least `expected` of them.
    pub fn wait_for_spans(&self, trace_id: &str, expected: usize, what: &str) -> Vec<ReceivedSpan> {
        self.wait_for(
            |out| {
                parse_spans(out)
                    .iter()
                    .filter(|s| s.trace_id == trace_id)
                    .count()
                    >= expected
            },
            what,
        );
        self.spans(trace_id)
    }

    /// The spans of `trace_id` that rotel printed.
    pub fn spans(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        parse_spans(&self.output.lock().unwrap())
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub parent_id: String,
    pub id: String,
    pub name: String,
    pub kind: String,
    pub start: u128,
    pub end: u128,
    pub status: String,
    pub attributes: HashMap<String, String>,
}

/// Parses rotel's detailed debug log: blocks starting `Span #N`.
pub fn parse_spans(output: &str) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    let mut current: Option<ReceivedSpan> = None;
    let mut in_attributes = false;
    for line in output.lines() {
        if line.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(ReceivedSpan::default());
            in_attributes = false;
            continue;
        }
        let Some(span) = current.as_mut() else {
            continue;
        };
        let trimmed = line.trim();
        if line.starts_with("ResourceSpans") || line.starts_with("ScopeSpans") {
            spans.extend(current.take());
            continue;
        }
        if let Some((key, value)) = trimmed.split_once(':') {
            let value = value.trim();
            match key.trim() {
                "Trace ID" => span.trace_id = value.into(),
                "Parent ID" => span.parent_id = value.into(),
                "ID" => span.id = value.into(),
                "Name" => span.name = value.into(),
                "Kind" => span.kind = value.into(),
                "Start time" => span.start = value.parse().unwrap_or(0),
                "End time" => span.end = value.parse().unwrap_or(0),
                "Status code" => span.status = value.into(),
                "Attributes" => in_attributes = true,
                "Events" => in_attributes = false,
                _ if in_attributes && trimmed.starts_with("->") => {
                    let (k, v) = trimmed
                        .trim_start_matches("->")
                        .split_once(": ")
                        .unwrap_or(("", ""));
                    span.attributes.insert(k.trim().to_string(), v.to_string());
                }
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

/// Data points rotel printed: (metric name, attributes joined, value).
fn metric_points(output: &str) -> Vec<(String, String, String)> {
    let mut points = Vec::new();
    let (mut metric, mut attributes) = (String::new(), String::new());
    for line in output.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("-> Name: ") {
            metric = name.to_string();
        } else if trimmed.starts_with("NumberDataPoints #") {
            attributes.clear();
        } else if let Some(attribute) = trimmed.strip_prefix("-> ") {
            attributes.push_str(attribute);
            attributes.push(';');
        } else if let Some(value) = trimmed.strip_prefix("Value: ") {
            points.push((metric.clone(), attributes.clone(), value.to_string()));
        }
    }
    points
}

/// Log records rotel printed: (trace id, span id, severity text, body).
fn log_records(output: &str) -> Vec<(String, String, String, String)> {
    let mut records = Vec::new();
    let mut current: Option<(String, String, String, String)> = None;
    for line in output.lines() {
        let trimmed = line.trim();
        if line.starts_with("LogRecord #") {
            records.extend(current.take());
            current = Some(Default::default());
            continue;
        }
        let Some(record) = current.as_mut() else {
            continue;
        };
        if let Some((key, value)) = trimmed.split_once(':') {
            let value = value.trim().to_string();
            match key.trim() {
                "Trace ID" => record.0 = value,
                "Span ID" => record.1 = value,
                "SeverityText" => record.2 = value,
                "Body" => record.3 = value,
                "Flags" => records.extend(current.take()),
                _ => {}
            }
        }
    }
    records.extend(current);
    records
}

fn exports_guest_telemetry(protocol: &str) {
    let receiver = Receiver::start();
    let server = receiver.server(
        protocol,
        "otlp-observe",
        &[("OTEL_METRIC_EXPORT_INTERVAL", "200")],
    );
    server.upload_ok("obs", &fixture("observe_api.wasm"));
    let response = server.run("name=obs", "");
    assert_eq!(response.status(), 200);
    let trace_id = trace_id_of(&response);
    let local = server.trace(&trace_id);
    let span_id = |name: &str| {
        local["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["span_id"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no span {name}"))
    };

    // Log records, each in its span.
    receiver.wait_for(
        |out| log_records(out).iter().filter(|r| r.0 == trace_id).count() == 2,
        "two log records",
    );
    let logs: Vec<_> = log_records(&receiver.output.lock().unwrap())
        .into_iter()
        .filter(|r| r.0 == trace_id)
        .map(|(_, span, severity, body)| (span, severity, body))
        .collect();
    assert_eq!(
        logs,
        [
            (span_id("db-query"), "WARN".into(), "Str(slow query)".into()),
            (span_id("request"), "INFO".into(), "Str(handled)".into()),
        ]
    );
    // The manual spans and the host call, with their attributes.
    let expected = local["spans"].as_array().unwrap().len();
    let spans = receiver.wait_for_spans(&trace_id, expected, "all spans");
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(request.attributes["user"], "Str(42)");
    let write = spans.iter().find(|s| s.name == "wasi:fd_write").unwrap();
    assert_eq!(write.attributes["iota.wasi.bytes"], "Int(5)");
    // The statsd counter, with its tag.
    receiver.wait_for(
        |out| {
            metric_points(out)
                .iter()
                .any(|(metric, attributes, value)| {
                    metric == "handled"
                        && attributes.contains("route: Str(/x)")
                        && attributes.contains("iota.module: Str(obs)")
                        && value == "1"
                })
        },
        "the guest's counter",
    );
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn guest_logs_metrics_and_host_spans_reach_a_real_collector_over_http() {
    exports_guest_telemetry("http/protobuf");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn guest_logs_metrics_and_host_spans_reach_a_real_collector_over_grpc() {
    exports_guest_telemetry("grpc");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn sampling_decisions_are_visible_at_the_collector() {
    let receiver = Receiver::start();
    let server = receiver.server(
        "http/protobuf",
        "otlp-sampling",
        &[("OTEL_METRIC_EXPORT_INTERVAL", "200")],
    );
    server.upload_ok("fib", &fixture("fib.wasm"));
    let run = |trace: &str, flags: &str| {
        let traceparent = format!("00-{trace}-00f067aa0ba902b7-{flags}");
        let response = server.run_with("name=fib", "10", &[("traceparent", &traceparent)]);
        assert_eq!(response.status(), 200);
    };
    let (sampled, unsampled, last) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
    );
    run(sampled, "01");
    run(unsampled, "00");
    run(last, "01");
    // Traces leave in order: once the last one is in, the unsampled one would be too.
    receiver.wait_for(|out| out.contains(last), "the last sampled trace");
    let out = receiver.output.lock().unwrap().clone();
    assert!(out.contains(sampled));
    assert!(
        !out.contains(unsampled),
        "the unsampled run exported no span"
    );
    assert!(
        out.contains("faas.name: Str(fib)"),
        "the function's resource"
    );
    drop(out);
    // Its calls still count: three runs of fib(10), 177 calls each.
    receiver.wait_for(
        |out| {
            metric_points(out)
                .iter()
                .any(|(metric, attributes, value)| {
                    metric == "iota.function.calls"
                        && attributes.contains("fib::fib")
                        && value == "531"
                })
        },
        "every run's calls counted",
    );
}

fn exports_function_metrics(protocol: &str) {
    let receiver = Receiver::start();
    let server = receiver.server(
        protocol,
        "otlp-metrics",
        &[("OTEL_METRIC_EXPORT_INTERVAL", "200")],
    );
    server.upload_ok("fib", &fixture("fib.wasm"));
    // A Rust panic traps. It runs first: traces reach the metrics in order, so once the last
    // run's calls are counted, every outcome is too.
    assert_eq!(server.run("name=fib", "x").status(), 500);
    for _ in 0..3 {
        assert_eq!(server.run("name=fib", "10").status(), 200);
    }
    // Cumulative sums: three runs of fib(10), 177 calls each, whatever the export batching.
    let fib_calls = |out: &str| {
        metric_points(out)
            .into_iter()
            .any(|(metric, attributes, value)| {
                metric == "iota.function.calls"
                    && attributes.contains("iota.module: Str(fib)")
                    && attributes.contains("fib::fib")
                    && value == "531"
            })
    };
    receiver.wait_for(fib_calls, "iota.function.calls of fib::fib = 3 x 177");
    let output = receiver.output.lock().unwrap().clone();
    let metrics = output.split_once("ResourceMetrics").map_or("", |(_, m)| m);
    let metrics = metrics.split("ResourceSpans").next().unwrap_or_default();
    assert!(
        metrics.contains("service.instance.id: Str("),
        "the server's instance on its metrics"
    );
    let points = metric_points(&receiver.output.lock().unwrap());
    for metric in [
        "iota.function.duration",
        "iota.function.self_time",
        "iota.function.max_duration",
    ] {
        let value: f64 = points
            .iter()
            .rfind(|(m, a, _)| m == metric && a.contains("fib::fib"))
            .unwrap_or_else(|| panic!("no {metric}"))
            .2
            .parse()
            .unwrap();
        assert!(value > 0.0 && value < 60.0, "{metric} = {value}");
    }
    let outcomes = |outcome: &str| {
        points.iter().any(|(m, a, _)| {
            m == "iota.runs" && a.contains(&format!("iota.run.outcome: Str({outcome})"))
        })
    };
    assert!(outcomes("ok") && outcomes("trap"), "runs by outcome");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn function_metrics_reach_a_real_collector_over_http() {
    exports_function_metrics("http/protobuf");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn function_metrics_reach_a_real_collector_over_grpc() {
    exports_function_metrics("grpc");
}

fn exports_nested_function_spans(protocol: &str) {
    let receiver = Receiver::start();
    let server = receiver.server(
        protocol,
        "otlp",
        &[
            ("OTEL_SERVICE_NAME", "iota-otlp-test"),
            ("IOTA_INSTANCE_ID", "iota-otlp-node"),
        ],
    );
    server.upload_ok("fib", &fixture("fib.wasm"));
    let response = server.run("name=fib", "10");
    assert_eq!(response.status(), 200);
    let trace_id = trace_id_of(&response);
    let expected = server.trace(&trace_id)["spans"].as_array().unwrap().len();

    let spans = receiver.wait_for_spans(&trace_id, expected, "all spans");
    assert_eq!(spans.len(), expected);
    assert!(
        receiver
            .output
            .lock()
            .unwrap()
            .contains("service.name: Str(iota-otlp-test)")
    );
    assert!(
        receiver
            .output
            .lock()
            .unwrap()
            .contains("service.instance.id: Str(iota-otlp-node)")
    );

    let by_id: HashMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let roots: Vec<_> = spans.iter().filter(|s| s.parent_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span");
    assert_eq!(roots[0].name, "POST /run");
    assert_eq!(roots[0].kind, "SPAN_KIND_SERVER");
    let run = spans
        .iter()
        .find(|s| s.name == "run fib")
        .expect("run span");
    assert_eq!(run.parent_id, roots[0].id);
    for span in &spans {
        assert!(span.start <= span.end, "{span:?}");
        if span.parent_id.is_empty() {
            continue;
        }
        let parent = by_id
            .get(span.parent_id.as_str())
            .unwrap_or_else(|| panic!("parent of {} missing", span.name));
        assert!(
            parent.start <= span.start && span.end <= parent.end,
            "{} outside {}",
            span.name,
            parent.name
        );
    }
    let fib: Vec<_> = spans
        .iter()
        .filter(|s| s.name.contains("fib::fib"))
        .collect();
    assert_eq!(fib.len(), 177, "fib(10) makes 177 calls");
    assert!(
        fib.iter()
            .all(|s| s.attributes["code.function.name"].contains("fib::fib"))
    );
    assert!(
        fib.iter()
            .all(|s| s.attributes["wasm.function.index"].starts_with("Int("))
    );
    assert!(
        fib.iter()
            .any(|s| by_id[s.parent_id.as_str()].name.contains("fib::fib")),
        "recursion nests"
    );

    // Shutdown flushes: a run just before SIGTERM still reaches the collector.
    let response = server.run("name=fib", "3");
    let last = trace_id_of(&response);
    server.stop();
    receiver.wait_for(|out| out.contains(&last), "the last trace after shutdown");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn otlp_http_export_reaches_a_real_collector() {
    exports_nested_function_spans("http/protobuf");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn otlp_grpc_export_reaches_a_real_collector() {
    exports_nested_function_spans("grpc");
}

#[test]
fn collector_down_never_fails_a_run() {
    let port = free_port(); // nothing listens here
    let server = Server::start(
        &data_dir("otlp-down"),
        &["--otlp-endpoint", &format!("http://127.0.0.1:{port}")],
        &[],
    );
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    for _ in 0..5 {
        let response = server.run("name=count_vowels", "Hello, world!");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().unwrap(), "3\n");
    }
    let metrics = server.get("/metrics").text().unwrap();
    assert!(metrics.contains("iota_runs_total 5"), "{metrics}");
    // The failed exports are counted, off the request path.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = server.get("/metrics").text().unwrap();
        let failed: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("iota_otlp_failed_spans_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if failed > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed exports never counted: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hanging_collector_never_slows_a_run_or_blocks_shutdown() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.extend(stream.ok());
        }
    });
    let server = Server::start(
        &data_dir("otlp-hanging"),
        &["--otlp-endpoint", &format!("http://127.0.0.1:{port}")],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")],
    );
    server.upload_ok("count_vowels", &fixture("count_vowels.wasm"));
    // Enough spans for seven export calls: without a shutdown deadline, 14 s of timeouts.
    let started = Instant::now();
    for _ in 0..300 {
        let response = server.run("name=count_vowels", "Hello, world!");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().unwrap(), "3\n");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "300 runs took {elapsed:?}"
    );
    assert_eq!(server.get("/healthz").status(), 200);
    assert_eq!(server.get("/modules/count_vowels").status(), 200);
    // Shutdown gives up on the collector: a 5 s grace period, plus the export calls already
    // under way (2 s each here).
    let stopping = Instant::now();
    let status = server.stop_within(Duration::from_secs(20));
    let stopped = stopping.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit after {stopped:?}: {status:?}"
    );
    assert!(
        stopped < Duration::from_secs(12),
        "stopping took {stopped:?}"
    );
}
