//! Differential tests on components: each runs as it was built and instrumented (wasmtime's
//! component model, WASI 0.2); stdout and exit status must match, the hook calls must nest,
//! and the output must validate as a component.

use std::collections::HashSet;

use iota_instrument::{FunctionEntry, IfInstrumented, Options, instrument};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::fixtures::fixture;
use crate::hooks::{Event, check_nesting, config};
use crate::wasi::{Exit, Outcome};
use crate::wasi_p2::{Guest, link_component_hooks, linker, run_component, store};

fn validate(wasm: &[u8]) {
    wasmparser::Validator::new_with_features(iota_instrument::component_features())
        .validate_all(wasm)
        .expect("the output validates as a component");
}

/// Runs a command component both ways and checks they agree; returns the instrumented run and
/// the function map.
fn differential(name: &str, stdin: &str) -> (Outcome, Vec<FunctionEntry>) {
    let engine = Engine::new(&config()).unwrap();
    let original = fixture(name);
    assert!(iota_instrument::is_component(&original));
    let out = instrument(&original, &Options::new()).expect("component instruments");
    validate(&out.wasm);
    assert!(iota_instrument::is_instrumented(&out.wasm).unwrap());
    let plain = run_component(&engine, &original, &["guest"], stdin.as_bytes());
    let traced = run_component(&engine, &out.wasm, &["guest"], stdin.as_bytes());
    assert_eq!(plain.stdout, traced.stdout, "{name}: stdout differs");
    assert_eq!(plain.exit, traced.exit, "{name}: exit differs");
    let complete = traced.exit == Exit::Code(0);
    let calls = check_nesting(&traced.events, complete).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(calls > 0, "{name}: no function was traced");
    let ids: HashSet<u32> = out.functions.iter().map(|f| f.id).collect();
    assert_eq!(ids.len(), out.functions.len(), "{name}: ids are unique");
    for event in &traced.events {
        if let Event::Enter(id) | Event::Exit(id) = event {
            assert!(ids.contains(id), "{name}: hook id {id} is in the map");
        }
    }
    (traced, out.functions)
}

fn function<'a>(map: &'a [FunctionEntry], name: &str) -> &'a FunctionEntry {
    map.iter()
        .find(|f| f.name == name || f.name.ends_with(&format!("::{name}")))
        .unwrap_or_else(|| panic!("no function `{name}`"))
}

fn calls_of(events: &[Event], id: u32) -> usize {
    events.iter().filter(|e| **e == Event::Enter(id)).count()
}

#[test]
fn count_vowels_component() {
    let (run, map) = differential("count_vowels.component.wasm", "Hello, world!");
    assert_eq!(run.stdout, b"3\n");
    assert_eq!(calls_of(&run.events, function(&map, "is_vowel").id), 13);
    // The Rust program, the wit-component shim and its fixup: three core modules.
    let modules: HashSet<_> = map.iter().map(|f| f.module).collect();
    assert!(modules.contains(&Some(0)) && modules.contains(&Some(1)));
    assert!(modules.iter().all(Option::is_some));
    // The shim's functions, exported as `0`, `1`, ..., take the names the component gives
    // them: each is the way into a WASI call.
    let read = function(
        &map,
        "indirect-wasi:io/streams@0.2.0-[method]input-stream.blocking-read",
    );
    assert_eq!(read.module, Some(1));
    assert!(calls_of(&run.events, read.id) >= 1);
}

#[test]
fn fib_component_recursion_is_traced_call_by_call() {
    let (run, map) = differential("fib.component.wasm", "15");
    assert_eq!(run.stdout, b"610\n");
    assert_eq!(calls_of(&run.events, function(&map, "fib").id), 1973);
}

#[test]
fn exit_code_of_a_component_is_kept() {
    let (run, _) = differential("exit3.component.wasm", "");
    assert_ne!(run.exit, Exit::Code(0));
    assert!(String::from_utf8_lossy(&run.stdout).contains("exiting"));
}

#[test]
fn a_panic_traps_the_same_way() {
    let (run, _) = differential("fib.component.wasm", "not a number");
    assert!(matches!(run.exit, Exit::Trap(_)), "{:?}", run.exit);
}

/// Three core modules, one in a nested component, a call across components, and a `realloc`
/// the host calls while the component may not call out.
#[test]
fn modules_of_nested_components_get_ids_of_their_own() {
    for (stdin, expected, fib_calls) in [("", "610\n", 1973), ("10", "55\n", 177)] {
        let (run, map) = differential("multi_module.wasm", stdin);
        assert_eq!(run.exit, Exit::Code(0));
        assert_eq!(String::from_utf8_lossy(&run.stdout), expected);
        let fib = function(&map, "fib");
        assert_eq!(calls_of(&run.events, fib.id), fib_calls);
        let run_fn = map.iter().find(|f| f.name == "run").unwrap();
        assert_ne!(
            fib.module, run_fn.module,
            "fib and run are in different modules"
        );
        let modules: HashSet<_> = map.iter().map(|f| f.module.unwrap()).collect();
        assert_eq!(modules.len(), 3, "{map:?}");
        // The host runs `cabi_realloc` (and `bump` inside it) while the component may not
        // call out: their hooks are skipped, and the run does not trap.
        // Named by the component (`$realloc`): the module names it only by its export.
        let realloc = function(&map, "realloc");
        assert!(realloc.instrumented);
        assert_eq!(calls_of(&run.events, realloc.id), 0);
        if !stdin.is_empty() {
            assert_eq!(calls_of(&run.events, function(&map, "bump").id), 0);
        }
        // run → fib, across two components.
        let position = |e: Event| run.events.iter().position(|x| *x == e).unwrap();
        assert!(position(Event::Enter(run_fn.id)) < position(Event::Enter(fib.id)));
        assert!(position(Event::Exit(fib.id)) < position(Event::Exit(run_fn.id)));
    }
}

#[test]
fn an_instrumented_component_is_refused_or_passed_through() {
    for name in ["multi_module.wasm", "count_vowels.component.wasm"] {
        refused_or_passed_through(name);
    }
}

fn refused_or_passed_through(name: &str) {
    let original = fixture(name);
    let out = instrument(&original, &Options::new()).unwrap();
    let err = instrument(&out.wasm, &Options::new()).unwrap_err();
    assert_eq!(err.kind(), &iota_instrument::ErrorKind::AlreadyInstrumented);
    let again = instrument(
        &out.wasm,
        Options::new().if_instrumented(IfInstrumented::PassThrough),
    )
    .unwrap();
    assert!(again.passed_through);
    assert_eq!(again.wasm, out.wasm);
    // The same ids, names and modules (`original_index` is then the index in the input, as
    // for a core module passed through).
    let summary = |map: &[FunctionEntry]| {
        map.iter()
            .map(|f| (f.id, f.name.clone(), f.module, f.instrumented))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&again.functions), summary(&out.functions));
}

#[test]
fn output_is_deterministic() {
    let original = fixture("count_vowels.component.wasm");
    let a = instrument(&original, &Options::new()).unwrap();
    let b = instrument(&original, &Options::new()).unwrap();
    assert_eq!(a.wasm, b.wasm);
}

/// A `post-return` function runs while the component may not call out, as `realloc` does.
#[test]
fn post_return_functions_run_quietly() {
    let wat = r#"
        (component
          (core module $m
            (memory (export "memory") 1)
            (data (i32.const 16) "hello")
            (global $cleanups (mut i32) (i32.const 0))
            (func $tidy (global.set $cleanups (i32.add (global.get $cleanups) (i32.const 1))))
            (func (export "greet") (result i32)
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 5))
              i32.const 0)
            (func (export "cabi_post_greet") (param i32) call $tidy)
            (func (export "cleanups") (result i32) global.get $cleanups)
            (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 64))
          (core instance $i (instantiate $m))
          (alias core export $i "memory" (core memory $memory))
          (alias core export $i "greet" (core func $greet))
          (alias core export $i "cabi_realloc" (core func $realloc))
          (alias core export $i "cabi_post_greet" (core func $post))
          (alias core export $i "cleanups" (core func $cleanups))
          (func (export "greet") (result string)
            (canon lift (core func $greet) (memory $memory) (realloc $realloc)
              (post-return $post)))
          (func (export "cleanups") (result u32) (canon lift (core func $cleanups)))
        )"#;
    let original = wat::parse_str(wat).unwrap();
    let out = instrument(&original, &Options::new()).unwrap();
    validate(&out.wasm);
    let engine = Engine::new(&config()).unwrap();
    let component = Component::new(&engine, &out.wasm).unwrap();
    let (mut store, _) = store(&engine, &[], b"");
    let mut linker: Linker<Guest> = Linker::new(&engine);
    link_component_hooks(&mut linker);
    let instance = linker.instantiate(&mut store, &component).unwrap();
    let greet = instance
        .get_typed_func::<(), (String,)>(&mut store, "greet")
        .unwrap();
    for _ in 0..2 {
        let (text,) = greet.call(&mut store, ()).unwrap();
        assert_eq!(text, "hello");
    }
    let cleanups = instance
        .get_typed_func::<(), (u32,)>(&mut store, "cleanups")
        .unwrap();
    let (count,) = cleanups.call(&mut store, ()).unwrap();
    assert_eq!(count, 2, "post-return ran each time");
    let events = &store.data().recorded.events;
    // greet twice and cleanups once, each entered and exited; post-return and tidy are quiet.
    let map = &out.functions;
    assert_eq!(check_nesting(events, true).unwrap(), 3);
    assert_eq!(calls_of(events, function(map, "post").id), 0);
    assert_eq!(calls_of(events, function(map, "greet").id), 2);
}

#[test]
fn components_that_cannot_be_instrumented_are_refused_clearly() {
    // An instrumented core module may not leave the component that instantiates it with the
    // hooks.
    let exported =
        wat::parse_str(r#"(component (core module $m (func)) (export "m" (core module $m)))"#)
            .unwrap();
    let err = instrument(&exported, &Options::new()).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            iota_instrument::ErrorKind::ComponentUnsupported { .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("core module 0 is exported"),
        "{err}"
    );

    // An invalid body in the second module: the error names the module and the component's
    // offset.
    let invalid = wat::parse_str(
        r#"(component (core module (func)) (core module (func (result i32) i64.const 1)))"#,
    )
    .unwrap();
    let err = instrument(&invalid, &Options::new()).unwrap_err();
    assert_eq!(err.module(), Some(1), "{err}");
    assert!(err.to_string().contains("in core module 1"), "{err}");
    let offset = err.offset().unwrap() as usize;
    assert!(offset > 8 && offset < invalid.len(), "{err}");

    let err = instrument(
        &fixture("multi_module.wasm"),
        Options::new().symbol_map(iota_instrument::SymbolMap::parse("1:f").unwrap()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("symbol map"), "{err}");
}

/// Lists what a component imports, for the hook interface's shape.
#[test]
fn the_hooks_are_one_component_import() {
    let out = instrument(&fixture("count_vowels.component.wasm"), &Options::new()).unwrap();
    let engine = Engine::new(&config()).unwrap();
    let component = Component::new(&engine, &out.wasm).unwrap();
    let ty = component.component_type();
    let hooks = ty
        .imports(&engine)
        .find(|(name, _)| *name == iota_instrument::HOOK_MODULE)
        .expect("the hook interface is imported");
    let wasmtime::component::types::ComponentItem::ComponentInstance(instance) = hooks.1.ty else {
        panic!("the hooks are an instance");
    };
    let mut names: Vec<_> = instance.exports(&engine).map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["enter", "exit", "memory-grow"]);
    // Linking it is all a host does.
    let _ = linker(&engine).instantiate_pre(&component).unwrap();
}
