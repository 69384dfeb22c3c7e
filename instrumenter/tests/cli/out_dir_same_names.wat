;; Two inputs with one file name would overwrite each other's output: a usage error.
;; COPY: a/app.wasm b/app.wasm
;; RUN: a/app.wasm b/app.wasm --out-dir out
(module (func))
