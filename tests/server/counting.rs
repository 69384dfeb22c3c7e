//! Short calls counted, not timed: provably short functions count their calls in the module
//! (exactly), the rest are timed; the function map says which and why.

use crate::harness::{Server, Spans, data_dir, fixture, trace_id_of};

/// The switch exports (learned functions the host can time again) of `module`'s runnable in the
/// data directory `dir`.
fn switches(dir: &std::path::Path, module: &serde_json::Value) -> Vec<String> {
    let sha = module["runnable_sha256"].as_str().unwrap();
    let wasm = std::fs::read(dir.join("blobs").join(format!("{sha}.wasm"))).unwrap();
    wasmparser::Parser::new(0)
        .parse_all(&wasm)
        .filter_map(|payload| match payload.unwrap() {
            wasmparser::Payload::ExportSection(exports) => Some(exports),
            _ => None,
        })
        .flatten()
        .map(|export| export.unwrap().name.to_string())
        .filter(|name| name.starts_with(iota_instrument::SWITCH_EXPORT_PREFIX))
        .collect()
}

/// `GET /modules/{name}`.
fn module_info(server: &Server, name: &str) -> serde_json::Value {
    server
        .get(&format!("/modules/{name}"))
        .json::<serde_json::Value>()
        .unwrap()
}

/// Uploads the module `wat` as `m` to a server started with [`LEARN_SOON`], and runs it twice
/// with an empty stdin, until its learned version serves.
fn upload_and_learn(server: &Server, wat: &str) {
    server.upload_ok("m", &wat::parse_str(wat).unwrap());
    for _ in 0..2 {
        assert_eq!(server.run("name=m", "").status(), 200);
    }
    crate::harness::wait_until("the learned version", || {
        module_info(server, "m")["generation"] == 1
    });
}

fn function<'a>(trace: &'a serde_json::Value, needle: &str) -> &'a serde_json::Value {
    trace["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no {needle}"))
}

#[test]
fn short_functions_are_counted_exactly_and_the_map_says_why() {
    let server = Server::start(&data_dir("counting"), &[], &[]);
    let info = server.upload_ok("counted", &fixture("count_vowels.wasm"));
    assert_eq!(info["timing"], "counted");
    assert!(info["counted_functions"].as_u64().unwrap() > 0);
    let every = server.upload_ok_with("every", &fixture("count_vowels.wasm"), "&timing=every_call");
    assert_eq!(every["timing"], "every_call");
    assert_eq!(every["counted_functions"], 0);

    let map = server
        .get("/modules/counted/functions")
        .json::<serde_json::Value>()
        .unwrap();
    let entry = |needle: &str| {
        map["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"].as_str().unwrap().contains(needle))
            .unwrap()
            .clone()
    };
    assert_eq!(entry("is_vowel")["timing"], "counted");
    assert_eq!(
        entry("count_vowels::count_vowels")["timing"],
        serde_json::json!({"timed": "loop"})
    );
    assert_eq!(
        entry("count_vowels::read_input")["timing"],
        serde_json::json!({"timed": "calls_timed"}),
        "it calls into the standard library's reader"
    );

    let input = "Hello, wonderful world!";
    for name in ["counted", "every"] {
        let response = server.run(&format!("name={name}"), input);
        let trace = server.trace(&trace_id_of(&response));
        assert_eq!(response.text().unwrap(), "6\n");
        let is_vowel = function(&trace, "is_vowel");
        assert_eq!(is_vowel["calls"], input.len(), "{name}: one call per byte");
        let spans = Spans::of(&trace);
        spans.assert_nested();
        let vowel_spans = spans.named("count_vowels::is_vowel").len();
        if name == "counted" {
            assert_eq!(is_vowel["timed"], false);
            assert_eq!(vowel_spans, 0);
            assert_eq!(
                spans.0[1]["attributes"]["iota.calls.counted"]
                    .as_u64()
                    .unwrap(),
                trace["functions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|f| f["timed"] == false)
                    .map(|f| f["calls"].as_u64().unwrap())
                    .sum::<u64>()
            );
        } else {
            assert_eq!(is_vowel["timed"], true);
            assert_eq!(vowel_spans, input.len());
        }
        // The loop that calls it is timed in both.
        assert_eq!(spans.named("count_vowels::count_vowels").len(), 1);
    }
}

/// `$quick`: a two-step loop, so the cost model times it; its calls are short.
macro_rules! quick {
    () => {
        r#"(func $quick (param $n i32) (result i32) (local $i i32)
    (loop $l
      (local.set $n (i32.add (local.get $n) (i32.const 3)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 2))))
    (local.get $n))"#
    };
}

/// `_start` calls `$quick` (a two-step loop: the cost model times it) 2,000 times, then
/// `$slow` (a loop of ten million steps) three times.
pub(crate) const LEARNS: &str = concat!(
    r#"(module
  (memory (export "memory") 1)
  "#,
    quick!(),
    r#"
  (func $slow (param $n i32) (result i32) (local $i i32)
    (loop $l
      (local.set $n (i32.xor (i32.mul (local.get $n) (i32.const 31)) (local.get $i)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 10000000))))
    (local.get $n))
  (func (export "_start") (local $i i32) (local $acc i32)
    (loop $l
      (local.set $acc (call $quick (local.get $acc)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 2000))))
    (local.set $acc (call $slow (local.get $acc)))
    (local.set $acc (call $slow (local.get $acc)))
    (local.set $acc (call $slow (local.get $acc)))
    (i32.store (i32.const 0) (local.get $acc))))"#
);

/// Learning from two runs and 1,000 timed calls, counting the functions whose mean call is at
/// most 100 µs: thresholds far from the test guests' durations, whatever the machine's load.
pub(crate) const LEARN_SOON: [&str; 6] = [
    "--learn-after-runs",
    "2",
    "--learn-after-calls",
    "1000",
    "--learn-mean-ns",
    "100000",
];

#[test]
fn short_calls_learned_from_runs_are_counted_and_long_calls_stay_spans() {
    let dir = data_dir("learning");
    // `quick` takes well under 100 µs a call, `slow` well over.
    let flags = [&LEARN_SOON[..], &["--learn-audit-every", "0"]].concat();
    let server = Server::start(&dir, &flags, &[]);
    let wasm = wat::parse_str(LEARNS).unwrap();
    server.upload_ok("m", &wasm);
    server.upload_ok_with("fixed", &wasm, "&learn=false");
    let timing_of = |module: &str, name: &str| {
        let map = server
            .get(&format!("/modules/{module}/functions"))
            .json::<serde_json::Value>()
            .unwrap();
        map["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["timing"]
            .clone()
    };
    assert_eq!(
        timing_of("m", "quick"),
        serde_json::json!({"timed": "loop"})
    );
    for _ in 0..2 {
        assert_eq!(server.run("name=m", "").status(), 200);
        assert_eq!(server.run("name=fixed", "").status(), 200);
    }
    crate::harness::wait_until("the learned version", || {
        server
            .get("/modules/m")
            .json::<serde_json::Value>()
            .unwrap()["generation"]
            == 1
    });
    let info = server
        .get("/modules/m")
        .json::<serde_json::Value>()
        .unwrap();
    assert_eq!(info["learned_functions"], 1);
    assert_eq!(timing_of("m", "quick"), "learned");
    // No audits: the learned function counts with a plain counter, no switch; the version
    // still watches the functions it times.
    assert_eq!(info["learning"], "watching");
    assert!(switches(&dir, &info).is_empty());
    assert_eq!(timing_of("m", "slow"), serde_json::json!({"timed": "loop"}));

    let response = server.run("name=m", "");
    let trace = server.trace(&trace_id_of(&response));
    let quick = function(&trace, "quick");
    assert_eq!(
        (quick["calls"].as_u64(), &quick["timed"]),
        (Some(2000), &serde_json::json!(false))
    );
    let spans = Spans::of(&trace);
    assert!(spans.named("quick").is_empty());
    let slow = spans.named("slow");
    assert_eq!(slow.len(), 3, "every long call is still a span");
    assert!(
        slow.iter()
            .all(|s| s["duration_ns"].as_u64().unwrap() > 100_000)
    );

    // A module that asked not to learn keeps its timing.
    let fixed = server
        .get("/modules/fixed")
        .json::<serde_json::Value>()
        .unwrap();
    assert_eq!(fixed["generation"], 0);
    assert_eq!(
        timing_of("fixed", "quick"),
        serde_json::json!({"timed": "loop"})
    );

    // The learned version is stored: a restart serves it.
    server.stop();
    let server = Server::start(&dir, &flags, &[]);
    let info = server
        .get("/modules/m")
        .json::<serde_json::Value>()
        .unwrap();
    assert_eq!(info["generation"], 1);
    let trace = server.trace(&trace_id_of(&server.run("name=m", "")));
    assert_eq!(function(&trace, "quick")["timed"], false);
}

/// `_start` calls `$quick` (a two-step loop) 2,000 times; if stdin starts with `N`, also
/// `$late` (another) 2,000 times.
const LATE: &str = concat!(
    r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  "#,
    quick!(),
    r#"
  (func $late (param $n i32) (result i32) (local $i i32)
    (loop $l
      (local.set $n (i32.mul (local.get $n) (i32.const 5)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 2))))
    (local.get $n))
  (func (export "_start") (local $i i32) (local $acc i32)
    (i32.store (i32.const 16) (i32.const 32))
    (i32.store (i32.const 20) (i32.const 1))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (loop $l
      (local.set $acc (call $quick (local.get $acc)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 2000))))
    (if (i32.eq (i32.load8_u (i32.const 32)) (i32.const 78))
      (then
        (local.set $i (i32.const 0))
        (loop $l
          (local.set $acc (call $late (local.get $acc)))
          (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 2000))))))
    (i32.store (i32.const 0) (local.get $acc))))"#
);

#[test]
fn learned_versions_learn_the_short_calls_of_code_later_runs_reach() {
    let dir = data_dir("learning-late");
    let flags = [&LEARN_SOON[..], &["--learn-audit-every", "0"]].concat();
    let server = Server::start(&dir, &flags, &[]);
    let info = |server: &Server| module_info(server, "m");
    upload_and_learn(&server, LATE);
    assert_eq!(
        info(&server)["learned_functions"],
        1,
        "`late` was never called"
    );

    // After a restart (the learned version's learned functions come from its stored function
    // map), runs reach `late`: its calls prove short, and the next version counts it too.
    server.stop();
    let server = Server::start(&dir, &flags, &[]);
    assert_eq!(info(&server)["learning"], "watching");
    let trace = server.trace(&trace_id_of(&server.run("name=m", "N")));
    assert_eq!(function(&trace, "late")["timed"], true);
    assert_eq!(Spans::of(&trace).named("late").len(), 2000);
    assert_eq!(server.run("name=m", "N").status(), 200);
    crate::harness::wait_until("the version that learned more", || {
        info(&server)["generation"] == 2
    });
    assert_eq!(info(&server)["learned_functions"], 2);
    let trace = server.trace(&trace_id_of(&server.run("name=m", "N")));
    for name in ["quick", "late"] {
        let f = function(&trace, name);
        assert_eq!(
            (f["calls"].as_u64(), &f["timed"]),
            (Some(2000), &false.into()),
            "{name}"
        );
        assert!(Spans::of(&trace).named(name).is_empty(), "{name}");
    }
}

/// `_start` reads one byte of stdin. Without an `L`, it calls `$quick` 2,000 times for two
/// loop steps each; with one, 50 times for a million steps each.
/// `quick` is called 2,000 times with two steps a call, or 50 times with a million when stdin
/// starts with `L`; `steady` is called 1,000 times with two steps, whatever the input.
const GROWS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $quick (param $steps i32) (result i32) (local $i i32) (local $acc i32)
    (loop $l
      (local.set $acc (i32.xor (i32.mul (local.get $acc) (i32.const 31)) (local.get $i)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $steps))))
    (local.get $acc))
  (func $steady (param $steps i32) (result i32) (local $i i32) (local $acc i32)
    (loop $l
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 7)) (local.get $i)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $steps))))
    (local.get $acc))
  (func (export "_start") (local $i i32) (local $acc i32) (local $calls i32) (local $steps i32)
    (i32.store (i32.const 16) (i32.const 32))
    (i32.store (i32.const 20) (i32.const 1))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (local.set $calls (i32.const 2000))
    (local.set $steps (i32.const 2))
    (if (i32.eq (i32.load8_u (i32.const 32)) (i32.const 76))
      (then
        (local.set $calls (i32.const 50))
        (local.set $steps (i32.const 1000000))))
    (loop $l
      (local.set $acc (i32.add (local.get $acc) (call $quick (local.get $steps))))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $calls))))
    (local.set $i (i32.const 0))
    (loop $l
      (local.set $acc (i32.add (local.get $acc) (call $steady (i32.const 2))))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 1000))))
    (i32.store (i32.const 0) (local.get $acc))))"#;

#[test]
fn audits_time_learned_functions_again_and_revoke_those_grown_long() {
    // `quick` takes well under 100 µs a call with two steps, well over with a million.
    let audits = ["--learn-min-calls", "10", "--learn-audit-every", "2"];
    let flags = [&LEARN_SOON[..], &audits].concat();
    let dir = data_dir("auditing");
    let server = Server::start(&dir, &flags, &[]);
    let info = || module_info(&server, "m");
    upload_and_learn(&server, GROWS);
    assert_eq!(info()["learned_functions"], 2);
    assert_eq!(info()["learning"], "auditing");
    assert_eq!(switches(&dir, &info()).len(), 2, "both have a switch");

    // In each run, each learned function is audited with a chance of one in two, on its own:
    // run until each was audited while the other was not. An audit of short calls times them
    // (a span per call), and keeps them learned; the function not audited counts.
    let run = |stdin: &str| {
        let trace = server.trace(&trace_id_of(&server.run("name=m", stdin)));
        let timed = |name| {
            let timed = function(&trace, name)["timed"] == true;
            let calls = function(&trace, name)["calls"].as_u64().unwrap() as usize;
            let spans = Spans::of(&trace).named(name).len();
            assert_eq!(spans, if timed { calls } else { 0 }, "{name}");
            timed
        };
        let (quick, steady) = (timed("quick"), timed("steady"));
        let audited = &trace["spans"][1]["attributes"]["iota.learn.audited"];
        let expected = usize::from(quick) + usize::from(steady);
        if expected == 0 {
            assert!(audited.is_null(), "{audited}");
        } else {
            assert_eq!(audited, expected, "functions audited");
        }
        assert_eq!(function(&trace, "steady")["calls"], 1000);
        (trace, quick, steady)
    };
    let mut seen = [false; 2];
    for _ in 0..200 {
        let (trace, quick, steady) = run("");
        assert_eq!(function(&trace, "quick")["calls"], 2000);
        match (quick, steady) {
            (true, false) => seen[0] = true,
            (false, true) => seen[1] = true,
            _ => {}
        }
        if seen == [true, true] {
            break;
        }
    }
    assert_eq!(seen, [true, true], "200 runs and not each audited alone");
    assert_eq!(info()["generation"], 1);

    // The workload changes: `quick`'s calls are long now. Runs that do not audit it count
    // them; the first that does times them, each call a span again.
    let trace = (0..100)
        .find_map(|_| {
            let (trace, quick, _) = run("L");
            assert_eq!(function(&trace, "quick")["calls"], 50);
            quick.then_some(trace)
        })
        .expect("`quick` audited within 100 runs");
    let spans = Spans::of(&trace);
    spans.assert_nested();
    assert_eq!(spans.named("quick").len(), 50);

    // What it showed revokes what was learned of `quick`: the next version times it again,
    // and still counts `steady`.
    crate::harness::wait_until("the version without it", || info()["generation"] == 2);
    assert_eq!(info()["learned_functions"], 1);
    assert_eq!(switches(&dir, &info()).len(), 1);
    let trace = server.trace(&trace_id_of(&server.run("name=m", "L")));
    assert_eq!(function(&trace, "quick")["timed"], true);
    assert_eq!(Spans::of(&trace).named("quick").len(), 50);
}

/// A command whose `_start` makes three counted calls of `$leaf`, then ends as `$end` says.
macro_rules! ends {
    ($end:literal) => {
        concat!(
            r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $leaf (result i32) (i32.const 1))
  (func $start (export "_start")
    (drop (call $leaf)) (drop (call $leaf)) (drop (call $leaf))"#,
            $end,
            "))"
        )
    };
}

#[test]
fn counts_are_exact_whether_start_returns_traps_or_exits() {
    let server = Server::start(&data_dir("counting-ends"), &[], &[]);
    // Returning, `_start` hands the counters over; a trap or an exit skips that, and the host
    // reads them from the module's globals.
    // `$leaf` is provably short, and so is `_start` unless it calls `proc_exit` (an import).
    for (name, wat, status, counted) in [
        ("returns", ends!(""), 200, 2),
        ("traps", ends!("(unreachable)"), 500, 2),
        ("exits", ends!("(call $exit (i32.const 0))"), 200, 1),
    ] {
        let info = server.upload_ok(name, &wat::parse_str(wat).unwrap());
        assert_eq!(info["counted_functions"], counted, "{name}");
        let response = server.run(&format!("name={name}"), "");
        assert_eq!(response.status(), status, "{name}");
        let trace = server.trace(&trace_id_of(&response));
        let leaf = function(&trace, "leaf");
        assert_eq!(leaf["timed"], false, "{name}");
        assert_eq!(leaf["calls"], 3, "{name}");
        assert_eq!(function(&trace, "start")["calls"], 1, "{name}");
    }

    // What the host takes when `_start` returns is the report, not the globals: a module
    // instrumented already (so passed through as it is) whose report says 5 calls of `$leaf`
    // (function 3) while its counter holds 3.
    let reports = r#"(module
  (import "dylibso:observe/instrument" "enter" (func $enter (param i32)))
  (import "dylibso:observe/instrument" "exit" (func $exit (param i32)))
  (import "iota" "counts" (func $counts
    (param i32 i64 i32 i64 i32 i64 i32 i64 i32 i64 i32 i64 i32 i64)))
  (global $leaf_calls (export "iota.count.3") (mut i64) (i64.const 3))
  (func $leaf)
  (func $start (export "_start")
    (call $counts (i32.const 3) (i64.const 5)
      (i32.const -1) (i64.const 0) (i32.const -1) (i64.const 0) (i32.const -1) (i64.const 0)
      (i32.const -1) (i64.const 0) (i32.const -1) (i64.const 0) (i32.const -1) (i64.const 0))))"#;
    server.upload_ok("reports", &wat::parse_str(reports).unwrap());
    let response = server.run("name=reports", "");
    assert_eq!(response.status(), 200);
    let trace = server.trace(&trace_id_of(&response));
    assert_eq!(function(&trace, "leaf")["calls"], 5);
}
