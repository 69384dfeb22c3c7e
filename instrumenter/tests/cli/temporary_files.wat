;; Outputs go through a temporary file of their own: a path a fixed temporary name would use
;; (here a directory) is no obstacle, and nothing is left behind.
;; MKDIR: out.wasm.tmp
;; RUN: % -o out.wasm
;; RUN: % -o out.wasm --map out.map.json
(module (func))
