;; --check passes instrumented modules, fails the others, and says how many functions call enter.
;; RUN: % -o out.wasm --exclude helper
;; RUN: --check out.wasm
;; RUN: --check out.wasm %
(module
  (func $main (export "_start") call $helper)
  (func $helper))
