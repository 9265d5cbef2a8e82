;; Found by the fuzzer (seed 1000061 and others): an address plus memarg
;; offset past 2^32 that is also misaligned. Natively, Cranelift adds the
;; two with an overflow trap (out of bounds) before the libcall checks
;; alignment; a host wait that checks alignment first traps as misaligned.
(module
  (import "env" "memory" (memory 1 1 shared))
  (func (export "wait32") (result i32)
    (memory.atomic.wait32 offset=0xfffffff8 (i32.const 9) (i32.const 0) (i64.const 0)))
  (func (export "wait64") (result i32)
    (memory.atomic.wait64 offset=0xfffffffc (i32.const 6) (i64.const 0) (i64.const -1)))
  (func (export "notify") (result i32)
    (memory.atomic.notify offset=0xffffffff (i32.const 2) (i32.const 1)))
  (func (export "aligned") (result i32)
    (memory.atomic.wait32 offset=0xfffffff8 (i32.const 8) (i32.const 0) (i64.const 0))))
