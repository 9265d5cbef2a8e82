//! Running one module on one thread and recording everything it lets an
//! embedder observe.

use crate::generate::{GLOBAL_EXPORT_PREFIX, TABLE_EXPORT_PREFIX};
use std::sync::OnceLock;
use wasmtime::{
    Config, Engine, Extern, ExternType, Func, FuncType, Global, GlobalType, Instance, Memory,
    MemoryType, MemoryTypeBuilder, Module, OptLevel, Ref, RefType, SharedMemory, Store,
    StoreLimits, StoreLimitsBuilder, Table, TableType, Trap, Val, ValType,
};

// The host functions a rewritten module imports, spelled out here rather than
// taken from the rewrite so that a change of that interface shows up.
const HOST_MODULE: &str = "wasi-threads-host";
const WAIT32: &str = "memory.atomic.wait32";
const WAIT64: &str = "memory.atomic.wait64";
const NOTIFY: &str = "memory.atomic.notify";

/// Fuel for instantiation (the start function) and for each call.
const FUEL: u64 = 20_000;
/// How many entries of each table are called after the exports.
const TABLE_CALLS: u64 = 8;

/// The most a memory may hold, in 64 KiB pages, and a table in elements.
/// The observation copies every memory and table whole, so without a cap a
/// module that grows an unbounded memory64 (as seed 3,019,866 grows one to
/// 64 GiB within its fuel) aborts the run on the copy. The cap applies to
/// both sides alike (`memory.grow` and `table.grow` past it return -1 on
/// both), so the comparison stays exact; generated modules start far below
/// it (`max_memory*_bytes`, `max_table_elements`).
pub const MAX_MEMORY_PAGES: u64 = 64;
pub const MAX_TABLE_ELEMENTS: usize = 10_000;

/// The engine both sides run on: the proposals `wasm-smith` is asked for,
/// fuel, and deterministic floats so that NaN bits never differ between two
/// compilations. The workspace builds Wasmtime without its `gc` feature, so
/// GC types (`externref` among them) and exceptions are unavailable; the
/// generator drops modules that use them.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config
            .wasm_threads(true)
            .shared_memory(true)
            .wasm_multi_memory(true)
            .wasm_memory64(true)
            .wasm_tail_call(true)
            .wasm_simd(true)
            .wasm_relaxed_simd(true)
            .relaxed_simd_deterministic(true)
            .wasm_extended_const(true)
            .wasm_bulk_memory(true)
            .wasm_multi_value(true)
            .consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            // Compiling dominates the time per module; the rewrite does not
            // care how well the code is optimised.
            .cranelift_opt_level(OptLevel::None)
            .parallel_compilation(false);
        Engine::new(&config).expect("the harness's engine configuration is valid")
    })
}

/// A value as the two sides can compare it: references by type only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
    /// `None` for null; else a description of the type of what it refers to.
    Ref(Option<String>),
}

/// How a call or an instantiation ended, if not with values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Trap(Trap),
    /// The harness's `env.trap` import trapped.
    HostTrap,
    /// The host `wait` of the rewritten module found the value equal and no
    /// timeout: on one thread, blocked for ever. The guard in every test
    /// module rules this out, so it only happens if the rewrite passed the
    /// wrong operands.
    WouldBlockForever,
    Other(String),
}

impl Failure {
    /// Fuel and stack use differ between the two modules (one instruction
    /// becomes two plus a host call), so these say nothing about the rewrite.
    pub fn is_inconclusive(&self) -> bool {
        matches!(self, Failure::Trap(Trap::OutOfFuel | Trap::StackOverflow))
    }
}

pub type Outcome = Result<Vec<Value>, Failure>;

/// Everything one run lets an embedder see.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Instantiation (which runs the start function) then one entry per
    /// call, in order; a run stops at the first inconclusive outcome.
    pub steps: Vec<(String, Outcome)>,
    /// The host imports called, with their arguments, in order.
    pub host_calls: Vec<String>,
    pub memories: Vec<Vec<u8>>,
    pub globals: Vec<(String, Value)>,
    pub tables: Vec<(String, Vec<Value>)>,
}

impl Observation {
    pub fn inconclusive(&self) -> bool {
        self.steps
            .last()
            .is_some_and(|(_, o)| o.as_ref().is_err_and(Failure::is_inconclusive))
    }
}

#[derive(Debug)]
struct HostTrap;
impl std::fmt::Display for HostTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("env.trap")
    }
}
impl std::error::Error for HostTrap {}

#[derive(Debug)]
struct WouldBlockForever;
impl std::fmt::Display for WouldBlockForever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wait would block forever on one thread")
    }
}
impl std::error::Error for WouldBlockForever {}

fn failure(err: wasmtime::Error) -> Failure {
    if let Some(trap) = err.downcast_ref::<Trap>() {
        Failure::Trap(*trap)
    } else if err.downcast_ref::<HostTrap>().is_some() {
        Failure::HostTrap
    } else if err.downcast_ref::<WouldBlockForever>().is_some() {
        Failure::WouldBlockForever
    } else {
        Failure::Other(err.root_cause().to_string())
    }
}

fn describe_func(store: &Store<Host>, func: &Func) -> String {
    func_type_string(&func.ty(store))
}

fn func_type_string(ty: &FuncType) -> String {
    let params: Vec<String> = ty.params().map(|t| t.to_string()).collect();
    let results: Vec<String> = ty.results().map(|t| t.to_string()).collect();
    format!("func({}) -> ({})", params.join(", "), results.join(", "))
}

fn value(store: &Store<Host>, val: &Val) -> Value {
    match val {
        Val::I32(v) => Value::I32(*v),
        Val::I64(v) => Value::I64(*v),
        Val::F32(v) => Value::F32(*v),
        Val::F64(v) => Value::F64(*v),
        Val::V128(v) => Value::V128(v.as_u128()),
        Val::FuncRef(f) => Value::Ref(f.as_ref().map(|f| describe_func(store, f))),
        Val::ExternRef(r) => Value::Ref(r.as_ref().map(|_| "externref".into())),
        Val::AnyRef(r) => Value::Ref(r.as_ref().map(|_| "anyref".into())),
        Val::ExnRef(r) => Value::Ref(r.as_ref().map(|_| "exnref".into())),
        Val::ContRef(r) => Value::Ref(r.as_ref().map(|_| "contref".into())),
    }
}

fn ref_value(store: &Store<Host>, r: &Ref) -> Value {
    match r {
        Ref::Func(f) => Value::Ref(f.as_ref().map(|f| describe_func(store, f))),
        Ref::Extern(r) => Value::Ref(r.as_ref().map(|_| "externref".into())),
        other => Value::Ref((!other.is_null()).then(|| "other ref".into())),
    }
}

/// The fixed arguments every function is called with: a few values that
/// make for valid and invalid addresses, varied by position.
fn argument(ty: &ValType, position: usize) -> Val {
    let k = position % 5;
    match ty {
        ValType::I32 => Val::I32([0, 1, 8, 65532, -1][k]),
        ValType::I64 => Val::I64([0, 1, 8, 65532, -1][k]),
        ValType::F32 => Val::F32([0.0f32, 1.5, -2.0, f32::INFINITY, 1e-3][k].to_bits()),
        ValType::F64 => Val::F64([0.0f64, 1.5, -2.0, f64::INFINITY, 1e-3][k].to_bits()),
        ValType::V128 => {
            Val::V128((0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128 * k as u128).into())
        }
        ValType::Ref(_) => Val::default_for_ty(ty).unwrap_or(Val::FuncRef(None)),
    }
}

/// A result the host import `name` gives for `args`: a hash of them.
fn host_result(name: &str, args: &[Val], position: usize, ty: &ValType) -> Val {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    name.bytes().for_each(|b| mix(u64::from(b)));
    for a in args {
        mix(match a {
            Val::I32(v) => *v as u32 as u64,
            Val::I64(v) => *v as u64,
            Val::F32(v) => u64::from(*v),
            Val::F64(v) => *v,
            _ => 0,
        });
    }
    mix(position as u64);
    match ty {
        // Small values, so that results used as addresses are often valid.
        ValType::I32 => Val::I32((h % 70_000) as i32),
        ValType::I64 => Val::I64((h % 70_000) as i64),
        ValType::F32 => Val::F32((h as f32).to_bits()),
        ValType::F64 => Val::F64((h as f64).to_bits()),
        ValType::V128 => Val::V128(u128::from(h).into()),
        ValType::Ref(_) => Val::default_for_ty(ty).unwrap_or(Val::FuncRef(None)),
    }
}

fn describe_args(args: &[Val]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|a| match a {
            Val::I32(v) => v.to_string(),
            Val::I64(v) => format!("{v}L"),
            Val::F32(v) => format!("f32:{v:#x}"),
            Val::F64(v) => format!("f64:{v:#x}"),
            Val::V128(v) => format!("v128:{:#x}", v.as_u128()),
            Val::FuncRef(f) => format!("funcref:{}", f.is_some()),
            _ => "ref".into(),
        })
        .collect();
    parts.join(",")
}

pub struct Host {
    calls: Vec<String>,
    limits: StoreLimits,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            calls: Vec::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size((MAX_MEMORY_PAGES << 16) as usize)
                .table_elements(MAX_TABLE_ELEMENTS)
                .build(),
        }
    }
}

/// A shared memory of type `ty` capped at [`MAX_MEMORY_PAGES`]: Wasmtime
/// applies no store limiter to shared memories, so the cap is their
/// maximum (a smaller maximum than the import declares still matches it).
fn capped_shared_memory(engine: &Engine, ty: &MemoryType) -> wasmtime::Result<SharedMemory> {
    let maximum = ty
        .maximum()
        .unwrap_or(u64::MAX)
        .min(MAX_MEMORY_PAGES.max(ty.minimum()));
    let ty = MemoryTypeBuilder::new()
        .min(ty.minimum())
        .max(Some(maximum))
        .memory64(ty.is_64())
        .shared(true)
        .page_size_log2(ty.page_size_log2())
        .build()?;
    SharedMemory::new(engine, ty)
}

/// The memory a rewritten module's host waits act on: the first imported
/// shared 32-bit memory, as the rewrite chooses it.
fn wait_memory(module: &Module) -> Option<usize> {
    module
        .imports()
        .filter(|i| i.module() != HOST_MODULE && matches!(i.ty(), ExternType::Memory(_)))
        .position(|i| match i.ty() {
            ExternType::Memory(m) => m.is_shared() && !m.is_64(),
            _ => false,
        })
}

/// The effective address of an atomic access of `width` bytes, checked as
/// Wasmtime's native instruction checks it: an `addr + offset` that
/// overflows the 32-bit index type traps as out of bounds first (Cranelift
/// adds them with an overflow trap before calling its libcall), then
/// alignment, then bounds.
fn effective_address(
    memory: &SharedMemory,
    addr: i32,
    offset: i32,
    width: u64,
) -> wasmtime::Result<usize> {
    let ea = u64::from(addr as u32) + u64::from(offset as u32);
    if ea > u64::from(u32::MAX) {
        return Err(Trap::MemoryOutOfBounds.into());
    }
    if ea % width != 0 {
        return Err(Trap::HeapMisaligned.into());
    }
    if ea + width > memory.data_size() as u64 {
        return Err(Trap::MemoryOutOfBounds.into());
    }
    Ok(ea as usize)
}

fn load(memory: &SharedMemory, ea: usize, width: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, cell) in memory.data()[ea..ea + width].iter().enumerate() {
        // SAFETY: the module runs on this thread only and is inside a host
        // call, so nothing writes the memory concurrently.
        bytes[i] = unsafe { *cell.get() };
    }
    u64::from_le_bytes(bytes)
}

/// `memory.atomic.wait` on one thread: nothing can ever notify, so a wait
/// that parks either times out (2, at once, as no one can tell the
/// difference) or never returns.
fn host_wait(
    memory: &SharedMemory,
    addr: i32,
    offset: i32,
    expected: u64,
    width: u64,
    timeout: i64,
) -> wasmtime::Result<i32> {
    let ea = effective_address(memory, addr, offset, width)?;
    if load(memory, ea, width as usize) != expected {
        return Ok(1);
    }
    if timeout < 0 {
        return Err(WouldBlockForever.into());
    }
    Ok(2)
}

fn define_host_waits(store: &mut Store<Host>, memory: &SharedMemory, name: &str) -> Option<Func> {
    let m = memory.clone();
    Some(match name {
        WAIT32 => Func::wrap(
            &mut *store,
            move |addr: i32, expected: i32, timeout: i64, offset: i32| {
                host_wait(&m, addr, offset, u64::from(expected as u32), 4, timeout)
            },
        ),
        WAIT64 => Func::wrap(
            &mut *store,
            move |addr: i32, expected: i64, timeout: i64, offset: i32| {
                host_wait(&m, addr, offset, expected as u64, 8, timeout)
            },
        ),
        NOTIFY => Func::wrap(
            &mut *store,
            move |addr: i32, _count: i32, offset: i32| -> wasmtime::Result<i32> {
                effective_address(&m, addr, offset, 4)?;
                Ok(0)
            },
        ),
        _ => return None,
    })
}

enum OwnedMemory {
    Shared(SharedMemory),
    Local(Memory),
}

/// Instantiates `module` with the harness's imports, calls every exported
/// function and then every function in its tables, and records what it saw.
pub fn observe(module: &Module) -> Result<Observation, String> {
    let engine = engine();
    let mut store = Store::new(engine, Host::default());
    store.limiter(|host| &mut host.limits);
    let mut obs = Observation::default();
    let mut imports = Vec::new();
    let mut memories = Vec::new();
    let waits_on = wait_memory(module);
    let mut wait_shared = None;
    for import in module.imports() {
        let (module_name, name) = (import.module(), import.name());
        let ext: Extern = match import.ty() {
            // The rewrite's stop flag: never raised here, and not part of
            // what is compared (the original has no such memory).
            ExternType::Memory(ty) if module_name == HOST_MODULE => SharedMemory::new(engine, ty)
                .map_err(|e| e.to_string())?
                .into(),
            ExternType::Memory(ty) => {
                if ty.is_shared() {
                    let m = capped_shared_memory(engine, &ty).map_err(|e| e.to_string())?;
                    if Some(memories.len()) == waits_on {
                        wait_shared = Some(m.clone());
                    }
                    memories.push(OwnedMemory::Shared(m.clone()));
                    m.into()
                } else {
                    let m = Memory::new(&mut store, ty).map_err(|e| e.to_string())?;
                    memories.push(OwnedMemory::Local(m));
                    m.into()
                }
            }
            ExternType::Func(ty) if module_name == HOST_MODULE => {
                let memory = wait_shared
                    .as_ref()
                    .ok_or("host wait imported without a shared memory before it")?;
                let func = define_host_waits(&mut store, memory, name)
                    .ok_or_else(|| format!("unknown host import {name}"))?;
                if func.ty(&store).matches(&ty) {
                    func.into()
                } else {
                    return Err(format!("host import {name} has type {ty}"));
                }
            }
            ExternType::Func(ty) if module_name == "env" => {
                let name = name.to_string();
                let result_types: Vec<ValType> = ty.results().collect();
                Func::new(&mut store, ty, move |mut caller, args, results| {
                    caller
                        .data_mut()
                        .calls
                        .push(format!("{name}({})", describe_args(args)));
                    if name == "trap" && matches!(args.first(), Some(Val::I32(v)) if v % 3 == 0) {
                        return Err(HostTrap.into());
                    }
                    for (i, (slot, ty)) in results.iter_mut().zip(&result_types).enumerate() {
                        *slot = host_result(&name, args, i, ty);
                    }
                    Ok(())
                })
                .into()
            }
            ExternType::Global(ty) if module_name == "env" => {
                let init = match ty.content() {
                    ValType::I32 => Val::I32(7),
                    ValType::I64 => Val::I64(-9),
                    other => return Err(format!("unexpected imported global type {other}")),
                };
                Global::new(
                    &mut store,
                    GlobalType::new(ty.content().clone(), ty.mutability()),
                    init,
                )
                .map_err(|e| e.to_string())?
                .into()
            }
            ExternType::Table(ty) if module_name == "env" => Table::new(
                &mut store,
                TableType::new(RefType::FUNCREF, ty.minimum() as u32, None),
                Ref::Func(None),
            )
            .map_err(|e| e.to_string())?
            .into(),
            other => return Err(format!("unexpected import {module_name}.{name}: {other:?}")),
        };
        imports.push(ext);
    }

    store.set_fuel(FUEL).map_err(|e| e.to_string())?;
    let instance = match Instance::new(&mut store, module, &imports) {
        Ok(instance) => {
            obs.steps.push(("instantiate".into(), Ok(Vec::new())));
            instance
        }
        Err(e) => {
            obs.steps.push(("instantiate".into(), Err(failure(e))));
            obs.host_calls = std::mem::take(&mut store.data_mut().calls);
            return Ok(obs);
        }
    };

    let exports: Vec<(String, ExternType)> = module
        .exports()
        .map(|e| (e.name().to_string(), e.ty()))
        .collect();
    let mut stopped = false;
    for (name, ty) in &exports {
        if !matches!(ty, ExternType::Func(_)) {
            continue;
        }
        let Some(func) = instance.get_func(&mut store, name) else {
            return Err(format!("export {name} is not a function"));
        };
        if call(&mut store, &func, format!("call {name:?}"), &mut obs)? {
            stopped = true;
            break;
        }
    }
    let table_exports: Vec<&String> = exports
        .iter()
        .filter(|(name, _)| name.starts_with(TABLE_EXPORT_PREFIX))
        .map(|(name, _)| name)
        .collect();
    if !stopped {
        'tables: for name in &table_exports {
            let table = instance
                .get_table(&mut store, name)
                .ok_or("table export missing")?;
            for i in 0..table.size(&store).min(TABLE_CALLS) {
                if let Some(Ref::Func(Some(func))) = table.get(&mut store, i)
                    && call(&mut store, &func, format!("call {name:?}[{i}]"), &mut obs)?
                {
                    stopped = true;
                    break 'tables;
                }
            }
        }
    }
    obs.host_calls = std::mem::take(&mut store.data_mut().calls);
    if stopped {
        return Ok(obs);
    }

    for memory in &memories {
        obs.memories.push(match memory {
            OwnedMemory::Shared(m) => m
                .data()
                .iter()
                // SAFETY: no wasm runs any more, on any thread.
                .map(|cell| unsafe { *cell.get() })
                .collect(),
            OwnedMemory::Local(m) => m.data(&store).to_vec(),
        });
    }
    for (name, _) in &exports {
        if name.starts_with(GLOBAL_EXPORT_PREFIX) {
            let global = instance
                .get_global(&mut store, name)
                .ok_or("global export missing")?;
            let v = global.get(&mut store);
            obs.globals.push((name.clone(), value(&store, &v)));
        }
    }
    for name in &table_exports {
        let table = instance
            .get_table(&mut store, name)
            .ok_or("table export missing")?;
        let mut elements = Vec::new();
        for i in 0..table.size(&store) {
            let r = table.get(&mut store, i).ok_or("table index in bounds")?;
            elements.push(ref_value(&store, &r));
        }
        obs.tables.push(((*name).clone(), elements));
    }
    Ok(obs)
}

/// Calls `func` with the fixed arguments and records the outcome; true if
/// the run must stop here (inconclusive).
fn call(
    store: &mut Store<Host>,
    func: &Func,
    label: String,
    obs: &mut Observation,
) -> Result<bool, String> {
    let ty = func.ty(&*store);
    let args: Vec<Val> = ty
        .params()
        .enumerate()
        .map(|(i, t)| argument(&t, i))
        .collect();
    let mut results: Vec<Val> = ty
        .results()
        .map(|t| Val::default_for_ty(&t).unwrap_or(Val::I32(0)))
        .collect();
    store.set_fuel(FUEL).map_err(|e| e.to_string())?;
    let outcome = match func.call(&mut *store, &args, &mut results) {
        Ok(()) => Ok(results.iter().map(|v| value(store, v)).collect()),
        Err(e) => Err(failure(e)),
    };
    let stop = outcome.as_ref().is_err_and(Failure::is_inconclusive);
    obs.steps.push((label, outcome));
    Ok(stop)
}
