;; --check validates: a module that imports the hooks but does not validate is not instrumented.
;; RUN: --check %
(module
  (import "dylibso:observe/instrument" "enter" (func (param i32)))
  (func (result i32)))
