;; A shared 64-bit memory comes first and the module waits on it: the host
;; can only interrupt waits on the imported 32-bit shared memory, so it
;; refuses the module at load (a native wait there could never be stopped).
(module
  (import "env" "memory0" (memory i64 1 2 shared))
  (import "env" "memory1" (memory 1 2 shared))
  (func (export "native64") (result i32)
    (memory.atomic.wait32 0 (i64.const 8) (i32.const 1) (i64.const -1)))
  (func (export "routed32") (result i32)
    (memory.atomic.wait64 1 (i32.const 8) (i64.const 0) (i64.const 5)))
  (func (export "grow-then-wait") (result i32)
    (drop (memory.grow 1 (i32.const 1)))
    (memory.atomic.wait32 1 (i32.const 65536) (i32.const 0) (i64.const 0))))
