;; A module that imports a hook name with another type is refused: no host could link both.
;; RUN: % -o out.wasm
(module
  (import "dylibso:observe/instrument" "memory-grow" (func (param i64)))
  (func))
