//! Cost of a traced call in the real host (P2): a guest calls a leaf function N times.
//!
//! - `uninstrumented`: the guest as built;
//! - `iota hooks`: the guest instrumented by `iota-instrument`, its hooks linked to iota's
//!   recorder exactly as `iota serve` links them (a fresh store per iteration, like a run);
//! - `two empty host calls`: the uninstrumented guest whose leaf calls an empty host function on
//!   entry and on exit: the floor for any host-side tracing of the same calls.
//!
//! Per-call overhead = (variant − uninstrumented) / N, at three densities: an empty leaf, and
//! leaves doing 100- and 1000-iteration loops, to show how the overhead shrinks as the work per
//! call grows. A last group runs recursive fib(25) (242,785 calls, almost no work in each), the
//! densest calls real code makes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use iota::runtime::link_hooks;
use iota::trace::recorder::Recorder;
use wasmtime::{Engine, Linker, Module, Store};

const CALLS: i32 = 100_000;

fn guest(host_calls: bool) -> Vec<u8> {
    let (import, call) = if host_calls {
        (r#"(import "bench" "empty" (func $empty))"#, "call $empty")
    } else {
        ("", "")
    };
    wat::parse_str(format!(
        r#"(module
          {import}
          (func $leaf (param $work i32) (local $i i32)
            {call}
            (block $done
              (loop $l
                (br_if $done (i32.ge_u (local.get $i) (local.get $work)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $l)))
            {call})
          (func (export "run") (param $n i32) (param $work i32) (local $k i32)
            (loop $l
              (call $leaf (local.get $work))
              (local.set $k (i32.add (local.get $k) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $k) (local.get $n))))))"#
    ))
    .unwrap()
}

struct Variant {
    name: &'static str,
    module: Module,
    linker: Linker<Recorder>,
    functions: usize,
}

fn variants(engine: &Engine) -> Vec<Variant> {
    let plain = guest(false);
    let traced = iota_instrument::instrument(&plain, &iota_instrument::Options::new()).unwrap();
    let mut hooks = Linker::new(engine);
    link_hooks(&mut hooks, |r: &mut Recorder| r).unwrap();
    let mut empty = Linker::new(engine);
    empty.func_wrap("bench", "empty", || {}).unwrap();
    vec![
        Variant {
            name: "uninstrumented",
            module: Module::new(engine, &plain).unwrap(),
            linker: Linker::new(engine),
            functions: 0,
        },
        Variant {
            name: "iota hooks",
            module: Module::new(engine, &traced.wasm).unwrap(),
            linker: hooks,
            functions: traced
                .functions
                .iter()
                .map(|f| f.id as usize + 1)
                .max()
                .unwrap(),
        },
        Variant {
            name: "two empty host calls",
            module: Module::new(engine, guest(true)).unwrap(),
            linker: empty,
            functions: 0,
        },
    ]
}

fn traced_call_cost(c: &mut Criterion) {
    let engine = Engine::default();
    let variants = variants(&engine);
    for work in [0, 100, 1000] {
        let mut group = c.benchmark_group(format!("calls/leaf work {work}"));
        group.throughput(Throughput::Elements(CALLS as u64));
        for variant in &variants {
            let pre = variant.linker.instantiate_pre(&variant.module).unwrap();
            group.bench_function(BenchmarkId::from_parameter(variant.name), |b| {
                b.iter(|| {
                    let mut store =
                        Store::new(&engine, Recorder::new(variant.functions, 1 << 20, 0));
                    let instance = pre.instantiate(&mut store).unwrap();
                    let run = instance
                        .get_typed_func::<(i32, i32), ()>(&mut store, "run")
                        .unwrap();
                    run.call(&mut store, (CALLS, work)).unwrap();
                    store.into_data()
                })
            });
        }
        group.finish();
    }
}

const FIB_N: i32 = 25;
/// Calls fib(25) makes: 2·fib(26) − 1.
const FIB_CALLS: u64 = 242_785;

fn fib_guest() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (func $fib (param $n i32) (result i32)
            (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
              (then (local.get $n))
              (else (i32.add
                (call $fib (i32.sub (local.get $n) (i32.const 1)))
                (call $fib (i32.sub (local.get $n) (i32.const 2)))))))
          (func (export "fib") (param $n i32) (result i32) (call $fib (local.get $n))))"#,
    )
    .unwrap()
}

fn recursive_fib(c: &mut Criterion) {
    let engine = Engine::default();
    let plain = fib_guest();
    let traced = iota_instrument::instrument(&plain, &iota_instrument::Options::new()).unwrap();
    let mut hooks = Linker::new(&engine);
    link_hooks(&mut hooks, |r: &mut Recorder| r).unwrap();
    let mut group = c.benchmark_group(format!("calls/fib({FIB_N})"));
    group.throughput(Throughput::Elements(FIB_CALLS));
    for (name, wasm, linker) in [
        ("uninstrumented", plain, Linker::new(&engine)),
        ("iota hooks", traced.wasm, hooks),
    ] {
        let pre = linker
            .instantiate_pre(&Module::new(&engine, wasm).unwrap())
            .unwrap();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut store = Store::new(&engine, Recorder::new(4, 1 << 20, 0));
                let instance = pre.instantiate(&mut store).unwrap();
                let fib = instance
                    .get_typed_func::<i32, i32>(&mut store, "fib")
                    .unwrap();
                assert_eq!(fib.call(&mut store, FIB_N).unwrap(), 75_025);
                store.into_data()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, traced_call_cost, recursive_fib);
criterion_main!(benches);
