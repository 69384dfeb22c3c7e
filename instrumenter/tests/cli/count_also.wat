;; --count-also counts the listed functions even where the cost model times them (`spin` has a
;; loop), each with a switch back to the hooks and a traced twin; --no-switch leaves both out,
;; so its output is smaller.
;; WRITE: ids.txt 4
;; RUN: % -o switched.wasm --map - --count-also ids.txt
;; RUN: % -o plain.wasm --count-also ids.txt --no-switch
;; RUN: % -o bad.wasm --no-switch
(module
  (func $main (export "_start") (drop (call $spin (i32.const 3))))
  (func $spin (param $n i32) (result i32)
    (loop $l
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (local.get $n)))
