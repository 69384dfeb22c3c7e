;; Stack switching is refused by name.
;; RUN: % -o out.wasm
(module
  (type $f (func))
  (type $c (cont $f))
  (func (param (ref $c)) local.get 0 resume $c))
