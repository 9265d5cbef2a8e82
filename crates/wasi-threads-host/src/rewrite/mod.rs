//! The module rewrite: how the host keeps every thread of a program within
//! reach. Three things are added to every module it runs:
//!
//! - **Stop checks.** At the head of every loop, and at the entry of the
//!   functions through which a thread could otherwise run on without
//!   passing one (recursion, calls through tables, imports, large call
//!   trees: see [`checks`]), the thread reads the program's stop flag (the
//!   first word of a one-page shared memory the host owns, [`STOP_FLAG`])
//!   and, once it is set, traps (`unreachable`): the host, seeing its flag
//!   raised, takes that trap for the thread having been stopped. Between
//!   two checks a thread runs a bounded amount of code. Small functions
//!   called from hot loops get no check at all, and small inner loops are
//!   written out twice per check ([`unroll`]); that, and a check that is
//!   one atomic load and a conditional trap, is what makes the
//!   checks cheaper than Wasmtime's epoch interruption, which checks at
//!   every function entry (see [`crate::program::interrupt`]).
//! - **Waits through the host.** Every `memory.atomic.wait32/64` and
//!   `memory.atomic.notify` on the imported shared memory becomes a call of
//!   a host function. A thread parked in a native `memory.atomic.wait` is
//!   out of everyone's reach: nothing wakes it but a notify of its address.
//!   Routing every wait and notify through the host's own parking lot
//!   ([`crate::program::wait`]) lets the supervisor wake every parked thread at once,
//!   whatever address it waits on.
//! - **A `memory` export** for WASI, which finds the caller's memory by it.
//!
//! A module compiled for the deterministic schedule mode
//! ([`compile_scheduled`]) gets, on top of all that, scheduling points
//! before its atomics and WASI calls (and, at [`Granularity::Accesses`],
//! its plain accesses to the shared memory) and a preemption tick counted
//! down at its stop checks: see [`schedule`]. The normal mode's output does
//! not change with it.
//!
//! Supervision must not be something a guest can opt out of, so the rewrite
//! decides from the module's code, never from what it claims about itself
//! (see [`plan`]).
//!
//! A rewritten wait becomes `i32.const <memarg offset>; call <host function>`:
//! the operands already on the stack stay where they are and the offset
//! travels as one more argument, so no locals are needed. A check is
//! `i32.const 0; i32.atomic.load <flag>; if; unreachable; end`, which
//! leaves the stack as it was. It traps rather than calling the host: a
//! call in a loop, even one never taken, makes the compiler keep every
//! value live across the loop in registers a call preserves or on the
//! stack, which cost the call-heavy kernels of the compute benchmark a
//! third of their speed; a trap clobbers nothing. Every other part of the module is re-encoded
//! unchanged apart from function indices, which shift by the functions
//! imported after the module's own function imports, and the indices of
//! memories the module defines, which shift by the flag's memory.
//!
//! Re-encoding moves code (it also shrinks the padded LEBs linkers emit), so
//! the rewrite records where every instruction went ([`OffsetMap`]) and
//! carries the module's DWARF over with its code addresses remapped
//! ([`dwarf`]): backtraces, debuggers and profilers then still speak of the
//! module the user built.

mod cache;
mod checks;
mod dwarf;
#[cfg(feature = "function-cache")]
mod function_cache;
mod offsets;
mod parallel;
mod schedule;
#[cfg(test)]
mod schedule_tests;
mod unroll;

pub use cache::{DEFAULT_CACHE_SIZE, ModuleCache};
#[cfg(feature = "function-cache")]
pub use function_cache::{DEFAULT_FUNCTION_CACHE_SIZE, FunctionCache, FunctionCacheStats};
pub use offsets::{CompiledModule, OffsetMap};
pub use schedule::{Granularity, SCHED_POINT, SCHED_TICK, point_kind};

use offsets::MapBuilder;
use std::ops::Range;
use std::sync::Arc;
use wasm_encoder::SectionId;
use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{CompositeInnerType, FuncType, Operator, Parser, Payload, TypeRef};
use wasmtime::{Engine, Module, Result, bail, format_err};

/// The import module of the host functions the rewrite calls. Reserved: a
/// module that imports anything else from it is refused.
pub const HOST_MODULE: &str = "wasi-threads-host";
/// `(addr: i32, expected: i32, timeout_ns: i64, offset: i32) -> i32`
pub const WAIT32: &str = "memory.atomic.wait32";
/// `(addr: i32, expected: i64, timeout_ns: i64, offset: i32) -> i32`
pub const WAIT64: &str = "memory.atomic.wait64";
/// `(addr: i32, count: i32, offset: i32) -> i32`
pub const NOTIFY: &str = "memory.atomic.notify";
/// `(memory 1 1 shared)`: the program's stop flag is its first word.
pub const STOP_FLAG: &str = "stop-flag";

/// The export name wiggle's WASI glue looks the caller's memory up by.
const MEMORY_EXPORT: &str = "memory";

/// A function the rewrite imports from [`HOST_MODULE`]: its name, parameters
/// and results.
type HostFunc = (
    &'static str,
    &'static [wasmparser::ValType],
    &'static [wasmparser::ValType],
);

/// The wait and notify functions, in the order the rewrite imports them,
/// with their exact types.
const HOST_FUNCS: [HostFunc; 3] = {
    use wasmparser::ValType::{I32, I64};
    [
        (WAIT32, &[I32, I32, I64, I32], &[I32]),
        (WAIT64, &[I32, I64, I64, I32], &[I32]),
        (NOTIFY, &[I32, I32, I32], &[I32]),
    ]
};
const ROUTED_FUNCS: u32 = HOST_FUNCS.len() as u32;

/// The schedule mode's functions, in the order the rewrite imports them
/// (after [`HOST_FUNCS`]), with their exact types.
const SCHED_HOST_FUNCS: [HostFunc; 2] = {
    use wasmparser::ValType::I32;
    [(SCHED_POINT, &[I32], &[]), (SCHED_TICK, &[], &[I32])]
};
const SCHED_FUNCS: u32 = SCHED_HOST_FUNCS.len() as u32;

/// What the scan found in one function body.
struct BodyScan {
    info: checks::Body,
    /// Whether it starts with a check (only looked for in modules that
    /// import the stop flag).
    entry_checked: Option<bool>,
    /// Whether every loop starts with a check (likewise).
    loops_checked: bool,
    /// Whether it waits or notifies on the routed memory.
    atomics_on_shared: bool,
    /// The first other shared memory it waits on.
    wait_elsewhere: Option<u32>,
}

/// What the scan of a module found.
#[derive(Default)]
struct Scan {
    imported_funcs: u32,
    types: u32,
    func_types: Vec<Option<FuncType>>,
    /// Every memory's type, imported ones first (the index space).
    memories: Vec<wasmparser::MemoryType>,
    imported_memories: u32,
    /// The index of the memory to rewrite: the imported 32-bit shared memory.
    shared_memory: Option<u32>,
    /// Which of [`HOST_FUNCS`] the module imports, exactly as the rewrite
    /// would have.
    host_imports: [bool; 3],
    /// The memory index of an import of [`STOP_FLAG`] with the rewrite's
    /// type.
    stop_flag: Option<u32>,
    /// The function indices of every function imported from [`HOST_MODULE`]:
    /// calling them is not calling wasm.
    host_funcs: Vec<u32>,
    /// The first import from [`HOST_MODULE`] that is not one of ours.
    foreign_host_import: Option<String>,
    has_memory_export: bool,
    bodies: u32,
    /// What the placement of entry checks needs to know of each body.
    bodies_info: Vec<checks::Body>,
    /// Which bodies start with a check (only looked for in modules that
    /// import the stop flag), and whether every loop of every body starts
    /// with one.
    entry_checked: Vec<bool>,
    loops_checked: bool,
    /// Whether every body already has every check the rewrite would add.
    /// Only looked for in modules that import the stop flag.
    checked: bool,
    /// Which bodies the rewrite gives an entry check.
    entry: Vec<bool>,
    /// The code section's payload, and the length of the function count
    /// that starts it.
    code: Range<usize>,
    code_count_len: usize,
    atomics_on_shared: bool,
    /// A memory other than the routed one that a native wait parks on.
    wait_elsewhere: Option<u32>,
    /// Which function imports (by function index) are WASI functions: the
    /// schedule mode's points go before their calls.
    wasi_funcs: Vec<bool>,
    /// Globals, imported and defined: the schedule mode's countdown is the
    /// next one.
    globals: u32,
}

fn scan(bytes: &[u8], unroll: bool) -> Result<Scan> {
    let mut scan = Scan {
        loops_checked: true,
        ..Scan::default()
    };
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group?.into_types() {
                        scan.types += 1;
                        scan.func_types.push(match ty.composite_type.inner {
                            CompositeInnerType::Func(f) => Some(f),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    let host = import.module == HOST_MODULE;
                    if host {
                        scan.note_host_import(import.name, import.ty);
                    }
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => {
                            scan.imported_funcs += 1;
                            scan.wasi_funcs
                                .push(schedule::is_wasi_module(import.module));
                        }
                        TypeRef::Global(_) => scan.globals += 1,
                        TypeRef::Memory(ty) => {
                            if !host && ty.shared && !ty.memory64 && scan.shared_memory.is_none() {
                                scan.shared_memory = Some(scan.memories.len() as u32);
                            }
                            scan.memories.push(ty);
                            scan.imported_memories += 1;
                        }
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for ty in reader {
                    scan.memories.push(ty?);
                }
            }
            Payload::GlobalSection(reader) => {
                scan.globals = scan.globals.saturating_add(reader.count())
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    if export?.name == MEMORY_EXPORT {
                        scan.has_memory_export = true;
                    }
                }
            }
            Payload::CodeSectionStart { range, .. } => {
                let mut reader = wasmparser::BinaryReader::new(
                    bytes.get(range.clone()).unwrap_or_default(),
                    range.start,
                );
                reader.read_var_u32()?;
                scan.code_count_len = reader.original_position() - range.start;
                scan.code = range;
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }
    // Every section the bodies are weighed against (types, imports,
    // memories) comes before the code section: the bodies are scanned
    // independently, on every core for a large module.
    let scanned = parallel::map(
        &bodies,
        |body| body.range().len(),
        |_, body| scan.body(body, unroll),
    );
    for body in scanned {
        let body = body?;
        scan.bodies += 1;
        scan.atomics_on_shared |= body.atomics_on_shared;
        if scan.wait_elsewhere.is_none() {
            scan.wait_elsewhere = body.wait_elsewhere;
        }
        if let Some(entry_checked) = body.entry_checked {
            scan.entry_checked.push(entry_checked);
        }
        scan.loops_checked &= body.loops_checked;
        scan.bodies_info.push(body.info);
    }
    scan.entry = checks::Placement::new(&scan.bodies_info, &[]).entry;
    if scan.stop_flag.is_some() {
        let needed = checks::Placement::new(&scan.bodies_info, &scan.entry_checked);
        scan.checked = scan.loops_checked && needed.covered_by(&scan.entry_checked);
    }
    Ok(scan)
}

impl Scan {
    /// What one function body tells: how it weighs for the placement of
    /// entry checks, the checks it has (in a module that imports the stop
    /// flag) and its waits and notifies.
    fn body(&self, body: &wasmparser::FunctionBody<'_>, unroll: bool) -> Result<BodyScan> {
        let mut reader = body.get_operators_reader()?;
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read()?);
        }
        let mut instrs = Vec::new();
        // Where the checks already in place start, and how many
        // instructions of the one under way are left.
        let mut checks_at = Vec::new();
        let mut in_check = 0;
        // A module to rewrite is weighed as the rewrite will write it, with
        // its small loops unrolled, so that the rewritten module, verified,
        // asks for the checks it was given.
        let unroll =
            unroll && self.stop_flag.is_none() && unroll::function_fits(body.range().len());
        let mut i = 0;
        while let Some(op) = ops.get(i) {
            if let Some((_, end)) = unroll.then(|| unroll::unrolled_end(&ops, i)).flatten() {
                let body = ops[i + 1..end].iter().map(|op| checks::Instr {
                    op: self.classify(op),
                    counts: !self.is_host_call(op),
                });
                instrs.extend(unroll::as_written(body));
                i = end + 1;
                continue;
            }
            if let (Some(flag), 0, Operator::I32Const { value: 0 }) = (self.stop_flag, in_check, op)
                && is_check(&ops[i..], flag)
            {
                checks_at.push(instrs.len());
                in_check = CHECK_LEN;
            }
            instrs.push(checks::Instr {
                op: self.classify(op),
                counts: in_check == 0 && !self.is_host_call(op),
            });
            in_check = in_check.saturating_sub(1);
            i += 1;
        }
        let mut scanned = BodyScan {
            info: checks::body(&instrs),
            entry_checked: None,
            loops_checked: true,
            atomics_on_shared: false,
            wait_elsewhere: None,
        };
        for op in &ops {
            let Some(memory) = wait_or_notify_memory(op) else {
                continue;
            };
            if Some(memory) == self.shared_memory {
                scanned.atomics_on_shared = true;
            } else if is_wait(op)
                && self.memories.get(memory as usize).is_some_and(|m| m.shared)
                && scanned.wait_elsewhere.is_none()
            {
                scanned.wait_elsewhere = Some(memory);
            }
        }
        if self.stop_flag.is_some() {
            let at = |i: usize| checks_at.binary_search(&i).is_ok();
            scanned.entry_checked = Some(at(0));
            scanned.loops_checked = instrs
                .iter()
                .enumerate()
                .all(|(i, instr)| instr.op != checks::Op::Open { is_loop: true } || at(i + 1));
        }
        Ok(scanned)
    }

    fn note_host_import(&mut self, name: &str, ty: TypeRef) {
        let func_index = self.imported_funcs;
        let memory_index = self.memories.len() as u32;
        let func_type = |t: &TypeRef| match t {
            TypeRef::Func(t) => self.func_types.get(*t as usize).cloned().flatten(),
            _ => None,
        };
        if matches!(ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
            self.host_funcs.push(func_index);
        }
        let routed = HOST_FUNCS
            .iter()
            .position(|(n, _, _)| *n == name)
            .filter(|&i| {
                let (_, params, results) = HOST_FUNCS[i];
                func_type(&ty).is_some_and(|f| f.params() == params && f.results() == results)
                    && !self.host_imports[i]
            });
        if let Some(i) = routed {
            self.host_imports[i] = true;
            return;
        }
        let ours = match name {
            STOP_FLAG if self.stop_flag.is_none() => match ty {
                TypeRef::Memory(m) if m == stop_flag_type() => {
                    self.stop_flag = Some(memory_index);
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !ours {
            self.foreign_host_import
                .get_or_insert_with(|| format!("`{HOST_MODULE}.{name}`"));
        }
    }

    /// What `op` is to the placement of entry checks: its control structure
    /// and its calls. Calls of the host's own functions are not calls of wasm.
    fn classify(&self, op: &Operator<'_>) -> checks::Op {
        use checks::Op;
        match op {
            Operator::Block { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => Op::Open { is_loop: false },
            Operator::Loop { .. } => Op::Open { is_loop: true },
            Operator::Else | Operator::Catch { .. } | Operator::CatchAll => Op::Arm,
            Operator::End | Operator::Delegate { .. } => Op::End,
            Operator::Call { function_index } | Operator::ReturnCall { function_index } => {
                if self.host_funcs.contains(function_index) {
                    return Op::Other;
                }
                match function_index.checked_sub(self.imported_funcs) {
                    Some(defined) => Op::Call(defined),
                    None => Op::Opaque,
                }
            }
            Operator::CallIndirect { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallRef { .. } => Op::Opaque,
            _ => Op::Other,
        }
    }

    /// Whether `op` calls one of the host's own functions: no work of the
    /// module's, so that a rewritten module (whose waits became
    /// `i32.const; call`) weighs what the original did.
    fn is_host_call(&self, op: &Operator<'_>) -> bool {
        matches!(op, Operator::Call { function_index } if self.host_funcs.contains(function_index))
    }
}

/// The type of the stop flag's memory: one page, shared, so that one store
/// of the host reaches every thread's instance.
fn stop_flag_type() -> wasmparser::MemoryType {
    wasmparser::MemoryType {
        memory64: false,
        shared: true,
        initial: 1,
        maximum: Some(1),
        page_size_log2: None,
    }
}

/// The instructions of a check: `i32.const 0; i32.atomic.load <flag>; if;
/// unreachable; end`.
const CHECK_LEN: usize = 5;

/// Whether `ops` start with a check of the stop flag `flag` exactly as the
/// rewrite writes it.
fn is_check(ops: &[Operator<'_>], flag: u32) -> bool {
    matches!(
        ops,
        [
            Operator::I32Const { value: 0 },
            Operator::I32AtomicLoad { memarg },
            Operator::If { blockty: wasmparser::BlockType::Empty },
            Operator::Unreachable,
            Operator::End,
            ..
        ] if memarg.memory == flag && memarg.offset == 0
    )
}

fn wait_or_notify_memory(op: &Operator<'_>) -> Option<u32> {
    match op {
        Operator::MemoryAtomicWait32 { memarg }
        | Operator::MemoryAtomicWait64 { memarg }
        | Operator::MemoryAtomicNotify { memarg } => Some(memarg.memory),
        _ => None,
    }
}

fn is_wait(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::MemoryAtomicWait32 { .. } | Operator::MemoryAtomicWait64 { .. }
    )
}

/// What the rewrite does to a module.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Nothing to do: a module this host already rewrote (or one
    /// indistinguishable from it, which is as safe).
    Keep,
    /// Add the stop checks, and:
    Rewrite {
        /// route waits and notifies on the shared memory through the host;
        route: bool,
        /// export the shared memory as `memory` for WASI.
        export_memory: bool,
    },
}

/// Decides what to do with a module, or refuses it.
///
/// Every module gets the stop checks, so a module is left alone only if it
/// already has them all: whether it is "already rewritten" is read off its
/// code, never off a marker it could forge. A module that imports the
/// host's functions or stop flag is left alone only if they are exactly the
/// ones the rewrite adds, with exactly its types, every loop checks the flag,
/// every function [`checks`] asks an entry check of has one, and
/// no native wait or notify on the shared memory is left. Anything else
/// importing from [`HOST_MODULE`] is refused, since the host did not put it
/// there.
///
/// A native wait on any other shared memory (a second one the module
/// defines with multi-memory, one a non-threaded module defines for itself,
/// a 64-bit one) is refused too: no host function can reach it, so a thread
/// parked there could not be stopped by the supervisor, a time-out or a
/// cancellation. Notifies never block and stay native there, and waits on
/// unshared memories trap in Wasmtime.
///
/// WASI (wiggle's glue) finds the caller's memory through an export named
/// `memory`. A module that imports its shared memory without exporting it
/// under that name gets the export added. An existing export named `memory`
/// is kept whatever it is: a memory is what WASI then uses, as under
/// `wasmtime run`; anything else makes WASI calls fail there as well.
fn plan(scan: &Scan) -> Result<Plan> {
    if let Some(import) = &scan.foreign_host_import {
        bail!(
            "the module imports {import}, but `{HOST_MODULE}` is reserved for the host's own \
             imports (only `{WAIT32}`, `{WAIT64}`, `{NOTIFY}` and `{STOP_FLAG}` \
             with the host's types); refusing to run it"
        );
    }
    if let Some(memory) = scan.wait_elsewhere {
        let what = match scan.memories.get(memory as usize) {
            Some(ty) if ty.memory64 => "a 64-bit shared memory",
            _ => "a shared memory the module defines itself",
        };
        bail!(
            "the module waits (`memory.atomic.wait`) on memory {memory}, {what}; the host can \
             only interrupt waits on the imported 32-bit shared memory, so such a wait could \
             never be stopped"
        );
    }
    let routed = scan.host_imports.iter().any(|&b| b);
    let reserved = routed || scan.stop_flag.is_some();
    if !reserved {
        return Ok(Plan::Rewrite {
            route: scan.atomics_on_shared,
            export_memory: scan.shared_memory.is_some() && !scan.has_memory_export,
        });
    }
    let not_ours = |why: &str| -> Result<Plan> {
        bail!(
            "the module imports the host's reserved `{HOST_MODULE}` imports, but {why}; it was \
             not produced by this host, refusing to run it"
        )
    };
    if routed && !scan.host_imports.iter().all(|&b| b) {
        return not_ours("only some of its wait and notify functions");
    }
    if scan.stop_flag.is_none() {
        return not_ours("not its stop flag");
    }
    if !scan.checked {
        return not_ours("does not check the stop flag at every loop and every call");
    }
    match scan.shared_memory {
        None if routed => not_ours("has no shared memory"),
        Some(_) if scan.atomics_on_shared => {
            not_ours("still waits or notifies natively on its shared memory")
        }
        Some(_) if !scan.has_memory_export => not_ours("does not export its memory"),
        _ => Ok(Plan::Keep),
    }
}

/// Compiles a module for use with [`WasiThreads`](crate::WasiThreads) or
/// [`Runner::run_module`](crate::Runner::run_module): adds the checks
/// through which a stop reaches its running threads and routes its atomic
/// waits through the host, so that the supervisor can stop every thread
/// wherever it is, and keeps the map from the compiled code's offsets back
/// to those of `bytes`, the module the user built, so that trap backtraces
/// name the user's code (see [`CompiledModule::format_backtrace`]).
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<CompiledModule> {
    compile_as(engine, bytes, None)
}

/// Compiles `bytes` for the schedule mode ([`Schedule`](crate::Schedule)):
/// everything [`compile`] adds, and the scheduling points of
/// `granularity`, which call the host's scheduler.
/// [`WasiThreads`](crate::WasiThreads) defines them when given a schedule
/// ([`ThreadsConfig::schedule`](crate::ThreadsConfig::schedule)) and
/// refuses such a module without one. A module this host already rewrote
/// has no place left for them and is refused.
/// [`CompiledModule::granularity`] tells the two kinds of module apart.
pub fn compile_scheduled(
    engine: &Engine,
    bytes: &[u8],
    granularity: Granularity,
) -> Result<CompiledModule> {
    compile_as(engine, bytes, Some(granularity))
}

/// [`compile`], or [`compile_scheduled`] with `schedule`.
fn compile_as(
    engine: &Engine,
    bytes: &[u8],
    schedule: Option<Granularity>,
) -> Result<CompiledModule> {
    let binary = to_binary(bytes)?;
    // DWARF the engine will not read is neither remapped nor compiled.
    let binary = dwarf::without_unread_dwarf(engine, &binary);
    Module::validate(engine, &binary)?;
    match rewrite_as(&binary, schedule)? {
        Some((rewritten, map)) => {
            match schedule {
                None => log::debug!("rewrote the module: stop checks added, atomic waits routed"),
                Some(g) => log::debug!(
                    "rewrote the module for schedule mode ({g:?}): stop checks, atomic waits \
                     routed, scheduling points added"
                ),
            }
            let module = Module::new(engine, &rewritten)?;
            Ok(CompiledModule::new(module, Arc::new(map)).with_granularity(schedule))
        }
        None => {
            let module = Module::new(engine, &binary)?;
            Ok(CompiledModule::new(module, Arc::new(OffsetMap::identity())))
        }
    }
}

/// Whether `module` was prepared by [`compile`]: it imports the stop flag
/// (which [`plan`] lets only a fully checked module do). A compiled module's
/// code cannot be read back, so this catches a `Module::new` by mistake; it
/// is `compile` that verifies a module which imports the flag itself.
pub(crate) fn is_prepared(module: &Module) -> bool {
    module
        .imports()
        .any(|i| i.module() == HOST_MODULE && i.name() == STOP_FLAG)
}

const COMPONENT: &str = "this is a WebAssembly component: wasi-threads does not support \
                         components; it runs core modules (e.g. built for wasm32-wasip1-threads)";

/// The binary form of a module given in binary or text form, with a one-line
/// error for anything else.
fn to_binary(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    if wasmparser::Parser::is_component(bytes) {
        bail!("{COMPONENT}");
    }
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.into());
    }
    if bytes.starts_with(b"\x7fELF") {
        bail!(
            "this is a precompiled module (`wasmtime compile` or `Module::serialize` output): \
             the host must rewrite a module before compiling it, so it needs the .wasm"
        );
    }
    let looks_like_text = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'(' || *b == b';');
    if !looks_like_text {
        bail!("not a WebAssembly module: it starts with neither `\\0asm` nor a text-format `(`");
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| format_err!("not a WebAssembly module: text format must be UTF-8"))?;
    let binary = wat::parse_str(text).map_err(|e| {
        format_err!(
            "invalid WebAssembly text: {}",
            e.to_string().replace('\n', " ")
        )
    })?;
    if wasmparser::Parser::is_component(&binary) {
        bail!("{COMPONENT}");
    }
    Ok(binary.into())
}

/// Returns the module with its stop checks added, its waits and notifies on
/// the imported shared memory routed through the host and its shared memory
/// exported as `memory`, or `None` if it was already rewritten. Text-format
/// input is accepted and returned as binary. A module that tries to keep
/// threads out of the host's reach is an error.
pub fn rewrite(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let binary = to_binary(bytes)?;
    Ok(rewrite_with_map(&binary)?.map(|(bytes, _)| bytes))
}

/// [`rewrite`] of a binary module, with the map of how its code moved.
pub fn rewrite_with_map(binary: &[u8]) -> Result<Option<(Vec<u8>, OffsetMap)>> {
    rewrite_as(binary, None)
}

/// [`rewrite_with_map`], with the schedule mode's instrumentation when
/// `schedule` is given: then never `None`, since a module already rewritten
/// (which the normal rewrite keeps as it is) is refused.
fn rewrite_as(
    binary: &[u8],
    schedule: Option<Granularity>,
) -> Result<Option<(Vec<u8>, OffsetMap)>> {
    // DWARF describes every instruction at one place, and a debugger or a
    // backtrace's file and line rely on it: a module that carries some (the
    // engine reads it, see `compile`) keeps its loops as they are.
    let unroll = !dwarf::carries_dwarf(binary);
    let scan = scan(binary, unroll).map_err(|e| e.context("invalid WebAssembly module"))?;
    let (route, export_memory) = match plan(&scan)? {
        Plan::Rewrite {
            route,
            export_memory,
        } => (route, export_memory),
        Plan::Keep if schedule.is_some() => bail!(
            "the module was already rewritten by this host (it checks the stop flag \
             everywhere); schedule mode must instrument the module as it was built: \
             give it the original .wasm"
        ),
        Plan::Keep => return Ok(None),
    };
    let routed_funcs = if route { ROUTED_FUNCS } else { 0 };
    // The schedule mode's functions are imported after the routed ones, and
    // its countdown is the global after the module's own.
    let schedule = schedule.map(|granularity| {
        let point = scan.imported_funcs + routed_funcs;
        schedule::Settings {
            granularity,
            point,
            tick: point + 1,
            countdown: scan.globals,
            wasi: scan.wasi_funcs.clone().into(),
        }
    });
    let added_funcs = routed_funcs + if schedule.is_some() { SCHED_FUNCS } else { 0 };
    let mut rewriter = Rewriter {
        code: BodyWriter {
            unroll,
            memory: scan.shared_memory,
            route,
            imported_funcs: scan.imported_funcs,
            imported_memories: scan.imported_memories,
            added_funcs,
            schedule,
        },
        export_memory,
        exported: false,
        types_added: false,
        imports_added: false,
        globals_added: false,
        first_added_type: scan.types,
        entry: scan.entry,
        map: MapBuilder::new(scan.code.clone(), scan.code_count_len, scan.bodies),
        debug_sections: Vec::new(),
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), binary)
        .map_err(|e| format_err!("cannot rewrite the module: {e}"))?;
    let map = if scan.bodies == 0 {
        OffsetMap::identity()
    } else {
        rewriter.map.finish(
            module.as_slice(),
            scan.imported_funcs,
            rewriter.code.added_funcs,
        )?
    };
    if !rewriter.debug_sections.is_empty() {
        match dwarf::remap(binary, &rewriter.debug_sections, &map) {
            Ok(sections) => {
                for (name, data) in &sections {
                    module.section(&wasm_encoder::CustomSection {
                        name: name.into(),
                        data: data.into(),
                    });
                }
            }
            Err(e) => log::debug!("dropped the module's DWARF: cannot remap it: {e:#}"),
        }
    }
    Ok(Some((module.finish(), map)))
}

struct Rewriter {
    /// How function bodies are written (and indices renumbered).
    code: BodyWriter,
    export_memory: bool,
    exported: bool,
    types_added: bool,
    imports_added: bool,
    globals_added: bool,
    /// The first of the types added at the end of the type section.
    first_added_type: u32,
    /// [`Scan::entry`]: which bodies get an entry check.
    entry: Vec<bool>,
    map: MapBuilder,
    /// The original `.debug_*` sections, re-emitted remapped at the end.
    debug_sections: Vec<(String, Range<usize>)>,
}

/// Writes function bodies: one per thread for a large module (see
/// [`parallel`]), each body independent of the others.
#[derive(Clone)]
struct BodyWriter {
    /// Whether small inner loops are unrolled ([`unroll`]).
    unroll: bool,
    /// The routed (imported, 32-bit, shared) memory, if there is one.
    memory: Option<u32>,
    route: bool,
    imported_funcs: u32,
    imported_memories: u32,
    /// The functions the rewrite imports after the module's own function
    /// imports: the routed waits and notify, if any, then the schedule
    /// mode's.
    added_funcs: u32,
    /// The schedule mode's instrumentation, when compiling for it.
    schedule: Option<schedule::Settings>,
}

impl Rewriter {
    fn memory_export(&mut self, exports: &mut wasm_encoder::ExportSection) {
        if let Some(memory) = self
            .code
            .memory
            .filter(|_| self.export_memory && !self.exported)
        {
            exports.export(MEMORY_EXPORT, wasm_encoder::ExportKind::Memory, memory);
        }
        self.exported = true;
    }

    /// The functions the rewrite imports, in order, with their types: the
    /// routed waits and notify, then the schedule mode's.
    fn added_host_funcs(&self) -> impl Iterator<Item = &HostFunc> {
        let routed = if self.code.route {
            &HOST_FUNCS[..]
        } else {
            &[]
        };
        let scheduled = match self.code.schedule {
            Some(_) => &SCHED_HOST_FUNCS[..],
            None => &[],
        };
        routed.iter().chain(scheduled)
    }

    /// The types of the added imports, at the end of the type section.
    fn add_types(&mut self, types: &mut wasm_encoder::TypeSection) {
        for (_, params, results) in self.added_host_funcs() {
            let convert = |t: &wasmparser::ValType| match t {
                wasmparser::ValType::I64 => wasm_encoder::ValType::I64,
                _ => wasm_encoder::ValType::I32,
            };
            types.ty().function(
                params.iter().map(convert).collect::<Vec<_>>(),
                results.iter().map(convert).collect::<Vec<_>>(),
            );
        }
        self.types_added = true;
    }

    /// The schedule mode's countdown (see [`schedule::countdown`]), at the
    /// end of the global section.
    fn add_globals(&mut self, globals: &mut wasm_encoder::GlobalSection) {
        if self.code.schedule.is_some() {
            globals.global(
                wasm_encoder::GlobalType {
                    val_type: wasm_encoder::ValType::I32,
                    mutable: true,
                    shared: false,
                },
                &wasm_encoder::ConstExpr::i32_const(1),
            );
        }
        self.globals_added = true;
    }

    /// The added imports, at the end of the import section: the routed
    /// functions, the schedule mode's, and the stop flag's memory, whose
    /// index is then the number of memories the module imports.
    fn add_imports(&mut self, imports: &mut wasm_encoder::ImportSection) {
        for (ty, (name, _, _)) in (self.first_added_type..).zip(self.added_host_funcs()) {
            imports.import(HOST_MODULE, name, wasm_encoder::EntityType::Function(ty));
        }
        let flag = stop_flag_type();
        imports.import(
            HOST_MODULE,
            STOP_FLAG,
            wasm_encoder::MemoryType {
                minimum: flag.initial,
                maximum: flag.maximum,
                memory64: false,
                shared: true,
                page_size_log2: None,
            },
        );
        self.imports_added = true;
    }
}

impl BodyWriter {
    /// The body rewritten, and where its instructions went.
    fn function(
        &mut self,
        body: &wasmparser::FunctionBody<'_>,
        entry: bool,
    ) -> Result<
        (wasm_encoder::Function, offsets::FunctionMoves),
        reencode::Error<std::convert::Infallible>,
    > {
        let mut func = self.new_function_with_parsed_locals(body)?;
        let mut reader = body.get_operators_reader()?;
        let (mut ops, mut at) = (Vec::new(), Vec::new());
        while !reader.eof() {
            at.push(reader.original_position());
            ops.push(reader.read()?);
        }
        let mut moves = offsets::FunctionMoves::default();
        if entry {
            // Reported at the function's start (its locals), so that the
            // first instruction still maps to itself and back.
            self.stop_check(&mut func, &mut moves, body.range().start);
        }
        let unroll = self.unroll && unroll::function_fits(body.range().len());
        let mut i = 0;
        while let Some(op) = ops.get(i) {
            let old = at[i];
            match unroll.then(|| unroll::unrolled_end(&ops, i)).flatten() {
                Some((blockty, end)) => {
                    let body = i + 1..end;
                    let (start, end_at) = (at[i], at[end]);
                    let (body_ops, body_at) = (&ops[body.clone()], &at[body]);
                    self.unrolled_loop(
                        &mut func,
                        &mut moves,
                        blockty,
                        body_ops,
                        body_at,
                        start..end_at,
                    )?;
                    i = end + 1;
                    continue;
                }
                None if matches!(op, Operator::Loop { .. }) => {
                    // Exact: the check after it maps to the same offset, and
                    // the loop must be what that offset maps back to.
                    moves.exact(func.byte_len(), old);
                    func.instruction(&self.instruction(op.clone())?);
                    self.stop_check(&mut func, &mut moves, old);
                }
                None => self.emit(&mut func, Some(&mut moves), old, op.clone())?,
            }
            i += 1;
        }
        moves.end(func.byte_len(), reader.original_position());
        Ok((func, moves))
    }

    fn host_func(&self, op: &Operator<'_>) -> Option<(u32, u64)> {
        if !self.route {
            return None;
        }
        let (which, memarg) = match op {
            Operator::MemoryAtomicWait32 { memarg } => (0, memarg),
            Operator::MemoryAtomicWait64 { memarg } => (1, memarg),
            Operator::MemoryAtomicNotify { memarg } => (2, memarg),
            _ => return None,
        };
        (Some(memarg.memory) == self.memory).then_some((self.imported_funcs + which, memarg.offset))
    }

    /// Emits `op` as the rewrite writes it (a wait or notify on the shared
    /// memory as a call of the host), recording where it went in `moves`
    /// unless it is the first copy of an unrolled loop's body.
    fn emit(
        &mut self,
        func: &mut wasm_encoder::Function,
        mut moves: Option<&mut offsets::FunctionMoves>,
        old: usize,
        op: Operator<'_>,
    ) -> Result<(), reencode::Error<std::convert::Infallible>> {
        let mut record = |func: &wasm_encoder::Function, exact: bool| {
            if let Some(moves) = moves.as_deref_mut() {
                match exact {
                    true => moves.exact(func.byte_len(), old),
                    false => moves.instruction(func.byte_len(), old),
                }
            }
        };
        match self.host_func(&op) {
            Some((host_func, offset)) => {
                // A 32-bit memory's offsets are below 2^32; passed as the
                // bits of an i32 and read back as u32 by the host.
                record(func, true);
                func.instruction(&wasm_encoder::Instruction::I32Const(offset as u32 as i32));
                // The call is where a trap in the host function is
                // reported: it stands for the original instruction.
                record(func, false);
                func.instruction(&wasm_encoder::Instruction::Call(host_func));
            }
            None => {
                let point = self
                    .schedule
                    .as_ref()
                    .and_then(|s| Some((s.point, s.point_before(&op, self.memory)?)));
                match point {
                    Some((point, kind)) => {
                        // The point stands for the instruction it precedes,
                        // as a routed wait's call does: a backtrace through
                        // the scheduler is told at that instruction, and
                        // the instruction's offset maps to the point's
                        // start (a breakpoint there stops before it).
                        record(func, true);
                        func.instruction(&wasm_encoder::Instruction::I32Const(kind));
                        record(func, true);
                        func.instruction(&wasm_encoder::Instruction::Call(point));
                        record(func, true);
                    }
                    None => record(func, false),
                }
                func.instruction(&self.instruction(op)?);
            }
        }
        Ok(())
    }

    /// Emits unrolled (see [`unroll`]) the loop of type `blockty` whose
    /// `loop` and `end` were at `loop_and_end` and whose body is `body`, its
    /// instructions at the offsets `at`.
    fn unrolled_loop(
        &mut self,
        func: &mut wasm_encoder::Function,
        moves: &mut offsets::FunctionMoves,
        blockty: wasmparser::BlockType,
        body: &[Operator<'_>],
        at: &[usize],
        loop_and_end: Range<usize>,
    ) -> Result<(), reencode::Error<std::convert::Infallible>> {
        use wasm_encoder::Instruction as I;
        let (start, end) = (loop_and_end.start, loop_and_end.end);
        let blockty = self.block_type(blockty)?;
        // What the rewrite adds stands for the loop; the loop's own
        // instruction stays what its offset maps back to.
        let added = |func: &mut wasm_encoder::Function, moves: &mut offsets::FunctionMoves, i| {
            moves.exact(func.byte_len(), start);
            func.instruction(&i);
        };
        added(func, moves, I::Block(blockty));
        added(func, moves, I::Loop(blockty));
        self.stop_check(func, moves, start);
        added(func, moves, I::Block(wasm_encoder::BlockType::Empty));
        let first = func.byte_len();
        self.copy(func, None, body, at, unroll::FIRST_COPY_SHIFT)?;
        let first_end = func.byte_len();
        added(func, moves, I::Br(2));
        added(func, moves, I::End);
        let second = func.byte_len();
        self.copy(func, Some(moves), body, at, unroll::SECOND_COPY_SHIFT)?;
        debug_assert_eq!(func.byte_len() - second, first_end - first);
        moves.copy(first..first_end, second);
        moves.exact(func.byte_len(), end);
        func.instruction(&I::End);
        moves.exact(func.byte_len(), end);
        func.instruction(&I::End);
        Ok(())
    }

    /// One copy of an unrolled loop's body, its branches out of the loop
    /// past `shift` more labels.
    fn copy(
        &mut self,
        func: &mut wasm_encoder::Function,
        mut moves: Option<&mut offsets::FunctionMoves>,
        body: &[Operator<'_>],
        at: &[usize],
        shift: u32,
    ) -> Result<(), reencode::Error<std::convert::Infallible>> {
        use wasm_encoder::Instruction as I;
        let mut depth = 0;
        for (op, &old) in body.iter().zip(at) {
            let relabel = |k| unroll::relabel(k, depth, shift);
            let branch = match op {
                Operator::Br { relative_depth } => Some(I::Br(relabel(*relative_depth))),
                Operator::BrIf { relative_depth } => Some(I::BrIf(relabel(*relative_depth))),
                Operator::BrTable { targets } => {
                    let labels = targets
                        .targets()
                        .map(|k| k.map(relabel))
                        .collect::<wasmparser::Result<Vec<_>>>()?;
                    Some(I::BrTable(labels.into(), relabel(targets.default())))
                }
                _ => None,
            };
            match op {
                Operator::Block { .. } | Operator::If { .. } => depth += 1,
                Operator::End => depth -= 1,
                _ => {}
            }
            match branch {
                Some(branch) => {
                    if let Some(moves) = moves.as_deref_mut() {
                        moves.instruction(func.byte_len(), old);
                    }
                    func.instruction(&branch);
                }
                None => self.emit(func, moves.as_deref_mut(), old, op.clone())?,
            }
        }
        Ok(())
    }

    /// Emits a check of the stop flag; the stack is as it was after it.
    /// Every instruction of it is reported at `original`.
    fn stop_check(
        &self,
        func: &mut wasm_encoder::Function,
        moves: &mut offsets::FunctionMoves,
        original: usize,
    ) {
        use wasm_encoder::Instruction as I;
        // An atomic load: a plain one could be taken from an earlier load
        // of the same word (at the function's entry) in a loop that stores
        // nothing, and the loop would never see the flag.
        let load = I::I32AtomicLoad(wasm_encoder::MemArg {
            offset: 0,
            align: 2,
            memory_index: self.imported_memories,
        });
        for instruction in [
            I::I32Const(0),
            load,
            I::If(wasm_encoder::BlockType::Empty),
            I::Unreachable,
            I::End,
        ] {
            moves.exact(func.byte_len(), original);
            func.instruction(&instruction);
        }
        // Every check is also where the schedule mode counts towards its
        // next preemption tick: checks are what bounds a thread's work, so
        // a thread that only computes still reaches the scheduler.
        if let Some(settings) = &self.schedule {
            for instruction in schedule::countdown(settings) {
                moves.exact(func.byte_len(), original);
                func.instruction(&instruction);
            }
        }
    }
}

/// The position of a section in a module's order of sections.
fn section_rank(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}

impl Reencode for BodyWriter {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(if func >= self.imported_funcs {
            func + self.added_funcs
        } else {
            func
        })
    }

    fn memory_index(&mut self, memory: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(if memory >= self.imported_memories {
            memory + 1
        } else {
            memory
        })
    }
}

impl Reencode for Rewriter {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.code.function_index(func)
    }

    fn memory_index(&mut self, memory: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.code.memory_index(memory)
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_type_section(self, types, section)?;
        self.add_types(types);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_import_section(self, imports, section)?;
        self.add_imports(imports);
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_global_section(self, globals, section)?;
        self.add_globals(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.memory_export(exports);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // A module without a type, import or export section gets one where
        // it belongs, for what the rewrite adds.
        let after = after.map_or(0, section_rank);
        let before = before.map_or(u8::MAX, section_rank);
        let due = |id| after < section_rank(id) && before > section_rank(id);
        if !self.types_added && due(SectionId::Type) {
            let mut types = wasm_encoder::TypeSection::new();
            self.add_types(&mut types);
            if !types.is_empty() {
                module.section(&types);
            }
        }
        if !self.imports_added && due(SectionId::Import) {
            let mut imports = wasm_encoder::ImportSection::new();
            self.add_imports(&mut imports);
            module.section(&imports);
        }
        if !self.globals_added && due(SectionId::Global) {
            let mut globals = wasm_encoder::GlobalSection::new();
            self.add_globals(&mut globals);
            if !globals.is_empty() {
                module.section(&globals);
            }
        }
        if !self.exported && due(SectionId::Export) {
            let mut exports = wasm_encoder::ExportSection::new();
            self.memory_export(&mut exports);
            if !exports.is_empty() {
                module.section(&exports);
            }
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let bodies = section
            .into_iter()
            .collect::<wasmparser::Result<Vec<_>>>()?;
        let (writer, entry) = (&self.code, &self.entry);
        let written = parallel::map(
            &bodies,
            |body| body.range().len(),
            |i, body| {
                let entry = entry.get(i).copied().unwrap_or(true);
                writer.clone().function(body, entry)
            },
        );
        for (body, written) in bodies.iter().zip(written) {
            let (func, moves) = written?;
            self.map.function(code.byte_len(), body, moves);
            code.function(&func);
        }
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // DWARF describes code offsets the rewrite moved: it is carried over
        // remapped once the whole code section is known.
        if section.name().starts_with(".debug_") {
            let start = section.data_offset();
            self.debug_sections.push((
                section.name().to_string(),
                start..start + section.data().len(),
            ));
            return Ok(());
        }
        reencode::utils::parse_custom_section(self, module, section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::ExternalKind;

    const GUEST: &str = r#"(module
      (import "env" "f" (func $f))
      (import "env" "memory" (memory 1 1 shared))
      (func $a (export "a") (call $b))
      (func $b
        (drop (memory.atomic.wait32 offset=8 (i32.const 0) (i32.const 0) (i64.const 0)))
        (drop (memory.atomic.wait64 (i32.const 0) (i64.const 0) (i64.const 0)))
        (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))
        (call $f))
      (table 1 funcref)
      (elem (i32.const 0) $b)
      (start $a))"#;

    #[test]
    fn rewritten_module_is_valid_and_calls_the_host() {
        let out = rewrite(GUEST.as_bytes()).unwrap().expect("rewritten");
        let features = wasmparser::WasmFeatures::default() | wasmparser::WasmFeatures::THREADS;
        wasmparser::Validator::new_with_features(features)
            .validate_all(&out)
            .unwrap();
        let mut imports = Vec::new();
        let mut names = Vec::new();
        let mut atomics_left = 0;
        let mut start = None;
        for payload in Parser::new(0).parse_all(&out) {
            match payload.unwrap() {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.unwrap();
                        imports.push(format!("{}.{}", import.module, import.name));
                    }
                }
                Payload::StartSection { func, .. } => start = Some(func),
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().unwrap();
                    while !ops.eof() {
                        if wait_or_notify_memory(&ops.read().unwrap()).is_some() {
                            atomics_left += 1;
                        }
                    }
                }
                Payload::CustomSection(section) => {
                    if let wasmparser::KnownCustom::Name(reader) = section.as_known() {
                        for name in reader {
                            if let wasmparser::Name::Function(map) = name.unwrap() {
                                for naming in map {
                                    let naming = naming.unwrap();
                                    names.push((naming.index, naming.name.to_string()));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(
            imports,
            [
                "env.f",
                "env.memory",
                "wasi-threads-host.memory.atomic.wait32",
                "wasi-threads-host.memory.atomic.wait64",
                "wasi-threads-host.memory.atomic.notify",
                "wasi-threads-host.stop-flag",
            ]
        );
        assert_eq!(atomics_left, 0);
        // The module's own functions moved past the three new functions, and
        // every reference to them (start, names) moved with them.
        assert_eq!(start, Some(4));
        assert_eq!(
            names,
            [
                (0, "f".to_string()),
                (4, "a".to_string()),
                (5, "b".to_string())
            ]
        );
    }

    /// Where each function body checks the stop flag (memory 1 in these
    /// modules): at its entry, after a `loop`, or elsewhere.
    fn checks(module: &[u8]) -> Vec<Vec<&'static str>> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut reader = body.get_operators_reader().unwrap();
                let mut ops = Vec::new();
                while !reader.eof() {
                    ops.push(reader.read().unwrap());
                }
                let mut seen = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    if let Operator::I32AtomicLoad { memarg } = op
                        && memarg.memory == 1
                    {
                        seen.push(match (i, i.checked_sub(2).map(|j| &ops[j])) {
                            (1, _) => "entry",
                            (_, Some(Operator::Loop { .. })) => "loop",
                            _ => "elsewhere",
                        });
                    }
                }
                out.push(seen);
            }
        }
        out
    }

    #[test]
    fn checks_go_to_loops_and_where_calls_could_run_on() {
        let wat = r#"(module
          (import "env" "memory" (memory 1 1 shared))
          (import "env" "f" (func $f))
          (type $t (func))
          (table 1 funcref)
          (func $leaf (drop (i32.add (i32.const 1) (i32.const 2))))
          (func $calls_host (call $f))
          (func $calls_wasm (call $leaf))
          (func $indirect (call_indirect (type $t) (i32.const 0)))
          (func $tail (return_call $leaf))
          (func $looping (loop $l (br_if $l (i32.const 0))) (loop (nop)))
          (func $fib (param i64) (result i64)
            (if (result i64) (i64.lt_u (local.get 0) (i64.const 2))
              (then (local.get 0))
              (else (i64.add
                (call $fib (i64.sub (local.get 0) (i64.const 1)))
                (call $fib (i64.sub (local.get 0) (i64.const 2)))))))
          (func $walk (param i32)
            (loop $l
              (call $walk (local.get 0))
              (br_if $l (local.get 0))))
          (func $both (param i32)
            (drop (i32.const 7))
            (block (br_if 0 (local.get 0)) (call $both (local.get 0)))
            (call $both (local.get 0))))"#;
        let out = rewrite(wat.as_bytes()).unwrap().expect("rewritten");
        validate(&out);
        assert_eq!(
            checks(&out),
            [
                vec![],
                // An imported function could be wasm of another instance,
                // which no analysis here sees through.
                vec!["entry"],
                // A small callee: bounded without a check.
                vec![],
                vec!["entry"],
                vec![],
                vec!["loop", "loop"],
                // Recursive.
                vec!["entry"],
                // Recursive, but only behind the loop's check.
                vec!["loop"],
                vec!["entry"],
            ]
        );
        assert!(rewrite(&out).unwrap().is_none(), "idempotent");
        // A module whose recursive function lacks its entry check, or has
        // it elsewhere, was not rewritten here.
        let fib = |entry: &str, first: &str| {
            format!(
                r#"(module
                  (import "wasi-threads-host" "stop-flag" (memory 1 1 shared))
                  (func $fib (param i64) (result i64)
                    {entry}
                    (if (result i64) (i64.lt_u (local.get 0) (i64.const 2))
                      (then (local.get 0))
                      (else
                        (i64.sub (local.get 0) (i64.const 1))
                        {first} call $fib
                        (call $fib (i64.sub (local.get 0) (i64.const 2)))
                        i64.add))))"#
            )
        };
        let check = "(if (i32.atomic.load (i32.const 0)) (then unreachable))";
        assert!(rewrite(fib(check, "").as_bytes()).unwrap().is_none());
        for forged in [fib("", ""), fib("", check)] {
            let err = rewrite(forged.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("does not check the stop flag"), "{err}");
        }
    }

    #[test]
    fn every_module_gets_checks_and_memories_keep_their_meaning() {
        // No shared memory, no imports, a memory of its own that the checks'
        // memory must not displace.
        let wat = r#"(module (memory (export "m") 1) (data (i32.const 0) "x")
            (func (export "_start") (loop (br_if 0 (i32.eqz (i32.load8_u (i32.const 0)))))))"#;
        let out = rewrite(wat.as_bytes()).unwrap().expect("rewritten");
        validate(&out);
        let mut memory_ops = Vec::new();
        for payload in Parser::new(0).parse_all(&out) {
            match payload.unwrap() {
                Payload::ExportSection(reader) => {
                    for e in reader {
                        let e = e.unwrap();
                        if e.kind == wasmparser::ExternalKind::Memory {
                            assert_eq!(
                                (e.name, e.index),
                                ("m", 1),
                                "the export follows its memory"
                            );
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().unwrap();
                    while !ops.eof() {
                        match ops.read().unwrap() {
                            Operator::I32Load8U { memarg } => {
                                memory_ops.push(("load", memarg.memory))
                            }
                            Operator::I32AtomicLoad { memarg } => {
                                memory_ops.push(("check", memarg.memory))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        // The loop is unrolled: its body is there twice, checked once.
        assert_eq!(memory_ops, [("check", 0), ("load", 1), ("load", 1)]);
        assert!(rewrite(&out).unwrap().is_none(), "idempotent");
    }

    #[test]
    fn a_forged_stop_flag_without_the_checks_is_refused() {
        let forged = r#"(module
          (import "wasi-threads-host" "stop-flag" (memory 1 1 shared))
          (func (export "_start") (loop (br 0))))"#;
        let err = rewrite(forged.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("does not check the stop flag"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn bodies_rewritten_on_several_threads_are_the_same_bytes_and_map() {
        // Many bodies of every kind the rewrite treats differently: small
        // loops it unrolls, nested ones it does not, waits it routes,
        // recursion and calls through a table that need entry checks.
        let mut wat = String::from(
            r#"(module
              (import "env" "memory" (memory 1 1 shared))
              (table 64 funcref)
              (type $t (func (param i32) (result i32)))"#,
        );
        for i in 0..64 {
            wat.push_str(&format!(
                r#"
              (func $f{i} (param $n i32) (result i32) (local $s i32)
                (loop $small
                  (local.set $s (i32.add (local.get $s) (i32.const {i})))
                  (br_if $small (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
                (loop $outer
                  (loop $inner (br_if $inner (i32.eqz (local.get $s))))
                  (br_if $outer (i32.lt_u (local.get $s) (i32.const 0))))
                (drop (memory.atomic.wait32 offset={i} (i32.const 0) (i32.const 1) (i64.const 0)))
                (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))
                (if (local.get $n) (then (drop (call $f{i} (i32.const 0)))))
                (call_indirect (type $t) (local.get $s) (i32.const {i})))
              (elem (i32.const {i}) $f{i})"#
            ));
        }
        wat.push(')');
        let binary = wat::parse_str(&wat).unwrap();
        let rewritten = |threads| {
            parallel::FORCE_THREADS.set(Some(threads));
            let (bytes, map) = rewrite_with_map(&binary).unwrap().unwrap();
            let again = rewrite_with_map(&bytes).unwrap();
            parallel::FORCE_THREADS.set(None);
            assert!(
                again.is_none(),
                "on {threads} threads, rewriting twice changed the module"
            );
            (bytes, map.encode().unwrap())
        };
        let one = rewritten(1);
        validate(&one.0);
        for threads in [2, 3, 8] {
            assert!(
                rewritten(threads) == one,
                "{threads} threads wrote another module or map"
            );
        }
    }

    #[test]
    fn rewriting_twice_is_a_no_op() {
        let once = rewrite(GUEST.as_bytes()).unwrap().unwrap();
        assert!(rewrite(&once).unwrap().is_none());
    }

    #[test]
    fn not_wasm_is_one_clear_line() {
        let err = rewrite(b"hello").unwrap_err().to_string();
        assert!(err.starts_with("not a WebAssembly module"), "{err}");
        assert!(!err.contains('\n'));
    }

    fn exports(module: &[u8]) -> Vec<(String, ExternalKind, u32)> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::ExportSection(reader) = payload.unwrap() {
                for export in reader {
                    let export = export.unwrap();
                    out.push((export.name.to_string(), export.kind, export.index));
                }
            }
        }
        out
    }

    fn validate(module: &[u8]) {
        let features = wasmparser::WasmFeatures::default() | wasmparser::WasmFeatures::THREADS;
        wasmparser::Validator::new_with_features(features)
            .validate_all(module)
            .unwrap();
    }

    #[test]
    fn the_shared_memory_is_exported_for_wasi() {
        // No export section at all: one is added, in its place.
        let none = r#"(module (import "env" "memory" (memory 1 1 shared))
            (func $f) (start $f) (data (i32.const 0) "x"))"#;
        let out = rewrite(none.as_bytes()).unwrap().expect("rewritten");
        validate(&out);
        assert_eq!(exports(&out), [("memory".into(), ExternalKind::Memory, 0)]);
        // Exported under another name: exported as `memory` too.
        let other = r#"(module (import "env" "memory" (memory 1 1 shared))
            (export "mem" (memory 0)) (func (export "_start")))"#;
        let out = rewrite(other.as_bytes()).unwrap().expect("rewritten");
        validate(&out);
        assert_eq!(
            exports(&out),
            [
                ("mem".into(), ExternalKind::Memory, 0),
                ("_start".into(), ExternalKind::Func, 0),
                ("memory".into(), ExternalKind::Memory, 0),
            ]
        );
        assert!(rewrite(&out).unwrap().is_none(), "idempotent");
    }

    /// Every instruction of every function maps to an instruction of the
    /// same kind (a rewritten wait to the `i32.const` that starts its
    /// replacement), and back.
    #[test]
    fn every_instruction_maps_to_itself_and_back() {
        for module in [GUEST.as_bytes(), C_DEBUG_TRAP] {
            let binary = to_binary(module).unwrap();
            let (out, map) = rewrite_with_map(&binary).unwrap().unwrap();
            let before = instructions(&binary);
            let after: std::collections::HashMap<usize, String> =
                instructions(&out).into_iter().collect();
            assert!(!before.is_empty());
            for (offset, op) in before {
                let new = map.rewritten_offset(offset).expect("mapped");
                let found = after.get(&new).map(String::as_str);
                assert_eq!(found, Some(rewritten_as(&op, found)), "{offset:#x}");
                assert_eq!(map.original_offset(new), Some(offset), "{offset:#x}");
            }
        }
    }

    /// Code in either copy of an unrolled loop's body is told as the one
    /// instruction of the original it copies, in backtraces and in the map
    /// the cache keeps.
    #[test]
    fn both_copies_of_an_unrolled_body_map_to_the_original() {
        let wat = r#"(module (func (export "f") (param i32) (result i32)
            (loop $l (result i32)
              (drop (i32.div_u (i32.const 1) (local.get 0)))
              (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
              (br_if $l (local.get 0))
              (i32.const 7))))"#;
        let binary = to_binary(wat.as_bytes()).unwrap();
        let (out, map) = rewrite_with_map(&binary).unwrap().unwrap();
        validate(&out);
        let decoded = OffsetMap::decode(&map.encode().unwrap()).expect("decodes");
        let original: std::collections::HashMap<usize, String> =
            instructions(&binary).into_iter().collect();
        let divisions = |module: &[u8]| -> Vec<usize> {
            instructions(module)
                .into_iter()
                .filter(|(_, op)| op == "I32DivU")
                .map(|(at, _)| at)
                .collect()
        };
        let [division] = divisions(&binary)[..] else {
            panic!("one division in the original")
        };
        let copies = divisions(&out);
        assert_eq!(copies.len(), 2, "the loop is unrolled");
        for copy in copies {
            assert_eq!(map.original_offset(copy), Some(division));
            assert_eq!(decoded.original_offset(copy), Some(division));
        }
        // Every instruction of the rewritten module is told as one of the
        // original's: itself, or (for what the rewrite added) the loop, its
        // end or the function's start.
        for (at, op) in instructions(&out) {
            let old = map.original_offset(at).expect("in the code");
            assert_eq!(decoded.original_offset(at), Some(old));
            if let Some(was) = original.get(&old) {
                assert!(
                    was == &op || matches!(was.as_str(), "Loop" | "End"),
                    "{op} at {at:#x} told as {was} at {old:#x}"
                );
            }
        }
    }

    /// A module whose DWARF is carried over keeps its loops as they are:
    /// a debugger expects each instruction at one place.
    #[test]
    fn loops_are_unrolled_only_in_modules_without_dwarf() {
        let engine = Engine::new(&crate::engine_config()).unwrap();
        let stripped = dwarf::without_unread_dwarf(&engine, C_DEBUG_TRAP);
        assert!(dwarf::carries_dwarf(C_DEBUG_TRAP));
        assert!(
            !dwarf::carries_dwarf(&stripped),
            "only the empty marker is left"
        );
        let count = |module: &[u8], op: &str| {
            instructions(module)
                .iter()
                .filter(|(_, name)| name == op)
                .count()
        };
        let with_dwarf = rewrite(C_DEBUG_TRAP).unwrap().unwrap();
        let without = rewrite(&stripped).unwrap().unwrap();
        let loops = count(C_DEBUG_TRAP, "Loop");
        assert!(loops > 0);
        // Each check adds one `if`; unrolling adds two blocks per loop.
        let ifs = |module: &[u8]| count(module, "If") - count(C_DEBUG_TRAP, "If");
        let added_blocks = |module: &[u8]| count(module, "Block") - count(C_DEBUG_TRAP, "Block");
        assert_eq!(added_blocks(&with_dwarf), 0);
        assert_eq!(count(&with_dwarf, "Loop"), loops);
        let unrolled = added_blocks(&without) / 2;
        assert!(unrolled > 0, "some of its {loops} loops are small");
        assert_eq!(count(&without, "Loop"), loops);
        // Every loop and some entries are checked (the unrolled code weighs
        // more, and asks for a few entry checks more).
        assert!(ifs(&with_dwarf) >= loops && ifs(&without) >= ifs(&with_dwarf));
    }

    /// What the instruction `op` maps to in the rewritten module: a routed
    /// wait to the `i32.const` that starts its call, an unrolled loop (when
    /// `found` says it was) to the `block` around it.
    fn rewritten_as<'a>(op: &'a str, found: Option<&str>) -> &'a str {
        match op {
            "MemoryAtomicWait32" | "MemoryAtomicWait64" | "MemoryAtomicNotify" => "I32Const",
            "Loop" if found == Some("Block") => "Block",
            op => op,
        }
    }

    fn instructions(module: &[u8]) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut ops = body.get_operators_reader().unwrap();
                while !ops.eof() {
                    let at = ops.original_position();
                    let op = format!("{:?}", ops.read().unwrap());
                    let name = op.split(|c: char| !c.is_alphanumeric()).next().unwrap();
                    out.push((at, name.to_string()));
                }
            }
        }
        out
    }

    const C_DEBUG_TRAP: &[u8] = include_bytes!("../../../../wasm-fixtures/c-debug-trap.wasm");

    /// The rows of every line program: (address, file name, line, column),
    /// end-of-sequence rows left out.
    fn line_rows(module: &[u8]) -> (Vec<(u64, String, u64, u64)>, usize) {
        let mut sections = std::collections::HashMap::new();
        let mut code_start = 0;
        for payload in Parser::new(0).parse_all(module) {
            match payload.unwrap() {
                Payload::CustomSection(s) => {
                    sections.insert(s.name().to_string(), s.data());
                }
                Payload::CodeSectionStart { range, .. } => code_start = range.start,
                _ => {}
            }
        }
        let dwarf = gimli::Dwarf::load(|id| -> gimli::Result<_> {
            Ok(gimli::EndianSlice::new(
                sections.get(id.name()).copied().unwrap_or_default(),
                gimli::LittleEndian,
            ))
        })
        .unwrap();
        let mut rows_out = Vec::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next().unwrap() {
            let unit = dwarf.unit(header).unwrap();
            let Some(program) = unit.line_program.clone() else {
                continue;
            };
            let mut rows = program.rows();
            while let Some((header, row)) = rows.next_row().unwrap() {
                if row.end_sequence() {
                    continue;
                }
                let file = row
                    .file(header)
                    .map(|f| {
                        let name = dwarf.attr_string(&unit, f.path_name()).unwrap();
                        name.to_string_lossy().into_owned()
                    })
                    .unwrap_or_default();
                let column = match row.column() {
                    gimli::ColumnType::LeftEdge => 0,
                    gimli::ColumnType::Column(c) => c.get(),
                };
                rows_out.push((
                    row.address(),
                    file,
                    row.line().map_or(0, |l| l.get()),
                    column,
                ));
            }
        }
        (rows_out, code_start)
    }

    /// Every row of the original `.debug_line` is in the rewritten one, at
    /// the remapped address, which is the start of the same instruction.
    #[test]
    fn remapped_debug_line_keeps_every_row_on_its_instruction() {
        let (out, map) = rewrite_with_map(C_DEBUG_TRAP).unwrap().unwrap();
        let (before, old_code) = line_rows(C_DEBUG_TRAP);
        let (after, new_code) = line_rows(&out);
        assert!(before.len() > 100, "the fixture has line info");
        let after: std::collections::HashSet<_> = after.into_iter().collect();
        let old_ops: std::collections::HashMap<usize, String> =
            instructions(C_DEBUG_TRAP).into_iter().collect();
        let new_ops: std::collections::HashMap<usize, String> =
            instructions(&out).into_iter().collect();
        let mut on_instructions = 0;
        for (address, file, line, column) in before {
            if address >= 0xffff_fffe {
                continue;
            }
            let old = old_code + address as usize;
            let new = map.rewritten_offset(old).expect("in the code");
            let row = ((new - new_code) as u64, file, line, column);
            assert!(after.contains(&row), "missing {row:?} (was at {old:#x})");
            if let Some(op) = old_ops.get(&old) {
                on_instructions += 1;
                let found = new_ops.get(&new).map(String::as_str);
                assert_eq!(found, Some(rewritten_as(op, found)), "{old:#x}");
            }
        }
        assert!(on_instructions > 100);
    }
}
