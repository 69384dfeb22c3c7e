;; --report-counts: `_start` (its export now a wrapper, last in the module) hands the counters
;; to the `iota`/`counts` import as it returns; the import moves the functions, not their ids.
;; RUN: % -o reports.wasm --map - --report-counts
;; RUN: % -o plain.wasm
;; RUN: % -o bad.wasm --report-counts --time-every-call
(module
  (func $main (export "_start") (drop (call $leaf)) (drop (call $leaf)))
  (func $leaf (result i32) (i32.const 1)))
