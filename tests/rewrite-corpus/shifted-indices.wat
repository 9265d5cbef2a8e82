;; Every kind of function reference must move past the three host imports
;; the rewrite inserts after the module's own function imports: calls,
;; tail calls, the start function, element segments, ref.func in globals and
;; code, and exports.
(module
  (import "env" "f0" (func $f0 (param i32) (result i32)))
  (import "env" "memory" (memory 1 2 shared))
  (import "env" "f1" (func $f1))
  (type $t (func (param i32) (result i32)))
  (table $tab 4 funcref)
  (elem (table $tab) (i32.const 0) func $a $b $f0)
  (elem declare func $c)
  (global $r (mut funcref) (ref.func $b))
  (global $acc (mut i32) (i32.const 0))
  (export "\01global1" (global $acc))
  (export "\01table0" (table $tab))
  (start $init)
  (func $init
    (global.set $acc (memory.atomic.notify offset=4 (i32.const 0) (i32.const 1))))
  (func $a (export "a") (param i32) (result i32)
    (drop (memory.atomic.wait32 (i32.const 8) (i32.const 1) (i64.const -1)))
    (call $f1)
    (call $f0 (i32.add (local.get 0) (i32.const 1))))
  (func $b (export "b") (param i32) (result i32)
    (return_call $a (i32.mul (local.get 0) (i32.const 3))))
  (func $c (export "c") (param i32) (result i32)
    (i32.add
      (call_indirect $tab (type $t) (local.get 0) (i32.const 1))
      (call_indirect $tab (type $t) (local.get 0) (i32.const 0))))
  (func (export "d") (result i32)
    (table.set $tab (i32.const 3) (ref.func $c))
    (call_indirect $tab (type $t) (i32.const 5) (i32.const 3)))
  (func (export "e") (result funcref)
    (global.get $r))
  (func (export "f") (param i32) (result i32)
    (return_call_indirect $tab (type $t) (local.get 0) (i32.const 2))))
