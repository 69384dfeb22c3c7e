//! Cost of a traced call in the real host (P2): a guest calls a leaf function N times.
//!
//! - `uninstrumented`: the guest as built;
//! - `iota hooks`: the guest instrumented by `iota-instrument`, its hooks linked to iota's
//!   recorder exactly as `iota serve` links them (a fresh store per iteration, like a run);
//! - `two empty host calls`: the uninstrumented guest whose leaf calls an empty host function on
//!   entry and on exit: the floor for any host-side tracing of the same calls.
//!
//! Per-call overhead = (variant − uninstrumented) / N. Two densities: an empty leaf, and a leaf
//! doing a 100-iteration loop, to show how the overhead shrinks as work per call grows.

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
    for work in [0, 100] {
        let mut group = c.benchmark_group(format!("calls/leaf work {work}"));
        group.throughput(Throughput::Elements(CALLS as u64));
        for variant in &variants {
            let pre = variant.linker.instantiate_pre(&variant.module).unwrap();
            group.bench_function(BenchmarkId::from_parameter(variant.name), |b| {
                b.iter(|| {
                    let mut store =
                        Store::new(&engine, Recorder::new(variant.functions, 2_000_000, 0));
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

criterion_group!(benches, traced_call_cost);
criterion_main!(benches);
