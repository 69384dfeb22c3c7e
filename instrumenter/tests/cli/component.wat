;; A component in, a component out: every core module (also in a nested component) is
;; instrumented, ids are unique across the component and the map names each function's module.
;; RUN: % -o out.wasm --map map.json
;; RUN: --check out.wasm %
;; RUN: % --out-dir traced --maps
(component
  (core module $first
    (func $main (export "main") call $helper)
    (func $helper))
  (core instance (instantiate $first))
  (component $inner
    (core module $second
      (func $work (export "work")))
    (core instance (instantiate $second)))
  (instance (instantiate $inner)))
