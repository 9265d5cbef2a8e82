;; Seed 3,019,866 grew an unbounded memory64 by 2^20 pages (64 GiB) within
;; its fuel, and the harness aborted copying it for the comparison. The
;; harness caps memories (64 pages) and tables (10,000 elements) alike on
;; both sides, so each large growth here returns -1 on both, and growth
;; within the caps still works. (`table.grow` costs fuel per element, so
;; fuel alone bounds one call's table growth, not memory growth.)
(module
  (import "env" "memory0" (memory 1 2 shared))
  (import "env" "memory1" (memory i64 1))
  (import "env" "memory2" (memory 1))
  ;; Wasmtime applies no store limiter to shared memories: the harness
  ;; gives this one a maximum of 64 pages, which the import accepts.
  (import "env" "memory3" (memory 1 65536 shared))
  (table $t 1 funcref)
  (export "\01table0" (table $t))
  (func (export "grow64-by-64-gib") (result i64)
    (memory.grow 1 (i64.const 0x100000)))
  (func (export "grow32-to-4-gib") (result i32)
    (memory.grow 2 (i32.const 0xffff)))
  (func (export "grow-shared-past-the-cap") (result i32)
    (memory.grow 3 (i32.const 100)))
  (func (export "grow-table") (result i32)
    (table.grow $t (ref.null func) (i32.const 15000)))
  (func (export "grow-within-the-caps") (result i64)
    (i64.add
      (memory.grow 1 (i64.const 3))
      (i64.extend_i32_u
        (i32.add
          (memory.grow 0 (i32.const 1))
          (table.grow $t (ref.null func) (i32.const 5))))))
  (func (export "wait") (result i32)
    (memory.atomic.wait32 0 (i32.const 65536) (i32.const 0) (i64.const 0))))
