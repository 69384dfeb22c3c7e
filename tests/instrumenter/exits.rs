//! Behaviour the rewrite promises beyond the fixtures: exceptions thrown from outside the
//! module still call `exit` in every frame they unwind, and memory64 growth is reported
//! saturated, before the grow, whether or not it succeeds.

use iota_instrument::{CallTiming, Options, UnwindExits, instrument};
use wasmtime::{Engine, Instance, Linker, Module, Store, Val};

use crate::hooks::{Event, Recorded, check_nesting, config, link_hooks};

/// Not instrumented: throws a tag the guest does not know, directly and through a table.
const THROWER: &str = r#"(module
  (tag $boom (export "boom") (param i32))
  (func $throw (export "throw") (param i32) (throw $boom (local.get 0)))
  (table (export "table") 1 funcref)
  (elem (i32.const 0) $throw))"#;

/// Declares no tag and uses no exception instruction: only its imports can throw.
const GUEST: &str = r#"(module
  (import "thrower" "throw" (func $throw (param i32)))
  (import "thrower" "table" (table 1 funcref))
  (type $sig (func (param i32)))
  (func $calls_import (param i32) (call $throw (local.get 0)))
  (func $middle (param i32) (call $calls_import (local.get 0)))
  (func $leaf (result i32) (i32.const 7))
  (func (export "direct") (drop (call $leaf)) (call $middle (i32.const 1)))
  (func (export "indirect") (call_indirect (type $sig) (i32.const 2) (i32.const 0)))
  (func $tail_calls_import (param i32) (return_call $throw (local.get 0)))
  (func (export "through_tail_call") (call $tail_calls_import (i32.const 3)))
  (func (export "returns") (result i32) (call $leaf)))"#;

struct Run {
    store: Store<Recorded>,
    instance: Instance,
}

fn instantiate(engine: &Engine, guest: &[u8]) -> Run {
    let mut store = Store::new(engine, Recorded::default());
    let thrower = Module::new(engine, wat::parse_str(THROWER).unwrap()).unwrap();
    let thrower = Instance::new(&mut store, &thrower, &[]).unwrap();
    let mut linker = Linker::new(engine);
    link_hooks(&mut linker);
    linker
        .instance(&mut store, "thrower", thrower)
        .expect("thrower exports link");
    let module = Module::new(engine, guest).unwrap();
    let instance = linker.instantiate(&mut store, &module).unwrap();
    Run { store, instance }
}

impl Run {
    /// Calls `name`; returns whether it threw, and the hook calls it made.
    fn call(&mut self, name: &str) -> (bool, Vec<Event>) {
        let func = self.instance.get_func(&mut self.store, name).unwrap();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        let outcome = func.call(&mut self.store, &[], &mut results);
        let threw = match outcome {
            Ok(()) => false,
            Err(e) if e.is::<wasmtime::ThrownException>() => true,
            Err(e) => panic!("{name}: {e:?}"),
        };
        (threw, std::mem::take(&mut self.store.data_mut().events))
    }
}

#[test]
fn exceptions_from_imports_and_indirect_calls_exit_every_frame() {
    let engine = Engine::new(&config()).unwrap();
    let out = instrument(
        &wat::parse_str(GUEST).unwrap(),
        Options::new().call_timing(CallTiming::EveryCall),
    )
    .unwrap();
    let mut run = instantiate(&engine, &out.wasm);
    for export in ["direct", "indirect", "through_tail_call"] {
        let (threw, events) = run.call(export);
        assert!(threw, "{export} throws");
        let calls = check_nesting(&events, true)
            .unwrap_or_else(|e| panic!("{export}: every frame exits on unwind: {e}"));
        assert!(calls >= 1, "{export}: {events:?}");
    }
    // `direct` goes through three functions: all three exit, the leaf before the throw.
    let (_, events) = run.call("direct");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Exit(_)))
            .count(),
        4,
        "{events:?}"
    );
    let (threw, events) = run.call("returns");
    assert!(!threw);
    assert_eq!(check_nesting(&events, true), Ok(2));
}

/// The narrower setting leaves such a module without handlers: the frames an outside
/// exception unwinds stay open (the host closes them, as after a trap).
#[test]
fn without_unwind_exits_outside_exceptions_leave_frames_open() {
    let engine = Engine::new(&config()).unwrap();
    let out = instrument(
        &wat::parse_str(GUEST).unwrap(),
        Options::new().unwind_exits(UnwindExits::IfModuleUsesExceptions),
    )
    .unwrap();
    let mut run = instantiate(&engine, &out.wasm);
    let (threw, events) = run.call("direct");
    assert!(threw);
    assert!(check_nesting(&events, true).is_err(), "{events:?}");
}

#[test]
fn memory64_growth_is_reported_saturated_and_before_the_grow() {
    let guest = r#"(module
      (memory i64 1 100)
      (func (export "grow") (param i64) (result i64) (memory.grow (local.get 0))))"#;
    let engine = Engine::new(&config()).unwrap();
    let out = instrument(&wat::parse_str(guest).unwrap(), &Options::new()).unwrap();
    let mut store = Store::new(&engine, Recorded::default());
    let mut linker = Linker::new(&engine);
    link_hooks(&mut linker);
    let module = Module::new(&engine, &out.wasm).unwrap();
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let grow = instance
        .get_typed_func::<i64, i64>(&mut store, "grow")
        .unwrap();
    let mut reported = Vec::new();
    for (delta, result) in [
        (3, 1),            // grows: the old size
        (1 << 32, -1),     // fails: past the maximum, and would wrap to 0 in an i32
        (1 << 31, -1),     // fails: would wrap to i32::MIN
        (i64::MAX, -1),    // fails
        (-1, -1),          // u64::MAX pages: fails
        (0x7fff_ffff, -1), // exactly i32::MAX
    ] {
        assert_eq!(
            grow.call(&mut store, delta).unwrap(),
            result,
            "grow({delta})"
        );
        let events = std::mem::take(&mut store.data_mut().events);
        let pages: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                Event::MemoryGrow(pages) => Some(*pages),
                _ => None,
            })
            .collect();
        reported.extend(pages);
    }
    let max = i32::MAX as u32;
    assert_eq!(reported, [3, max, max, max, max, max]);
}

/// The run-time cost of a handler on a call-heavy path: a recursive fib(25) (242,785 calls)
/// whose every call also calls an empty import, so every frame gets the handler. Prints the
/// figure of BENCHMARKS.md (best of ten runs; a measurement, not a check).
#[test]
#[ignore = "a measurement: cargo test --release --test instrumenter handler_cost_per_call -- --ignored --nocapture"]
fn handler_cost_per_call() {
    let guest = r#"(module
      (import "env" "nothing" (func $nothing))
      (func $fib (export "fib") (param i32) (result i32)
        (call $nothing)
        (if (result i32) (i32.lt_u (local.get 0) (i32.const 2))
          (then (local.get 0))
          (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                         (call $fib (i32.sub (local.get 0) (i32.const 2))))))))"#;
    let engine = Engine::new(&config()).unwrap();
    let wasm = wat::parse_str(guest).unwrap();
    let time = |unwind| {
        let out = instrument(&wasm, Options::new().unwind_exits(unwind)).unwrap();
        let module = Module::new(&engine, &out.wasm).unwrap();
        let mut linker = Linker::new(&engine);
        linker.func_wrap("env", "nothing", || {}).unwrap();
        for hook in [
            iota_instrument::ENTER,
            iota_instrument::EXIT,
            iota_instrument::MEMORY_GROW,
        ] {
            linker
                .func_wrap(iota_instrument::HOOK_MODULE, hook, |_: i32| {})
                .unwrap();
        }
        (0..10)
            .map(|_| {
                let mut store = Store::new(&engine, ());
                let instance = linker.instantiate(&mut store, &module).unwrap();
                let fib = instance
                    .get_typed_func::<i32, i32>(&mut store, "fib")
                    .unwrap();
                let start = std::time::Instant::now();
                assert_eq!(fib.call(&mut store, 25).unwrap(), 75025);
                start.elapsed()
            })
            .min()
            .unwrap()
    };
    let without = time(UnwindExits::IfModuleUsesExceptions);
    let with = time(UnwindExits::Always);
    let calls = 242_785.0;
    println!(
        "fib(25), every call through a handler: without {without:?}, with {with:?}: {:+.2} ns a call ({:+.1} %)",
        (with.as_secs_f64() - without.as_secs_f64()) * 1e9 / calls,
        (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0
    );
}

/// `$spin`: counts `$n` down in a loop and returns from inside it (the cost model times it).
macro_rules! spin {
    () => {
        r#"  (func $spin (param $n i32) (result i32)
    (loop $l
      (if (i32.eqz (local.get $n)) (then (return (i32.const 7))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $l))
    (i32.const 0))
"#
    };
}

/// Functions the cost model times (a loop, an import call), each counted instead when asked:
/// `$spin` returns from inside its loop, `$tail` tail-calls it, `$unwound` is unwound by an
/// exception from its import. `$leaf` is provably short: counted by the cost model.
const SWITCHED: &str = concat!(
    r#"(module
  (import "thrower" "throw" (func $throw (param i32)))
  (import "thrower" "table" (table 1 funcref))
"#,
    spin!(),
    r#"  (func $tail (param $n i32) (result i32) (loop $l) (return_call $spin (local.get $n)))
  (func $unwound (param $n i32) (loop $l) (call $throw (local.get $n)))
  (func $leaf (result i32) (i32.const 1))
  (func (export "run") (result i32) (drop (call $leaf)) (call $tail (i32.const 3)))
  (func (export "throws") (call $unwound (i32.const 1))))"#
);

#[test]
fn switchable_functions_count_until_switched_then_exit_every_frame() {
    let engine = Engine::new(&config()).unwrap();
    let plain = instrument(&wat::parse_str(SWITCHED).unwrap(), &Options::new()).unwrap();
    let id = |name: &str| plain.functions.iter().find(|f| f.name == name).unwrap().id;
    let learned = [id("spin"), id("tail"), id("unwound")];
    let out = instrument(
        &wat::parse_str(SWITCHED).unwrap(),
        Options::new().count_also(learned),
    )
    .unwrap();
    for f in &out.functions {
        let expected = learned.contains(&f.id);
        assert_eq!(
            f.timing == iota_instrument::Timing::Learned,
            expected,
            "{f:?}"
        );
    }
    let mut run = instantiate(&engine, &out.wasm);
    let global = |run: &mut Run, prefix: &str, id: u32| {
        run.instance
            .get_global(&mut run.store, &format!("{prefix}{id}"))
            .unwrap_or_else(|| panic!("{prefix}{id} is exported"))
    };
    let count = |run: &mut Run, id: u32| {
        let counter = global(run, iota_instrument::COUNTER_EXPORT_PREFIX, id);
        counter.get(&mut run.store).unwrap_i64()
    };

    // Counted: only the exported functions call the hooks.
    let (threw, events) = run.call("run");
    assert!(!threw);
    assert_eq!(check_nesting(&events, true), Ok(1), "{events:?}");
    let (threw, events) = run.call("throws");
    assert!(threw);
    assert_eq!(check_nesting(&events, true), Ok(1), "{events:?}");
    assert_eq!(learned.map(|id| count(&mut run, id)), [1, 1, 1]);

    // Switched: every frame enters and exits, by return, tail call and unwinding alike.
    for id in learned {
        let switch = global(&mut run, iota_instrument::SWITCH_EXPORT_PREFIX, id);
        switch.set(&mut run.store, Val::I64(-1)).unwrap();
    }
    let (threw, events) = run.call("run");
    assert!(!threw);
    assert_eq!(check_nesting(&events, true), Ok(3), "{events:?}");
    let (threw, events) = run.call("throws");
    assert!(threw);
    assert_eq!(check_nesting(&events, true), Ok(2), "{events:?}");
    assert_eq!(learned.map(|id| count(&mut run, id)), [-1, -1, -1]);

    // A function the cost model counts is counted either way, and has no switch.
    let leaf = id("leaf");
    assert_eq!(count(&mut run, leaf), 2);
    let switch = format!("{}{leaf}", iota_instrument::SWITCH_EXPORT_PREFIX);
    assert!(run.instance.get_global(&mut run.store, &switch).is_none());

    // Without switches, the learned functions only count, and the module has no twins.
    let plain_learned = instrument(
        &wat::parse_str(SWITCHED).unwrap(),
        Options::new().count_also(learned).count_also_switch(false),
    )
    .unwrap();
    let mut run = instantiate(&engine, &plain_learned.wasm);
    for id in learned {
        let switch = format!("{}{id}", iota_instrument::SWITCH_EXPORT_PREFIX);
        assert!(run.instance.get_global(&mut run.store, &switch).is_none());
    }
    let (threw, events) = run.call("run");
    assert!(!threw);
    assert_eq!(check_nesting(&events, true), Ok(1), "{events:?}");
    assert_eq!(learned.map(|id| count(&mut run, id)), [1, 1, 0]);
    let defined = |wasm: &[u8]| {
        wasmparser::Parser::new(0)
            .parse_all(wasm)
            .find_map(|payload| match payload.unwrap() {
                wasmparser::Payload::FunctionSection(functions) => Some(functions.count()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        defined(&out.wasm),
        defined(&plain_learned.wasm) + 3,
        "one twin each"
    );

    // The twins, last in the module, carry their functions' names (for backtraces).
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&out.wasm) {
        if let wasmparser::Payload::CustomSection(section) = payload.unwrap()
            && let wasmparser::KnownCustom::Name(reader) = section.as_known()
        {
            for name in reader {
                if let wasmparser::Name::Function(map) = name.unwrap() {
                    names.extend(map.into_iter().map(|n| n.unwrap().name.to_string()));
                }
            }
        }
    }
    assert_eq!(names[names.len() - 3..], ["spin", "tail", "unwound"]);
}

/// A command whose `_start` calls a provably short `$leaf` twice and `$spin` (timed by the cost
/// model, counted when asked) once; `other` calls `$leaf` too (and is provably short itself).
const REPORTS: &str = concat!(
    r#"(module
  (func $leaf (result i32) (i32.const 1))
"#,
    spin!(),
    r#"  (func (export "_start")
    (drop (call $leaf)) (drop (call $leaf)) (drop (call $spin (i32.const 2))))
  (func (export "other") (drop (call $leaf))))"#
);

#[test]
fn start_reports_every_counter_as_it_returns() {
    let engine = Engine::new(&config()).unwrap();
    let wasm = wat::parse_str(REPORTS).unwrap();
    let plain = instrument(&wasm, &Options::new()).unwrap();
    let plain_id = |name: &str| plain.functions.iter().find(|f| f.name == name).unwrap().id;
    let out = instrument(
        &wasm,
        Options::new()
            .count_also([plain_id("spin")])
            .report_counts(true),
    )
    .unwrap();
    let id = |name: &str| out.functions.iter().find(|f| f.name == name).unwrap().id;
    // The counts import follows the hooks, and moves every defined function, but no id.
    assert_eq!(
        [id("leaf"), id("spin")],
        [plain_id("leaf"), plain_id("spin")]
    );

    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut store = Store::new(&engine, Recorded::default());
    let mut linker = Linker::new(&engine);
    link_hooks(&mut linker);
    let module = Module::new(&engine, &out.wasm).unwrap();
    let import = module
        .imports()
        .find(|i| i.module() == iota_instrument::COUNTS_MODULE)
        .expect("the counts import");
    assert_eq!(import.name(), iota_instrument::COUNTS);
    let ty = import.ty().unwrap_func().clone();
    let pairs = [wasmtime::ValType::I32, wasmtime::ValType::I64];
    assert!(ty.results().len() == 0 && ty.params().len() == 2 * iota_instrument::COUNTS_PER_CALL);
    for (k, param) in ty.params().enumerate() {
        assert!(param.matches(&pairs[k % 2]), "{ty:?}");
    }
    let sink = reports.clone();
    linker
        .func_new(
            iota_instrument::COUNTS_MODULE,
            iota_instrument::COUNTS,
            ty,
            move |_, params, _| {
                let mut sink = sink.lock().unwrap();
                for pair in params.chunks(2) {
                    sink.push((pair[0].unwrap_i32(), pair[1].unwrap_i64()));
                }
                Ok(())
            },
        )
        .unwrap();
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let counter = |store: &mut Store<Recorded>, id: u32| {
        let name = format!("{}{id}", iota_instrument::COUNTER_EXPORT_PREFIX);
        instance
            .get_global(&mut *store, &name)
            .unwrap()
            .get(&mut *store)
            .unwrap_i64()
    };

    // Another export reports nothing: its counts stay in the globals.
    let other = instance.get_func(&mut store, "other").unwrap();
    other.call(&mut store, &[], &mut []).unwrap();
    assert!(reports.lock().unwrap().is_empty());
    assert_eq!(counter(&mut store, id("leaf")), 1);

    // `_start` reports every counter once, in the order of the counter exports, padded to
    // whole calls with id -1; the globals hold the same.
    let start = instance.get_func(&mut store, "_start").unwrap();
    start.call(&mut store, &[], &mut []).unwrap();
    let reported = reports.lock().unwrap().clone();
    assert_eq!(reported.len(), iota_instrument::COUNTS_PER_CALL);
    let counted: Vec<u32> = module
        .exports()
        .filter_map(|e| {
            e.name()
                .strip_prefix(iota_instrument::COUNTER_EXPORT_PREFIX)?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(counted, [id("leaf"), id("spin"), id("other")]);
    assert_eq!(
        reported[..3],
        [
            (id("leaf") as i32, 3),
            (id("spin") as i32, 1),
            (id("other") as i32, 1)
        ]
    );
    assert!(
        reported[3..].iter().all(|&pair| pair == (-1, 0)),
        "{reported:?}"
    );
    for &(id, calls) in &reported[..3] {
        assert_eq!(counter(&mut store, id as u32), calls);
    }
    // `_start` itself is still traced, the only function that is.
    let events = std::mem::take(&mut store.data_mut().events);
    assert_eq!(check_nesting(&events, true), Ok(1), "{events:?}");

    // Not asked for, or with every call timed, no report.
    let mut every_call = Options::new();
    every_call
        .call_timing(CallTiming::EveryCall)
        .report_counts(true);
    for options in [Options::new(), every_call] {
        let out = instrument(&wasm, &options).unwrap();
        let module = Module::new(&engine, &out.wasm).unwrap();
        assert!(
            module
                .imports()
                .all(|i| i.module() != iota_instrument::COUNTS_MODULE)
        );
    }
}
