;; Waits and notifies inside blocks, loops, branches and multi-value blocks:
;; the two instructions that replace each must leave control flow alone.
(module
  (import "env" "memory" (memory 1 1 shared))
  (func (export "loop") (param i32) (result i32)
    (local $sum i32)
    (local.set 0 (i32.const 5))
    (block $out
      (loop $top
        (br_if $out (i32.eqz (local.get 0)))
        (local.set $sum
          (i32.add (local.get $sum)
            (memory.atomic.wait32 (i32.mul (local.get 0) (i32.const 4)) (local.get 0) (i64.const 0))))
        (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
        (br $top)))
    (local.get $sum))
  (func (export "multi") (param i32) (result i32 i32)
    (block (result i32 i32)
      (memory.atomic.notify (i32.const 0) (i32.const 1))
      (if (result i32) (local.get 0)
        (then (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const 0)))
        (else (memory.atomic.wait64 (i32.const 0) (i64.const 1) (i64.const -1))))))
  (func (export "br-table") (param i32) (result i32)
    (block $a (result i32)
      (block $b (result i32)
        (br_table $a $b
          (memory.atomic.notify (i32.const 8) (i32.const 3))
          (local.get 0)))
      (i32.add (i32.const 100))))
  (func (export "unreachable-after") (result i32)
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const 0)))
    (unreachable)))
