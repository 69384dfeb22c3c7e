//! Instrumentation throughput on a large real module, side by side with the floor
//! (a `wasmparser` validate-only pass over the same bytes) and the IR approach
//! (a `walrus` parse + emit round trip, no instrumentation).
//!
//! The module: `$IOTA_BENCH_WASM`, else the largest `.wasm` in `target/real-wasm`
//! (`scripts/fetch-real-wasm.sh` downloads yosys, resvg, boolector, micropython). A component
//! works too (validate-only then covers the component model; walrus is left out: it reads core
//! modules only).

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wasmparser::{Validator, WasmFeatures};

fn module() -> (String, Vec<u8>) {
    let path = std::env::var_os("IOTA_BENCH_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/real-wasm");
            std::fs::read_dir(&dir)
                .unwrap_or_else(|e| {
                    panic!("{}: {e}; run scripts/fetch-real-wasm.sh", dir.display())
                })
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .max_by_key(|p| p.metadata().map(|m| m.len()).unwrap_or(0))
                .expect("a .wasm file in target/real-wasm")
        });
    let bytes = std::fs::read(&path).unwrap();
    (
        path.file_name().unwrap().to_string_lossy().into_owned(),
        bytes,
    )
}

fn instrument_vs_baselines(c: &mut Criterion) {
    let (name, wasm) = module();
    let mut group = c.benchmark_group(format!("instrument/{name}"));
    group.throughput(Throughput::Bytes(wasm.len() as u64));
    group.sample_size(10);
    group.bench_function("wasmparser validate", |b| {
        b.iter(|| {
            Validator::new_with_features(WasmFeatures::all())
                .validate_all(&wasm)
                .unwrap()
        })
    });
    group.bench_function("iota-instrument", |b| {
        let options = iota_instrument::Options::new();
        b.iter(|| iota_instrument::instrument(&wasm, &options).unwrap())
    });
    // walrus reads core modules only.
    if !iota_instrument::is_component(&wasm) {
        group.bench_function("walrus parse+emit", |b| {
            b.iter(|| walrus::Module::from_buffer(&wasm).unwrap().emit_wasm())
        });
    }
    group.finish();
}

criterion_group!(benches, instrument_vs_baselines);
criterion_main!(benches);
