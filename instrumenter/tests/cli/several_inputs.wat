;; Several inputs need --out-dir; one bad input fails without stopping the others.
;; WRITE: bad.wasm not a module
;; RUN: % bad.wasm -o out.wasm
;; RUN: bad.wasm % --out-dir out --maps
(module (func))
