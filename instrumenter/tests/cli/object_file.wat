;; A relocatable object file (it has a `linking` section) is refused.
;; RUN: % -o out.wasm
(module
  (func)
  (@custom "linking" "\02"))
