;; --symbol-map names functions from `INDEX:NAME` lines (Emscripten's --emit-symbol-map and
;; wasm-opt --symbolmap); a line that is not one is an error naming it.
;; WRITE: good.map 1:from_the_map
;; WRITE: bad.map 1 from_the_map
;; RUN: % -o out.wasm --map - --symbol-map good.map
;; RUN: % -o out2.wasm --symbol-map bad.map
(module
  (func $main (export "_start") call $work)
  (func $work))
