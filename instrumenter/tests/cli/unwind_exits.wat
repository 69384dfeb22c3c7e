;; Functions that call an import get the exception handler unless asked to keep to modules that
;; use exceptions themselves; the output sizes differ by the handlers.
;; RUN: % -o always.wasm
;; RUN: % -o own.wasm --unwind-exits if-module-uses-exceptions
;; RUN: % -o bad.wasm --unwind-exits sometimes
(module
  (import "env" "host" (func $host))
  (func (export "calls_host") call $host)
  (func (export "leaf")))
