;; Loops the rewrite unrolls (its body written twice, checked once): leaving
;; from either copy, with and without results, through `br`, `br_if` and
;; `br_table` to the loop, to labels within the body and to labels outside
;; it, and trapping in either copy.
(module
  (memory 1)
  (global $g (mut i32) (i32.const 0))
  ;; Counts to 7 (odd: the loop is left from the first copy) and to 8
  ;; (from the second), leaving the count as the loop's result.
  (func $count (param $to i32) (result i32)
    (local $i i32)
    (loop $l (result i32)
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $to)))
      (local.get $i)))
  (func (export "odd") (result i32) (call $count (i32.const 7)))
  (func (export "even") (result i32) (call $count (i32.const 8)))
  ;; A branch out of the loop from inside a block of the body, carrying a
  ;; value past the loop.
  (func (export "out-of-block") (param i32) (result i32)
    (local $i i32)
    (block $done (result i32)
      (loop $l
        (local.set $i (i32.add (local.get $i) (i32.const 3)))
        (block $skip
          (br_if $skip (i32.lt_u (local.get $i) (i32.const 20)))
          (br $done (i32.mul (local.get $i) (i32.const 10))))
        (i32.store (local.get $i) (local.get $i))
        (br $l))
      (i32.const -1)))
  ;; `br_table` to the loop, to a block in the body, and out of the loop,
  ;; by the iteration count.
  (func (export "table") (result i32)
    (local $i i32)
    (local $sum i32)
    (block $out
      (loop $l
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (block $in
          (local.set $sum (i32.add (local.get $sum) (local.get $i)))
          (br_table $l $in $l $out (i32.rem_u (i32.mul (local.get $i) (i32.const 7)) (i32.const 5))))
        (global.set $g (i32.add (global.get $g) (local.get $i)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 100)))))
    (i32.add (local.get $sum) (i32.mul (global.get $g) (i32.const 1000))))
  ;; `if`/`else` in the body, and a loop whose result comes from a branch.
  (func (export "arms") (result i32)
    (local $i i32)
    (local $acc i32)
    (block $b (result i32)
      (loop $l (result i32)
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (if (i32.and (local.get $i) (i32.const 1))
          (then (local.set $acc (i32.add (local.get $acc) (local.get $i))))
          (else (local.set $acc (i32.xor (local.get $acc) (i32.shl (local.get $i) (i32.const 3))))))
        (br_if $b (local.get $acc) (i32.gt_u (local.get $i) (i32.const 30)))
        (br $l))))
  ;; Traps after 5 (first copy) or 6 (second copy) iterations.
  (func $trap-at (param $at i32) (result i32)
    (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (drop (i32.div_u (i32.const 1) (i32.sub (local.get $at) (local.get $i))))
      (br $l))
    (i32.const 0))
  (func (export "trap-first") (result i32) (call $trap-at (i32.const 5)))
  (func (export "trap-second") (result i32) (call $trap-at (i32.const 6))))
