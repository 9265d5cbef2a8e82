//! Test modules: `wasm-smith` output, post-processed so that the rewrite
//! applies and so that running it on one thread always ends.
//!
//! The post-processing only adds to the module, and adds the same to both
//! sides of the comparison (the rewrite runs on its output):
//!
//! - every memory becomes an import `env.memory{i}`, and the first 32-bit one
//!   is made shared: the rewrite only routes waits on an imported shared
//!   memory, and the harness must own the memories to compare them;
//! - stack-neutral `memory.atomic.wait32/wait64/notify` sequences are
//!   injected at random points of function bodies, with addresses, offsets,
//!   expected values and timeouts picked to hit every outcome (woken never,
//!   value differs, timed out, misaligned, out of bounds); their results are
//!   folded into an exported global so that they are observed;
//! - every wait on a shared memory first calls a guard function that, if the
//!   wait would park (address valid, value equal), shortens its timeout to
//!   under a microsecond. On one thread nothing can notify, so an equal value
//!   with a negative or long timeout would block the original for ever (or
//!   for hours); with the guard both sides time out and return 2, while
//!   waits that do not park still see their timeout unchanged, negative ones
//!   included;
//! - every global and table is exported, so the harness can read them.

use arbitrary::Unstructured;
use std::collections::{HashMap, HashSet};
use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{
    CodeSection, ConstExpr, DataCountSection, DataSection, ElementSection, EntityType, ExportKind,
    ExportSection, Function, FunctionSection, GlobalSection, GlobalType, ImportSection,
    Instruction, MemArg, StartSection, TableSection, TagSection, TypeSection, ValType,
};
use wasmparser::{Operator, Parser, Payload, TypeRef};

/// The imports a generated module may use; the harness implements them all
/// (see `run.rs`).
const AVAILABLE_IMPORTS: &str = r#"(module
  (import "env" "f0" (func (param i32) (result i32)))
  (import "env" "f1" (func))
  (import "env" "f2" (func (param i64 f64) (result i64)))
  (import "env" "f3" (func (param i32 i32) (result i32 i32)))
  (import "env" "trap" (func (param i32)))
  (import "env" "g0" (global (mut i32)))
  (import "env" "g1" (global i64))
  (import "env" "t0" (table 4 funcref)))"#;

/// Names of the exports the post-processing adds.
pub const GLOBAL_EXPORT_PREFIX: &str = "\u{1}global";
pub const TABLE_EXPORT_PREFIX: &str = "\u{1}table";

/// A timeout this short is what the guard leaves a parking wait.
pub const GUARDED_TIMEOUT_MASK: i64 = 1023;

fn smith_config(u: &mut Unstructured<'_>) -> arbitrary::Result<wasm_smith::Config> {
    let available_imports = wat::parse_str(AVAILABLE_IMPORTS).expect("valid imports module");
    Ok(wasm_smith::Config {
        available_imports: Some(available_imports),
        max_imports: 8,
        max_types: 12,
        min_funcs: 6,
        max_funcs: 10,
        max_instructions: 80,
        max_nesting_depth: 6,
        min_memories: 1,
        max_memories: if u.ratio(1, 3)? { 3 } else { 1 },
        max_memory32_bytes: 4 * 65536,
        max_memory64_bytes: 4 * 65536,
        memory64_enabled: u.ratio(1, 4)?,
        max_tables: 2,
        max_table_elements: 16,
        max_globals: 6,
        max_exports: 16,
        export_everything: true,
        max_data_segments: 4,
        max_element_segments: 4,
        max_elements: 8,
        max_tags: 0,
        // What Wasmtime 48 runs with the features this crate builds it with.
        threads_enabled: true,
        bulk_memory_enabled: true,
        reference_types_enabled: true,
        multi_value_enabled: true,
        tail_call_enabled: true,
        simd_enabled: true,
        relaxed_simd_enabled: true,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        extended_const_enabled: true,
        gc_enabled: false,
        exceptions_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        shared_everything_threads_enabled: false,
        ..wasm_smith::Config::default()
    })
}

/// Generates one test module from fuzzer input; `IncorrectFormat` for a
/// module that uses what this build of Wasmtime cannot run (GC types such as
/// `externref`: the workspace builds Wasmtime without `gc`, and
/// `wasm-smith` cannot leave them out without leaving out reference types).
pub fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let choice_len = u.arbitrary_len::<u8>()?.min(512);
    let choices = u.bytes(choice_len)?.to_vec();
    let config = smith_config(u)?;
    let module = wasm_smith::Module::new(config, u)?;
    let wasm = prepare(&module.to_bytes(), choices);
    if wasmtime::Module::validate(crate::engine(), &wasm).is_err() {
        return Err(arbitrary::Error::IncorrectFormat);
    }
    Ok(wasm)
}

#[derive(Clone, Copy)]
struct MemInfo {
    shared: bool,
    memory64: bool,
    initial_bytes: u64,
}

/// The key of one guard function: (memory, memarg offset, access width).
type GuardKey = (u32, u64, u64);

struct Prep {
    memories: Vec<MemInfo>,
    /// The memory the rewrite will route: the first shared 32-bit one.
    target: Option<u32>,
    guard_type_base: u32,
    guard_func_base: u32,
    guards: Vec<GuardKey>,
    guard_index: HashMap<GuardKey, u32>,
    acc_global: u32,
    choices: Vec<u8>,
    cursor: usize,
    injected_any: bool,
}

impl Prep {
    /// The next decision byte; 255 ("don't") once the input is used up.
    fn next(&mut self) -> u8 {
        let byte = self.choices.get(self.cursor).copied().unwrap_or(255);
        self.cursor += 1;
        byte
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        let i = self.next() as usize % options.len();
        options[i]
    }

    fn guard(&mut self, memory: u32, offset: u64, width: u64) -> u32 {
        let key = (memory, offset, width);
        if let Some(&index) = self.guard_index.get(&key) {
            return index;
        }
        let index = self.guard_func_base + self.guards.len() as u32;
        self.guards.push(key);
        self.guard_index.insert(key, index);
        index
    }

    fn guard_type(&self, memory: u32, width: u64) -> u32 {
        let memory64 = self.memories[memory as usize].memory64;
        self.guard_type_base + u32::from(memory64) * 2 + u32::from(width == 8)
    }

    /// Emits a wait or notify with operands chosen to reach each outcome,
    /// leaving the stack as it was and its result folded into the
    /// accumulator global.
    fn inject(&mut self, func: &mut Function) {
        let memories = self.memories.len() as u32;
        let target = self.target;
        let memory = match target {
            Some(target) if !self.next().is_multiple_of(4) => target,
            _ => u32::from(self.next()) % memories,
        };
        let info = self.memories[memory as usize];
        let size = info.initial_bytes;
        let address = self.pick(&[
            0,
            0,
            4,
            8,
            16,
            64,
            1,
            2,
            6,
            size.wrapping_sub(4),
            size.wrapping_sub(8),
            size,
            size + 4,
            65536,
            0xffff_fffc,
        ]);
        let offset = self.pick(&[0, 0, 0, 4, 8, 1, 2, size.wrapping_sub(8), 0xffff_fff8]);
        let offset = if info.memory64 {
            offset
        } else {
            offset & 0xffff_ffff
        };
        let push_address = |func: &mut Function| {
            if info.memory64 {
                func.instruction(&Instruction::I64Const(address as i64));
            } else {
                func.instruction(&Instruction::I32Const(address as u32 as i32));
            }
        };
        let expected = self.pick(&[0i64, 0, 0, 1, -1, 0x0101_0101, 42]);
        let timeout = self.pick(&[0i64, -1, 1, 1000, i64::MAX, i64::MIN, 1 << 40, -5]);
        let (op, width) = match self.next() % 3 {
            0 => ("wait32", 4),
            1 => ("wait64", 8),
            _ => ("notify", 4),
        };
        let memarg = MemArg {
            offset,
            align: if width == 8 { 3 } else { 2 },
            memory_index: memory,
        };
        push_address(func);
        match op {
            "notify" => {
                let count = self.pick(&[0, 1, -1, 2, 100]);
                func.instruction(&Instruction::I32Const(count));
                func.instruction(&Instruction::MemoryAtomicNotify(memarg));
            }
            _ => {
                if width == 8 {
                    func.instruction(&Instruction::I64Const(expected));
                } else {
                    func.instruction(&Instruction::I32Const(expected as i32));
                }
                func.instruction(&Instruction::I64Const(timeout));
                if info.shared {
                    let guard = self.guard(memory, offset, width);
                    func.instruction(&Instruction::Call(guard));
                }
                if width == 8 {
                    func.instruction(&Instruction::MemoryAtomicWait64(memarg));
                } else {
                    func.instruction(&Instruction::MemoryAtomicWait32(memarg));
                }
            }
        }
        func.instruction(&Instruction::GlobalGet(self.acc_global));
        func.instruction(&Instruction::I32Const(31));
        func.instruction(&Instruction::I32Mul);
        func.instruction(&Instruction::I32Add);
        func.instruction(&Instruction::GlobalSet(self.acc_global));
        self.injected_any = true;
    }

    /// The body of a guard: `(addr, expected, timeout) -> (addr, expected,
    /// timeout')`, where `timeout'` is cut short if a wait would park.
    fn guard_body(&self, (memory, offset, width): GuardKey) -> Function {
        let memory64 = self.memories[memory as usize].memory64;
        let mut f = Function::new([(1, ValType::I64)]);
        let ea = 3;
        f.instruction(&Instruction::LocalGet(0));
        if !memory64 {
            f.instruction(&Instruction::I64ExtendI32U);
        }
        f.instruction(&Instruction::I64Const(offset as i64));
        f.instruction(&Instruction::I64Add);
        f.instruction(&Instruction::LocalSet(ea));
        let memory_bytes = |f: &mut Function| {
            f.instruction(&Instruction::MemorySize(memory));
            if !memory64 {
                f.instruction(&Instruction::I64ExtendI32U);
            }
            f.instruction(&Instruction::I64Const(16));
            f.instruction(&Instruction::I64Shl);
        };
        f.instruction(&Instruction::Block(wasm_encoder::BlockType::Empty));
        // Misaligned: the wait traps.
        f.instruction(&Instruction::LocalGet(ea));
        f.instruction(&Instruction::I64Const(width as i64 - 1));
        f.instruction(&Instruction::I64And);
        f.instruction(&Instruction::I32WrapI64);
        f.instruction(&Instruction::BrIf(0));
        // The address computation overflowed 64 bits: the wait traps.
        f.instruction(&Instruction::LocalGet(ea));
        f.instruction(&Instruction::I64Const(offset as i64));
        f.instruction(&Instruction::I64LtU);
        f.instruction(&Instruction::BrIf(0));
        // Out of bounds: the wait traps.
        f.instruction(&Instruction::LocalGet(ea));
        memory_bytes(&mut f);
        f.instruction(&Instruction::I64GtU);
        f.instruction(&Instruction::BrIf(0));
        memory_bytes(&mut f);
        f.instruction(&Instruction::LocalGet(ea));
        f.instruction(&Instruction::I64Sub);
        f.instruction(&Instruction::I64Const(width as i64));
        f.instruction(&Instruction::I64LtU);
        f.instruction(&Instruction::BrIf(0));
        // The value differs: the wait returns 1 at once.
        f.instruction(&Instruction::LocalGet(ea));
        if !memory64 {
            f.instruction(&Instruction::I32WrapI64);
        }
        let memarg = MemArg {
            offset: 0,
            align: if width == 8 { 3 } else { 2 },
            memory_index: memory,
        };
        if width == 8 {
            f.instruction(&Instruction::I64AtomicLoad(memarg));
            f.instruction(&Instruction::LocalGet(1));
            f.instruction(&Instruction::I64Ne);
        } else {
            f.instruction(&Instruction::I32AtomicLoad(memarg));
            f.instruction(&Instruction::LocalGet(1));
            f.instruction(&Instruction::I32Ne);
        }
        f.instruction(&Instruction::BrIf(0));
        // It would park: only a short wait.
        f.instruction(&Instruction::LocalGet(2));
        f.instruction(&Instruction::I64Const(GUARDED_TIMEOUT_MASK));
        f.instruction(&Instruction::I64And);
        f.instruction(&Instruction::LocalSet(2));
        f.instruction(&Instruction::End);
        f.instruction(&Instruction::LocalGet(0));
        f.instruction(&Instruction::LocalGet(1));
        f.instruction(&Instruction::LocalGet(2));
        f.instruction(&Instruction::End);
        f
    }
}

impl Reencode for Prep {
    type Error = std::convert::Infallible;

    // The workspace's Wasmtime has no GC support, which `externref` needs;
    // without host-made references and GC instructions, `funcref` can stand
    // in for it everywhere.
    fn abstract_heap_type(
        &mut self,
        value: wasmparser::AbstractHeapType,
    ) -> Result<wasm_encoder::AbstractHeapType, reencode::Error<Self::Error>> {
        use wasmparser::AbstractHeapType::{Extern, Func, NoExtern, NoFunc};
        let value = match value {
            Extern => Func,
            NoExtern => NoFunc,
            other => other,
        };
        Ok(reencode::utils::abstract_heap_type(self, value))
    }

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let mut func = self.new_function_with_parsed_locals(&body)?;
        let mut ops = body.get_operators_reader()?;
        let mut first = true;
        while !ops.eof() {
            let op = ops.read()?;
            // The first function always gets one, so that the rewrite has
            // something to do even when the input is used up.
            let force = first && !self.injected_any;
            first = false;
            if force || self.next() < 12 {
                self.inject(&mut func);
            }
            let wait = match &op {
                Operator::MemoryAtomicWait32 { memarg } => Some((memarg, 4)),
                Operator::MemoryAtomicWait64 { memarg } => Some((memarg, 8)),
                _ => None,
            };
            if let Some((memarg, width)) = wait
                && self.memories[memarg.memory as usize].shared
            {
                let guard = self.guard(memarg.memory, memarg.offset, width);
                func.instruction(&Instruction::Call(guard));
            }
            func.instruction(&self.instruction(op)?);
        }
        code.function(&func);
        Ok(())
    }
}

/// Applies the post-processing described in the module docs to a valid
/// `wasm-smith` module.
pub fn prepare(smith: &[u8], choices: Vec<u8>) -> Vec<u8> {
    try_prepare(smith, choices).expect("wasm-smith output is valid and prepare handles all of it")
}

fn try_prepare(smith: &[u8], choices: Vec<u8>) -> Result<Vec<u8>, String> {
    let e = |e: reencode::Error<std::convert::Infallible>| e.to_string();
    // First pass: counts and memories.
    let (mut types, mut imported_funcs, mut defined_funcs) = (0u32, 0u32, 0u32);
    let (mut imported_globals, mut defined_globals, mut tables) = (0u32, 0u32, 0u32);
    let mut memories = Vec::new();
    let mut export_names = HashSet::new();
    for payload in Parser::new(0).parse_all(smith) {
        match payload.map_err(|e| e.to_string())? {
            Payload::TypeSection(r) => {
                for group in r {
                    types += group.map_err(|e| e.to_string())?.types().len() as u32;
                }
            }
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    match import.map_err(|e| e.to_string())?.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => imported_funcs += 1,
                        TypeRef::Global(_) => imported_globals += 1,
                        TypeRef::Table(_) => tables += 1,
                        TypeRef::Memory(_) => return Err("unexpected imported memory".into()),
                        TypeRef::Tag(_) => {}
                    }
                }
            }
            Payload::FunctionSection(r) => defined_funcs = r.count(),
            Payload::GlobalSection(r) => defined_globals = r.count(),
            Payload::TableSection(r) => tables += r.count(),
            Payload::MemorySection(r) => {
                for memory in r {
                    let m = memory.map_err(|e| e.to_string())?;
                    memories.push(m);
                }
            }
            Payload::ExportSection(r) => {
                for export in r {
                    export_names.insert(export.map_err(|e| e.to_string())?.name.to_string());
                }
            }
            _ => {}
        }
    }
    // The first 32-bit memory becomes shared (which needs a maximum).
    let target = memories.iter().position(|m| !m.memory64).map(|i| i as u32);
    if let Some(t) = target {
        let m = &mut memories[t as usize];
        if !m.shared {
            m.shared = true;
            if m.maximum.is_none() {
                m.maximum = Some((m.initial + 1).min(65536));
            }
        }
    }
    let mut prep = Prep {
        memories: memories
            .iter()
            .map(|m| MemInfo {
                shared: m.shared,
                memory64: m.memory64,
                initial_bytes: m.initial * 65536,
            })
            .collect(),
        target,
        guard_type_base: types,
        guard_func_base: imported_funcs + defined_funcs,
        guards: Vec::new(),
        guard_index: HashMap::new(),
        acc_global: imported_globals + defined_globals,
        choices,
        cursor: 0,
        injected_any: false,
    };

    let mut type_section = TypeSection::new();
    let mut import_section = ImportSection::new();
    let mut function_section = FunctionSection::new();
    let mut table_section = TableSection::new();
    let mut tag_section = TagSection::new();
    let mut global_section = GlobalSection::new();
    let mut export_section = ExportSection::new();
    let mut start = None;
    let mut element_section = ElementSection::new();
    let mut data_count = None;
    let mut code_section = CodeSection::new();
    let mut data_section = DataSection::new();
    let mut has_tags = false;
    for payload in Parser::new(0).parse_all(smith) {
        match payload.map_err(|e| e.to_string())? {
            Payload::TypeSection(r) => prep.parse_type_section(&mut type_section, r).map_err(e)?,
            Payload::ImportSection(r) => prep
                .parse_import_section(&mut import_section, r)
                .map_err(e)?,
            Payload::FunctionSection(r) => prep
                .parse_function_section(&mut function_section, r)
                .map_err(e)?,
            Payload::TableSection(r) => {
                prep.parse_table_section(&mut table_section, r).map_err(e)?
            }
            Payload::TagSection(r) => {
                has_tags = true;
                prep.parse_tag_section(&mut tag_section, r).map_err(e)?
            }
            Payload::GlobalSection(r) => prep
                .parse_global_section(&mut global_section, r)
                .map_err(e)?,
            Payload::ExportSection(r) => prep
                .parse_export_section(&mut export_section, r)
                .map_err(e)?,
            Payload::StartSection { func, .. } => start = Some(func),
            Payload::ElementSection(r) => prep
                .parse_element_section(&mut element_section, r)
                .map_err(e)?,
            Payload::DataCountSection { count, .. } => data_count = Some(count),
            Payload::CodeSectionStart { .. } => {}
            Payload::CodeSectionEntry(body) => prep
                .parse_function_body(&mut code_section, body)
                .map_err(e)?,
            Payload::DataSection(r) => prep.parse_data_section(&mut data_section, r).map_err(e)?,
            Payload::MemorySection(_)
            | Payload::Version { .. }
            | Payload::CustomSection(_)
            | Payload::End(_) => {}
            other => return Err(format!("unexpected section {:?}", other.as_section())),
        }
    }

    // Guard types: (addr, expected, timeout) -> the same, for 32/64-bit
    // addresses and expected values.
    for memory64 in [false, true] {
        for wide in [false, true] {
            let a = if memory64 { ValType::I64 } else { ValType::I32 };
            let x = if wide { ValType::I64 } else { ValType::I32 };
            type_section
                .ty()
                .function([a, x, ValType::I64], [a, x, ValType::I64]);
        }
    }
    for (i, m) in memories.iter().enumerate() {
        let ty = wasm_encoder::MemoryType {
            minimum: m.initial,
            maximum: m.maximum,
            memory64: m.memory64,
            shared: m.shared,
            page_size_log2: m.page_size_log2,
        };
        import_section.import("env", &format!("memory{i}"), EntityType::Memory(ty));
    }
    for &key in &prep.guards.clone() {
        function_section.function(prep.guard_type(key.0, key.2));
        code_section.function(&prep.guard_body(key));
    }
    global_section.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(0),
    );
    let unique = |name: String| {
        let mut name = name;
        while export_names.contains(&name) {
            name.push('\'');
        }
        name
    };
    for g in 0..=prep.acc_global {
        export_section.export(
            &unique(format!("{GLOBAL_EXPORT_PREFIX}{g}")),
            ExportKind::Global,
            g,
        );
    }
    for t in 0..tables {
        export_section.export(
            &unique(format!("{TABLE_EXPORT_PREFIX}{t}")),
            ExportKind::Table,
            t,
        );
    }

    let mut module = wasm_encoder::Module::new();
    module.section(&type_section);
    module.section(&import_section);
    module.section(&function_section);
    module.section(&table_section);
    if has_tags {
        module.section(&tag_section);
    }
    module.section(&global_section);
    module.section(&export_section);
    if let Some(function_index) = start {
        module.section(&StartSection { function_index });
    }
    module.section(&element_section);
    if let Some(count) = data_count {
        module.section(&DataCountSection { count });
    }
    module.section(&code_section);
    module.section(&data_section);
    Ok(module.finish())
}
