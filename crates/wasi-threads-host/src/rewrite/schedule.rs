//! The schedule mode's instrumentation: scheduling points where a
//! deterministic scheduler may switch threads.
//!
//! A module compiled with [`compile_scheduled`](super::compile_scheduled)
//! gets everything the normal rewrite adds and, on top of it:
//!
//! - `i32.const <kind>; call $sched.point` before every atomic instruction
//!   on the routed shared memory and every `atomic.fence`
//!   ([`point_kind::ATOMIC`]), before every direct call of a WASI import
//!   ([`point_kind::WASI`]) and, with [`Granularity::Accesses`], before
//!   every plain load, store, `memory.copy`, `memory.fill` and
//!   `memory.init` on that memory ([`point_kind::ACCESS`]). Routed waits and
//!   notifies get none: the host schedules inside them.
//! - A preemption tick after every stop check (see [`countdown`]), so that a
//!   thread that only computes still reaches the scheduler.
//!
//! The points are calls, which the normal rewrite avoids in loops for their
//! cost (see the module documentation of [`super`]): schedule mode is for
//! reproducing interleavings, not for speed.

use wasmparser::Operator;

/// Where the schedule mode's scheduler may switch threads (see
/// [`Schedule`](crate::Schedule)), besides spawns, exits, waits, notifies
/// and sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// Before every atomic instruction on the shared memory, every WASI
    /// call, and every few dozen loop iterations or calls of guest work (a
    /// tick every so many of the rewrite's stop checks).
    Atomics,
    /// Also before every plain load and store (and `memory.copy`, `fill`,
    /// `init`) on the shared memory: data races between non-atomic accesses
    /// show too, at the price of a point per access.
    Accesses,
}

/// `(kind: i32) -> ()`, imported from HOST_MODULE: a scheduling point.
pub const SCHED_POINT: &str = "sched.point";
/// `() -> i32`, imported from HOST_MODULE: a preemption tick; returns how many checks until the next tick (>= 1; treat <= 0 as 1).
pub const SCHED_TICK: &str = "sched.tick";

/// The `kind` argument of SCHED_POINT.
pub mod point_kind {
    /// Before an atomic load, store, read-modify-write or fence.
    pub const ATOMIC: i32 = 1;
    /// Before a call of a WASI function.
    pub const WASI: i32 = 2;
    /// Before a plain load, store, `memory.copy`, `memory.fill` or
    /// `memory.init` ([`Granularity::Accesses`](super::Granularity::Accesses) only).
    pub const ACCESS: i32 = 3;
}

/// The import modules of WASI preview 1: calls of their functions are
/// scheduling points.
const WASI_MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

/// Whether an import from `module` is a WASI function.
pub(super) fn is_wasi_module(module: &str) -> bool {
    WASI_MODULES.contains(&module)
}

/// What the body writer needs to place the points, in the rewritten
/// module's index spaces.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub granularity: Granularity,
    /// The imported [`SCHED_POINT`] and [`SCHED_TICK`].
    pub point: u32,
    pub tick: u32,
    /// The added countdown global.
    pub countdown: u32,
    /// Which of the module's function imports (by function index, which
    /// the rewrite does not change for imports) are WASI functions. Shared:
    /// every body's writer is a clone (see [`super::parallel`]).
    pub wasi: std::sync::Arc<[bool]>,
}

impl Settings {
    /// The kind of scheduling point `op` gets before it, if any. `memory` is
    /// the routed shared memory, in the original module's indices (the same
    /// in the rewritten one: it is imported).
    pub fn point_before(&self, op: &Operator<'_>, memory: Option<u32>) -> Option<i32> {
        let on_shared = |m: u32| Some(m) == memory;
        if matches!(op, Operator::AtomicFence) {
            return Some(point_kind::ATOMIC);
        }
        if atomic_memory(op).is_some_and(on_shared) {
            return Some(point_kind::ATOMIC);
        }
        if let Operator::Call { function_index } | Operator::ReturnCall { function_index } = op
            && self.wasi.get(*function_index as usize) == Some(&true)
        {
            return Some(point_kind::WASI);
        }
        if self.granularity == Granularity::Accesses {
            let touches = match op {
                Operator::MemoryCopy { dst_mem, src_mem } => {
                    on_shared(*dst_mem) || on_shared(*src_mem)
                }
                Operator::MemoryFill { mem } | Operator::MemoryInit { mem, .. } => on_shared(*mem),
                op => plain_access_memory(op).is_some_and(on_shared),
            };
            if touches {
                return Some(point_kind::ACCESS);
            }
        }
        None
    }
}

/// The instructions of the countdown that follows every stop check in
/// schedule mode: a tick every N checks, N returned by the host's
/// [`SCHED_TICK`] at the previous tick.
///
/// ```wat
/// global.get $countdown  i32.const 1  i32.sub  global.set $countdown
/// global.get $countdown  i32.eqz
/// if
///   call $sched.tick  global.set $countdown
///   ;; N <= 0 is taken as 1: 0 would otherwise count down through 2^32
///   ;; checks before the next tick.
///   global.get $countdown  i32.const 1
///   global.get $countdown  i32.const 0  i32.gt_s  select
///   global.set $countdown
/// end
/// ```
///
/// The countdown is a plain (unshared) global the module defines: every
/// thread's instance has its own, so ticks count that thread's checks. It
/// starts at 1: the first check of a thread ticks. The stack is as it was.
/// (Wasm has no `global.tee`: the decremented value is read back.)
pub(super) fn countdown(settings: &Settings) -> [wasm_encoder::Instruction<'static>; 17] {
    use wasm_encoder::Instruction as I;
    let c = settings.countdown;
    [
        I::GlobalGet(c),
        I::I32Const(1),
        I::I32Sub,
        I::GlobalSet(c),
        I::GlobalGet(c),
        I::I32Eqz,
        I::If(wasm_encoder::BlockType::Empty),
        I::Call(settings.tick),
        I::GlobalSet(c),
        I::GlobalGet(c),
        I::I32Const(1),
        I::GlobalGet(c),
        I::I32Const(0),
        I::I32GtS,
        I::Select,
        I::GlobalSet(c),
        I::End,
    ]
}

/// The memory of an atomic load, store or read-modify-write (not of a wait
/// or notify, which the rewrite routes through the host, nor of a fence,
/// which has none).
fn atomic_memory(op: &Operator<'_>) -> Option<u32> {
    use Operator as O;
    match op {
        O::I32AtomicLoad { memarg }
        | O::I64AtomicLoad { memarg }
        | O::I32AtomicLoad8U { memarg }
        | O::I32AtomicLoad16U { memarg }
        | O::I64AtomicLoad8U { memarg }
        | O::I64AtomicLoad16U { memarg }
        | O::I64AtomicLoad32U { memarg }
        | O::I32AtomicStore { memarg }
        | O::I64AtomicStore { memarg }
        | O::I32AtomicStore8 { memarg }
        | O::I32AtomicStore16 { memarg }
        | O::I64AtomicStore8 { memarg }
        | O::I64AtomicStore16 { memarg }
        | O::I64AtomicStore32 { memarg }
        | O::I32AtomicRmwAdd { memarg }
        | O::I64AtomicRmwAdd { memarg }
        | O::I32AtomicRmw8AddU { memarg }
        | O::I32AtomicRmw16AddU { memarg }
        | O::I64AtomicRmw8AddU { memarg }
        | O::I64AtomicRmw16AddU { memarg }
        | O::I64AtomicRmw32AddU { memarg }
        | O::I32AtomicRmwSub { memarg }
        | O::I64AtomicRmwSub { memarg }
        | O::I32AtomicRmw8SubU { memarg }
        | O::I32AtomicRmw16SubU { memarg }
        | O::I64AtomicRmw8SubU { memarg }
        | O::I64AtomicRmw16SubU { memarg }
        | O::I64AtomicRmw32SubU { memarg }
        | O::I32AtomicRmwAnd { memarg }
        | O::I64AtomicRmwAnd { memarg }
        | O::I32AtomicRmw8AndU { memarg }
        | O::I32AtomicRmw16AndU { memarg }
        | O::I64AtomicRmw8AndU { memarg }
        | O::I64AtomicRmw16AndU { memarg }
        | O::I64AtomicRmw32AndU { memarg }
        | O::I32AtomicRmwOr { memarg }
        | O::I64AtomicRmwOr { memarg }
        | O::I32AtomicRmw8OrU { memarg }
        | O::I32AtomicRmw16OrU { memarg }
        | O::I64AtomicRmw8OrU { memarg }
        | O::I64AtomicRmw16OrU { memarg }
        | O::I64AtomicRmw32OrU { memarg }
        | O::I32AtomicRmwXor { memarg }
        | O::I64AtomicRmwXor { memarg }
        | O::I32AtomicRmw8XorU { memarg }
        | O::I32AtomicRmw16XorU { memarg }
        | O::I64AtomicRmw8XorU { memarg }
        | O::I64AtomicRmw16XorU { memarg }
        | O::I64AtomicRmw32XorU { memarg }
        | O::I32AtomicRmwXchg { memarg }
        | O::I64AtomicRmwXchg { memarg }
        | O::I32AtomicRmw8XchgU { memarg }
        | O::I32AtomicRmw16XchgU { memarg }
        | O::I64AtomicRmw8XchgU { memarg }
        | O::I64AtomicRmw16XchgU { memarg }
        | O::I64AtomicRmw32XchgU { memarg }
        | O::I32AtomicRmwCmpxchg { memarg }
        | O::I64AtomicRmwCmpxchg { memarg }
        | O::I32AtomicRmw8CmpxchgU { memarg }
        | O::I32AtomicRmw16CmpxchgU { memarg }
        | O::I64AtomicRmw8CmpxchgU { memarg }
        | O::I64AtomicRmw16CmpxchgU { memarg }
        | O::I64AtomicRmw32CmpxchgU { memarg } => Some(memarg.memory),
        _ => None,
    }
}

/// The memory of a plain (non-atomic) load or store, SIMD ones included.
fn plain_access_memory(op: &Operator<'_>) -> Option<u32> {
    use Operator as O;
    match op {
        O::I32Load { memarg }
        | O::I64Load { memarg }
        | O::F32Load { memarg }
        | O::F64Load { memarg }
        | O::I32Load8S { memarg }
        | O::I32Load8U { memarg }
        | O::I32Load16S { memarg }
        | O::I32Load16U { memarg }
        | O::I64Load8S { memarg }
        | O::I64Load8U { memarg }
        | O::I64Load16S { memarg }
        | O::I64Load16U { memarg }
        | O::I64Load32S { memarg }
        | O::I64Load32U { memarg }
        | O::I32Store { memarg }
        | O::I64Store { memarg }
        | O::F32Store { memarg }
        | O::F64Store { memarg }
        | O::I32Store8 { memarg }
        | O::I32Store16 { memarg }
        | O::I64Store8 { memarg }
        | O::I64Store16 { memarg }
        | O::I64Store32 { memarg }
        | O::V128Load { memarg }
        | O::V128Load8x8S { memarg }
        | O::V128Load8x8U { memarg }
        | O::V128Load16x4S { memarg }
        | O::V128Load16x4U { memarg }
        | O::V128Load32x2S { memarg }
        | O::V128Load32x2U { memarg }
        | O::V128Load8Splat { memarg }
        | O::V128Load16Splat { memarg }
        | O::V128Load32Splat { memarg }
        | O::V128Load64Splat { memarg }
        | O::V128Load32Zero { memarg }
        | O::V128Load64Zero { memarg }
        | O::V128Store { memarg }
        | O::V128Load8Lane { memarg, .. }
        | O::V128Load16Lane { memarg, .. }
        | O::V128Load32Lane { memarg, .. }
        | O::V128Load64Lane { memarg, .. }
        | O::V128Store8Lane { memarg, .. }
        | O::V128Store16Lane { memarg, .. }
        | O::V128Store32Lane { memarg, .. }
        | O::V128Store64Lane { memarg, .. } => Some(memarg.memory),
        _ => None,
    }
}
