;; -o - and --map - would interleave wasm and JSON on standard output: a usage error.
;; RUN: % -o - --map -
(module (func))
