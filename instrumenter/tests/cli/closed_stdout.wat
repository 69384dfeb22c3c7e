;; A reader that closes standard output ends the run quietly: exit 0 when nothing failed.
;; RUN-CLOSED-STDOUT: % -o -
;; RUN-CLOSED-STDOUT: % -o out.wasm --map -
(module (func))
