;; Only waits on the first imported shared 32-bit memory are routed: memory
;; 0 here is unshared (a native wait on it traps, a notify returns 0) and
;; memory 2 is a second shared memory whose notifies stay native (a wait on
;; it would be refused at load: see memory64-refused.wat).
(module
  (import "env" "memory0" (memory 1 1))
  (import "env" "memory1" (memory 1 1 shared))
  (import "env" "memory2" (memory 1 1 shared))
  (data (memory 1) (i32.const 0) "\01")
  (data (memory 2) (i32.const 0) "\02")
  (func (export "wait-unshared") (result i32)
    (memory.atomic.wait32 0 (i32.const 0) (i32.const 0) (i64.const 0)))
  (func (export "notify-unshared") (result i32)
    (memory.atomic.notify 0 (i32.const 0) (i32.const 1)))
  (func (export "wait-routed") (result i32)
    (i32.add
      (memory.atomic.wait32 1 (i32.const 0) (i32.const 1) (i64.const 0))
      (i32.mul (i32.const 10)
        (memory.atomic.wait32 1 (i32.const 0) (i32.const 2) (i64.const -1)))))
  (func (export "notify-both") (result i32)
    (i32.add
      (memory.atomic.notify 1 (i32.const 4) (i32.const 1))
      (memory.atomic.notify 2 (i32.const 65536) (i32.const 1)))))
