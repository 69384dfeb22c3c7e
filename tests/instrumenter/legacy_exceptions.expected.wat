;; Written by hand: what fixtures/wat/legacy_exceptions.wat must become, custom sections aside.
;;
;; The hooks are imported after the module's own imports (it has none), so they are functions
;; 0 (enter), 1 (exit) and 2 (memory-grow), of a type appended after the module's own types;
;; the defined functions move from 0..3 to 3..6 and their ids are those new indices. Every
;; function can be unwound (each throws or calls one that does), and the module uses legacy
;; exception handling, so each body is wrapped in a legacy `try` whose `catch_all` calls
;; `exit` and rethrows; the `exit` after the `try` covers fall-through.
(module
  (type (;0;) (func (param i32)))
  (type (;1;) (func))
  (type (;2;) (func (result i32)))
  (type (;3;) (func (param i32)))
  (import "dylibso:observe/instrument" "enter" (func (;0;) (type 3)))
  (import "dylibso:observe/instrument" "exit" (func (;1;) (type 3)))
  (import "dylibso:observe/instrument" "memory-grow" (func (;2;) (type 3)))
  (tag (;0;) (type 0) (param i32))
  (tag (;1;) (type 1))
  (export "run" (func 6))

  ;; $thrower
  (func (;3;) (type 0) (param i32)
    i32.const 3
    call 0
    try
      local.get 0
      throw 0
    catch_all
      i32.const 3
      call 1
      rethrow 0
    end
    i32.const 3
    call 1)

  ;; $delegated
  (func (;4;) (type 2) (result i32)
    i32.const 4
    call 0
    try (result i32)
      try (result i32)
        try (result i32)
          try (result i32)
            i32.const 5
            call 3
            i32.const 0
          delegate 0
        catch 0
          drop
          rethrow 0
        end
      catch 0
        i32.const 10
        i32.add
      catch_all
        i32.const -1
      end
    catch_all
      i32.const 4
      call 1
      rethrow 0
    end
    i32.const 4
    call 1)

  ;; $caught_all
  (func (;5;) (type 2) (result i32)
    i32.const 5
    call 0
    try (result i32)
      try (result i32)
        throw 1
      catch_all
        i32.const 100
      end
    catch_all
      i32.const 5
      call 1
      rethrow 0
    end
    i32.const 5
    call 1)

  ;; $run
  (func (;6;) (type 2) (result i32)
    i32.const 6
    call 0
    try (result i32)
      call 4
      call 5
      i32.add
    catch_all
      i32.const 6
      call 1
      rethrow 0
    end
    i32.const 6
    call 1))
