//! Profile formats of a run and of a module, each read back by a reader of its own and
//! compared with the run's exact per-function totals.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use prost::Message;
use serde::Deserialize;

use crate::harness::{Server, data_dir, error_of, fixture, trace_id_of};

/// The exact per-function totals of a trace: name → (calls, total, self).
/// Only timed functions: a counted function's calls are on no frame and its time is its callers'.
fn exact(trace: &serde_json::Value) -> BTreeMap<String, (u64, u64, u64)> {
    trace["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["timed"] == true)
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                (
                    f["calls"].as_u64().unwrap(),
                    f["total_ns"].as_u64().unwrap(),
                    f["self_ns"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Calls of the functions the module counted rather than timed.
fn counted_calls(trace: &serde_json::Value) -> u64 {
    trace["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["timed"] == false)
        .map(|f| f["calls"].as_u64().unwrap())
        .sum()
}

/// The run span's duration: the root of every profile.
fn run_ns(trace: &serde_json::Value) -> u64 {
    trace["spans"][1]["duration_ns"].as_u64().unwrap()
}

fn fetch(server: &Server, path: &str) -> (String, Vec<u8>) {
    let response = server.get(path);
    assert_eq!(response.status(), 200, "{path}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.bytes().unwrap().to_vec())
}

/// Folded stacks, read as Brendan Gregg's `stackcollapse` output: `a;b;c COUNT` per line.
fn read_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').expect("`STACK COUNT`");
            (
                stack.split(';').map(str::to_string).collect(),
                count.parse().expect("a whole count"),
            )
        })
        .collect()
}

/// The speedscope file format (https://www.speedscope.app/file-format-schema.json), the parts
/// a sampled profile uses; unknown fields are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SpeedscopeFile {
    #[serde(rename = "$schema")]
    schema: String,
    shared: SpeedscopeShared,
    profiles: Vec<SampledProfile>,
    name: Option<String>,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: Option<usize>,
    exporter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeedscopeShared {
    frames: Vec<SpeedscopeFrame>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SpeedscopeFrame {
    name: String,
    file: Option<String>,
    line: Option<u64>,
    col: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SampledProfile {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    unit: String,
    #[serde(rename = "startValue")]
    start_value: u64,
    #[serde(rename = "endValue")]
    end_value: u64,
    samples: Vec<Vec<usize>>,
    weights: Vec<u64>,
}

/// profile.proto (github.com/google/pprof), the fields read here, declared from the spec
/// independently of the server's generated types.
mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
    }
}

/// Samples: a stack of names (root first) and the values by sample type name.
type Samples = Vec<(Vec<String>, HashMap<String, i64>)>;

/// A pprof profile's samples as (stack of names, root first; values by sample type name).
fn read_pprof(gzipped: &[u8]) -> (Samples, pprof::Profile) {
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "gzip magic");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut bytes)
        .unwrap();
    let profile = pprof::Profile::decode(&bytes[..]).unwrap();
    let strings = &profile.string_table;
    assert_eq!(strings[0], "", "string_table[0] must be empty");
    let functions: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, strings[f.name as usize].as_str()))
        .collect();
    let locations: HashMap<u64, &str> = profile
        .location
        .iter()
        .map(|l| (l.id, functions[&l.line[0].function_id]))
        .collect();
    let types: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| strings[t.r#type as usize].as_str())
        .collect();
    let samples = profile
        .sample
        .iter()
        .map(|s| {
            let stack = s
                .location_id
                .iter()
                .rev()
                .map(|id| locations[id].to_string())
                .collect();
            let values = types
                .iter()
                .zip(&s.value)
                .map(|(t, v)| (t.to_string(), *v))
                .collect();
            (stack, values)
        })
        .collect();
    (samples, profile)
}

/// Sums `weight` by the innermost frame of each stack.
fn by_leaf<'a>(stacks: impl IntoIterator<Item = (&'a [String], u64)>) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for (stack, weight) in stacks {
        *sums.entry(stack.last().unwrap().clone()).or_default() += weight;
    }
    sums
}

/// Every format of a fib(12) run holds the exact totals: 465 calls of `fib::fib`, each
/// function's self time, and the run's duration as the sum of all self times.
#[test]
fn each_format_reads_back_to_the_exact_totals() {
    let server = Server::start(&data_dir("profile-formats"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    let response = server.run("name=fib", "12");
    assert_eq!(response.status(), 200);
    let id = trace_id_of(&response);
    let trace = server.trace(&id);
    let exact = exact(&trace);
    assert_eq!(exact["fib::fib"].0, 465);
    let run = run_ns(&trace);
    let exact_self: BTreeMap<String, u64> =
        exact.iter().map(|(name, t)| (name.clone(), t.2)).collect();

    // Folded stacks: the root is the module; self times by leaf are the exact self times.
    let (content_type, folded) = fetch(&server, &format!("/traces/{id}?format=folded"));
    assert!(content_type.starts_with("text/plain"));
    let folded = read_folded(std::str::from_utf8(&folded).unwrap());
    assert!(folded.iter().all(|(stack, _)| stack[0] == "fib"));
    assert_eq!(folded.iter().map(|(_, n)| n).sum::<u64>(), run);
    let mut leaves = by_leaf(folded.iter().map(|(s, n)| (&s[..], *n)));
    let outside = leaves.remove("fib").unwrap_or(0);
    assert_eq!(leaves, exact_self);
    assert_eq!(outside + exact_self.values().sum::<u64>(), run);

    // speedscope: typed by its schema, sampled, weights in nanoseconds.
    let (content_type, body) = fetch(&server, &format!("/traces/{id}?format=speedscope"));
    assert_eq!(content_type, "application/json");
    let file: SpeedscopeFile = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        file.schema,
        "https://www.speedscope.app/file-format-schema.json"
    );
    let profile = &file.profiles[0];
    assert_eq!(
        (profile.kind.as_str(), profile.unit.as_str()),
        ("sampled", "nanoseconds")
    );
    assert_eq!(profile.samples.len(), profile.weights.len());
    assert_eq!(profile.end_value - profile.start_value, run);
    let names = |sample: &Vec<usize>| -> Vec<String> {
        sample
            .iter()
            .map(|&i| file.shared.frames[i].name.clone())
            .collect()
    };
    let stacks: Vec<(Vec<String>, u64)> = profile
        .samples
        .iter()
        .map(names)
        .zip(profile.weights.iter().copied())
        .collect();
    let mut leaves = by_leaf(stacks.iter().map(|(s, n)| (&s[..], *n)));
    leaves.remove("fib");
    assert_eq!(leaves, exact_self);

    // pprof: gzipped profile.proto; calls and self time by leaf are exact, cum of fib::fib's
    // outermost call is its total.
    let (content_type, body) = fetch(&server, &format!("/traces/{id}?format=pprof"));
    assert_eq!(content_type, "application/octet-stream");
    let (samples, decoded) = read_pprof(&body);
    assert_eq!(
        decoded.string_table[decoded.default_sample_type as usize],
        "wall"
    );
    assert_eq!(decoded.duration_nanos as u64, run);
    let wall: Vec<(Vec<String>, u64)> = samples
        .iter()
        .map(|(s, v)| (s.clone(), v["wall"] as u64))
        .collect();
    let calls: Vec<(Vec<String>, u64)> = samples
        .iter()
        .map(|(s, v)| (s.clone(), v["calls"] as u64))
        .collect();
    let mut wall_by_leaf = by_leaf(wall.iter().map(|(s, n)| (&s[..], *n)));
    wall_by_leaf.remove("fib");
    assert_eq!(wall_by_leaf, exact_self);
    let mut calls_by_leaf = by_leaf(calls.iter().map(|(s, n)| (&s[..], *n)));
    calls_by_leaf.remove("fib");
    let exact_calls: BTreeMap<String, u64> =
        exact.iter().map(|(name, t)| (name.clone(), t.0)).collect();
    assert_eq!(calls_by_leaf, exact_calls);
    let outermost_fib: u64 = wall
        .iter()
        .filter(|(s, _)| s.iter().filter(|f| *f == "fib::fib").count() >= 1)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        outermost_fib,
        exact["fib::fib"].1 - nested_fib_total(&trace)
    );

    // SVG: inferno's flame graph, its root frame the whole run.
    let (content_type, body) = fetch(&server, &format!("/traces/{id}?format=svg"));
    assert_eq!(content_type, "image/svg+xml");
    let svg = String::from_utf8(body).unwrap();
    assert!(svg.starts_with("<?xml"));
    let all = format!("<title>all ({} ns, 100%)</title>", thousands(run));
    assert!(svg.contains(&all), "no {all} in the SVG");
    assert!(svg.contains("fib::fib ("));
}

/// The total time of `fib::fib` calls made by `fib::fib` (recursion counts them twice in the
/// per-function total; a stack profile's cum counts each stack once).
fn nested_fib_total(trace: &serde_json::Value) -> u64 {
    let spans = crate::harness::Spans::of(trace);
    let by_id: HashMap<&str, &serde_json::Value> = spans
        .0
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s))
        .collect();
    spans
        .named("fib::fib")
        .iter()
        .filter(|s| {
            let parent = s["parent_span_id"].as_str().unwrap();
            by_id[parent]["name"] == "fib::fib"
        })
        .map(|s| s["duration_ns"].as_u64().unwrap())
        .sum()
}

/// `1234567` as `1,234,567`, as inferno writes counts.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A run with more calls than spans: the profile still counts every call on its stack, where
/// the spans keep only the longest 10,000.
#[test]
fn profiles_count_calls_past_the_span_cap() {
    let server = Server::start(&data_dir("profile-cap"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    let response = server.run("name=fib", "20");
    let id = trace_id_of(&response);
    let trace = server.trace(&id);
    assert_eq!(trace["spans"].as_array().unwrap().len(), 10_002);
    let fib_calls = exact(&trace)["fib::fib"].0;
    assert_eq!(fib_calls, 21_891);
    let stacks: serde_json::Value = server
        .get(&format!("/traces/{id}?format=stacks"))
        .json()
        .unwrap();
    let frames = stacks["frames"].as_array().unwrap();
    let on_frames: u64 = frames
        .iter()
        .filter(|f| f["name"] == "fib::fib")
        .map(|f| f["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(on_frames, fib_calls);
    assert_eq!(stacks["calls_outside_stacks"], 0);
    assert_eq!(stacks["calls_counted"], counted_calls(&trace));
    assert!(counted_calls(&trace) > 0);
    assert_eq!(stacks["stacks"], true);
}

/// A module's profile merges its recent runs: fib(12) and fib(15) make 465 + 1,973 calls.
#[test]
fn a_module_profile_merges_its_recent_runs() {
    let server = Server::start(&data_dir("profile-module"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    server.upload_ok("exit3", &fixture("exit3.wasm"));
    let (status, error) = error_of(server.get("/modules/fib/profile"));
    assert_eq!(
        (status, error.as_str()),
        (404, "no recent runs of module `fib`")
    );
    for n in ["12", "15"] {
        assert_eq!(server.run("name=fib", n).status(), 200);
    }
    assert_eq!(server.run("name=exit3", "").status(), 422);
    let stacks: serde_json::Value = server.get("/modules/fib/profile").json().unwrap();
    assert_eq!(stacks["runs"], 2);
    assert_eq!(stacks["title"], "fib: 2 runs");
    let frames = stacks["frames"].as_array().unwrap();
    assert_eq!(frames[0]["calls"], 2);
    let fib_calls: u64 = frames
        .iter()
        .filter(|f| f["name"] == "fib::fib")
        .map(|f| f["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(fib_calls, 465 + 1973);
    let (_, folded) = fetch(&server, "/modules/fib/profile?format=folded");
    let folded = read_folded(std::str::from_utf8(&folded).unwrap());
    let total: u64 = folded.iter().map(|(_, n)| n).sum();
    assert_eq!(total, frames[0]["total_ns"].as_u64().unwrap());
    let (_, body) = fetch(&server, "/modules/fib/profile?format=pprof");
    let (samples, _) = read_pprof(&body);
    let calls: i64 = samples
        .iter()
        .filter(|(s, _)| s.last().unwrap() == "fib::fib")
        .map(|(_, v)| v["calls"])
        .sum();
    assert_eq!(calls, 465 + 1973);

    // Run statistics by module.
    let stats: serde_json::Value = server.get("/stats").json().unwrap();
    let modules = stats["modules"].as_array().unwrap();
    let fib = modules.iter().find(|m| m["name"] == "fib").unwrap();
    assert_eq!(
        (fib["runs"].as_u64(), fib["failed"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(fib["p50_ns"].as_u64().unwrap() <= fib["p99_ns"].as_u64().unwrap());
    let exit3 = modules.iter().find(|m| m["name"] == "exit3").unwrap();
    assert_eq!(exit3["error_rate"], 1.0);
    let traces: serde_json::Value = server.get("/traces").json().unwrap();
    assert_eq!(traces["traces"][0]["outcome"], "exit");
    assert_eq!(traces["traces"][1]["outcome"], "ok");
}

#[test]
fn bad_profile_requests_get_clear_errors() {
    let server = Server::start(&data_dir("profile-errors"), &["--read-token", "r3ad"], &[]);
    // The page itself is served without the token; the data is not.
    let page = server.get("/");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(page.text().unwrap().contains("/assets/app.js"));
    assert_eq!(server.get("/assets/app.js").status(), 200);
    assert_eq!(server.get("/assets/app.css").status(), 200);
    let id = "0123456789abcdef0123456789abcdef";
    for path in [
        format!("/traces/{id}?format=folded"),
        "/modules/fib/profile".to_string(),
        "/stats".to_string(),
    ] {
        assert_eq!(server.get(&path).status(), 401, "{path}");
    }
    let client = crate::harness::client();
    let get = |path: &str| {
        client
            .get(format!("{}{path}", server.url))
            .bearer_auth("r3ad")
            .send()
            .unwrap()
    };
    let (status, error) = error_of(get(&format!("/traces/{id}?format=flame")));
    assert_eq!(status, 400);
    assert_eq!(
        error,
        "invalid `format=flame`: expected one of json, folded, speedscope, pprof, svg, stacks"
    );
    let (status, error) = error_of(get(&format!("/traces/{id}?format=folded")));
    assert_eq!((status, error), (404, format!("no recent trace `{id}`")));
    let (status, error) = error_of(get("/traces/xyz?format=folded"));
    assert_eq!(
        (status, error.as_str()),
        (400, "invalid trace id `xyz`: expected 32 hex digits")
    );
    let (status, _) = error_of(get("/modules/fib/profile?format=json"));
    assert_eq!(status, 400);
    let (status, _) = error_of(get("/modules/..%2Fx/profile"));
    assert_eq!(status, 400);
    assert_eq!(get("/stats").status(), 200);
}
