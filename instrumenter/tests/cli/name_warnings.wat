;; A name section with an entry that does not parse: the names before it are kept, with a warning.
;; RUN: % -o out.wasm --map -
;; RUN: % -o out.wasm -q
(module
  (func)
  (func)
  (@custom "name" "\01\0c\02\00\05first\01\02\ff\fe"))
