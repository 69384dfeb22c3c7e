;; An --out-dir that holds the inputs would replace them: a usage error, inputs untouched.
;; COPY: src/app.wasm src/lib.wasm
;; RUN: src/app.wasm src/lib.wasm --out-dir src
;; RUN: src/app.wasm --out-dir src/../src
;; RUN: src/app.wasm src/lib.wasm --out-dir out
(module (func))
