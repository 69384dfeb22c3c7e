;; -o and --map naming one file: a usage error.
;; RUN: % -o out.wasm --map out.wasm
(module (func))
