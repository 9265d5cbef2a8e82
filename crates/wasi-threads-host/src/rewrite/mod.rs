//! The module rewrite: every `memory.atomic.wait32/64` and
//! `memory.atomic.notify` on the shared memory becomes a call of a host
//! function, and WASI gets the `memory` export it looks for.
//!
//! A thread parked in a native `memory.atomic.wait` is out of everyone's
//! reach: epoch interruption does not wake it, and `SharedMemory::atomic_notify`
//! only wakes an address one already knows. Routing every wait and notify of
//! the module through the host's own parking lot ([`crate::wait`]) lets the
//! supervisor wake every parked thread at once, whatever address it waits on.
//! Supervision must not be something a guest can opt out of, so the rewrite
//! decides from the module's code, never from what it claims about itself
//! (see [`plan`]).
//!
//! Each instruction becomes `i32.const <memarg offset>; call <host function>`:
//! the operands already on the stack stay where they are and the offset
//! travels as one more argument, so no locals are needed and every other part
//! of the module is re-encoded unchanged apart from function indices, which
//! shift by the three imports added after the module's own function imports.
//!
//! Re-encoding moves code (it also shrinks the padded LEBs linkers emit), so
//! the rewrite records where every instruction went ([`OffsetMap`]) and
//! carries the module's DWARF over with its code addresses remapped
//! ([`dwarf`]): backtraces, debuggers and profilers then still speak of the
//! module the user built.

mod cache;
mod dwarf;
mod offsets;

pub use cache::compile_guest_cached;
pub use offsets::{GuestModule, OffsetMap};

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

/// The export name wiggle's WASI glue looks the caller's memory up by.
const MEMORY_EXPORT: &str = "memory";

/// The host functions, in the order the rewrite imports them, with their
/// exact types.
const HOST_FUNCS: [(&str, &[wasmparser::ValType], &[wasmparser::ValType]); 3] = {
    use wasmparser::ValType::{I32, I64};
    [
        (WAIT32, &[I32, I32, I64, I32], &[I32]),
        (WAIT64, &[I32, I64, I64, I32], &[I32]),
        (NOTIFY, &[I32, I32, I32], &[I32]),
    ]
};
const ADDED_FUNCS: u32 = HOST_FUNCS.len() as u32;

/// What the scan of a module found.
#[derive(Default)]
struct Scan {
    imported_funcs: u32,
    types: u32,
    func_types: Vec<Option<FuncType>>,
    /// Every memory's type, imported ones first (the index space).
    memories: Vec<wasmparser::MemoryType>,
    /// The index of the memory to rewrite: the imported 32-bit shared memory.
    shared_memory: Option<u32>,
    /// Which of [`HOST_FUNCS`] the module imports, exactly as the rewrite
    /// would have.
    host_imports: [bool; 3],
    /// The first import from [`HOST_MODULE`] that is not one of ours.
    foreign_host_import: Option<String>,
    has_memory_export: bool,
    bodies: u32,
    /// The code section's payload, and the length of the function count
    /// that starts it.
    code: Range<usize>,
    code_count_len: usize,
    atomics_on_shared: bool,
    /// A memory other than the routed one that a native wait parks on.
    wait_elsewhere: Option<u32>,
}

fn scan(bytes: &[u8]) -> Result<Scan> {
    let mut scan = Scan::default();
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
                    if import.module == HOST_MODULE {
                        scan.note_host_import(import.name, import.ty);
                    }
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => scan.imported_funcs += 1,
                        TypeRef::Memory(ty) => {
                            if ty.shared && !ty.memory64 && scan.shared_memory.is_none() {
                                scan.shared_memory = Some(scan.memories.len() as u32);
                            }
                            scan.memories.push(ty);
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
            Payload::CodeSectionEntry(body) => {
                scan.bodies += 1;
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    let op = ops.read()?;
                    let Some(memory) = wait_or_notify_memory(&op) else {
                        continue;
                    };
                    if Some(memory) == scan.shared_memory {
                        scan.atomics_on_shared = true;
                    } else if is_wait(&op)
                        && scan.memories.get(memory as usize).is_some_and(|m| m.shared)
                        && scan.wait_elsewhere.is_none()
                    {
                        scan.wait_elsewhere = Some(memory);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(scan)
}

impl Scan {
    fn note_host_import(&mut self, name: &str, ty: TypeRef) {
        let ours = HOST_FUNCS
            .iter()
            .position(|(n, _, _)| *n == name)
            .filter(|&i| {
                let (_, params, results) = HOST_FUNCS[i];
                let TypeRef::Func(t) = ty else { return false };
                let Some(Some(f)) = self.func_types.get(t as usize) else {
                    return false;
                };
                f.params() == params && f.results() == results && !self.host_imports[i]
            });
        match ours {
            Some(i) => self.host_imports[i] = true,
            None => {
                self.foreign_host_import
                    .get_or_insert_with(|| format!("`{HOST_MODULE}.{name}`"));
            }
        }
    }
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
    /// Nothing to do: no shared memory import, or a module this host already
    /// rewrote (or one indistinguishable from it, which is as safe).
    Keep,
    Rewrite {
        /// Route waits and notifies on the shared memory through the host.
        route: bool,
        /// Export the shared memory as `memory` for WASI.
        export_memory: bool,
    },
}

/// Decides what to do with a module, or refuses it.
///
/// Whether a module is "already rewritten" is read off its code, never off
/// a marker it could forge: a module that imports the host's functions is
/// left alone only if they are exactly the three the rewrite adds, with
/// exactly its types, and no native wait or notify on the shared memory is
/// left. Anything else importing from [`HOST_MODULE`] is refused, since the
/// host did not put it there.
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
             functions (only `{WAIT32}`, `{WAIT64}` and `{NOTIFY}` with the host's types); \
             refusing to run it"
        );
    }
    let reserved = scan.host_imports.iter().any(|&b| b);
    if reserved && !scan.host_imports.iter().all(|&b| b) {
        bail!(
            "the module imports some but not all of the host's reserved `{HOST_MODULE}` \
             functions; it was not produced by this host, refusing to run it"
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
    if scan.shared_memory.is_none() {
        if reserved {
            bail!(
                "the module imports the host's reserved `{HOST_MODULE}` functions but no \
                 shared memory; refusing to run it"
            );
        }
        return Ok(Plan::Keep);
    }
    if reserved && scan.atomics_on_shared {
        bail!(
            "the module imports the host's reserved `{HOST_MODULE}` functions yet still waits \
             or notifies natively on its shared memory; it was not produced by this host, \
             refusing to run it"
        );
    }
    let route = scan.atomics_on_shared;
    let export_memory = !scan.has_memory_export;
    Ok(if route || export_memory {
        Plan::Rewrite {
            route,
            export_memory,
        }
    } else {
        Plan::Keep
    })
}

/// Compiles a module for use with [`WasiThreads`](crate::WasiThreads),
/// routing its atomic waits through the host so that the supervisor can wake
/// threads parked in them. Use it instead of `Module::new`: a module compiled
/// without it still runs, but threads parked in `memory.atomic.wait` when the
/// program ends cannot be stopped and are detached.
///
/// [`compile_guest`] also returns the map that turns the compiled module's
/// code offsets back into the offsets of `bytes`.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Module> {
    compile_guest(engine, bytes).map(|guest| guest.module().clone())
}

/// Like [`compile`], and keeps the map from the compiled module's code
/// offsets to those of `bytes`, the module the user built: see
/// [`GuestModule::format_backtrace`].
pub fn compile_guest(engine: &Engine, bytes: &[u8]) -> Result<GuestModule> {
    let binary = to_binary(bytes)?;
    Module::validate(engine, &binary)?;
    match rewrite_with_map(&binary)? {
        Some((rewritten, map)) => {
            log::debug!("rewrote the module: atomic waits routed through the host");
            let module = Module::new(engine, &rewritten)?;
            Ok(GuestModule::new(module, Arc::new(map)))
        }
        None => {
            let module = Module::new(engine, &binary)?;
            Ok(GuestModule::new(module, Arc::new(OffsetMap::identity())))
        }
    }
}

/// The binary form of a module given in binary or text form, with a one-line
/// error for anything else.
fn to_binary(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.into());
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
    wat::parse_str(text).map(Into::into).map_err(|e| {
        format_err!(
            "invalid WebAssembly text: {}",
            e.to_string().replace('\n', " ")
        )
    })
}

/// Returns the module with its waits and notifies on the imported shared
/// memory routed through the host and its shared memory exported as
/// `memory`, or `None` if it needs neither (or was already rewritten).
/// Text-format input is accepted and returned as binary. A module that tries
/// to keep threads out of the host's reach is an error.
pub fn rewrite(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let binary = to_binary(bytes)?;
    Ok(rewrite_with_map(&binary)?.map(|(bytes, _)| bytes))
}

/// [`rewrite`] of a binary module, with the map of how its code moved.
pub fn rewrite_with_map(binary: &[u8]) -> Result<Option<(Vec<u8>, OffsetMap)>> {
    let scan = scan(binary).map_err(|e| e.context("invalid WebAssembly module"))?;
    let Plan::Rewrite {
        route,
        export_memory,
    } = plan(&scan)?
    else {
        return Ok(None);
    };
    let Some(memory) = scan.shared_memory else {
        return Ok(None);
    };
    let mut rewriter = Rewriter {
        memory,
        route,
        export_memory,
        exported: false,
        imported_funcs: scan.imported_funcs,
        first_added_type: scan.types,
        map: MapBuilder::new(scan.code.clone(), scan.code_count_len, scan.bodies),
        debug_sections: Vec::new(),
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), binary)
        .map_err(|e| format_err!("cannot rewrite the module: {e}"))?;
    let added = if route { ADDED_FUNCS } else { 0 };
    let map = rewriter
        .map
        .finish(module.as_slice(), scan.imported_funcs, added)?;
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
    memory: u32,
    route: bool,
    export_memory: bool,
    exported: bool,
    imported_funcs: u32,
    /// The first of the three types added at the end of the type section.
    first_added_type: u32,
    map: MapBuilder,
    /// The original `.debug_*` sections, re-emitted remapped at the end.
    debug_sections: Vec<(String, Range<usize>)>,
}

impl Rewriter {
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
        (memarg.memory == self.memory).then_some((self.imported_funcs + which, memarg.offset))
    }

    fn memory_export(&mut self, exports: &mut wasm_encoder::ExportSection) {
        if self.export_memory && !self.exported {
            exports.export(MEMORY_EXPORT, wasm_encoder::ExportKind::Memory, self.memory);
        }
        self.exported = true;
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

impl Reencode for Rewriter {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(if self.route && func >= self.imported_funcs {
            func + ADDED_FUNCS
        } else {
            func
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_type_section(self, types, section)?;
        if self.route {
            for (_, params, results) in HOST_FUNCS {
                let convert = |t: &wasmparser::ValType| match t {
                    wasmparser::ValType::I64 => wasm_encoder::ValType::I64,
                    _ => wasm_encoder::ValType::I32,
                };
                types.ty().function(
                    params.iter().map(convert).collect::<Vec<_>>(),
                    results.iter().map(convert).collect::<Vec<_>>(),
                );
            }
        }
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_import_section(self, imports, section)?;
        if self.route {
            for (i, (name, _, _)) in HOST_FUNCS.iter().enumerate() {
                let ty = wasm_encoder::EntityType::Function(self.first_added_type + i as u32);
                imports.import(HOST_MODULE, name, ty);
            }
        }
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
        // A module without an export section gets one where it belongs.
        let export = section_rank(SectionId::Export);
        let after_exports_place = after.map_or(0, section_rank) < export;
        let before_exports_place = before.map_or(u8::MAX, section_rank) > export;
        if !self.exported && after_exports_place && before_exports_place {
            let mut exports = wasm_encoder::ExportSection::new();
            self.memory_export(&mut exports);
            if !exports.is_empty() {
                module.section(&exports);
            }
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let mut func = self.new_function_with_parsed_locals(&body)?;
        let mut ops = body.get_operators_reader()?;
        let mut moves = self.map.begin_function(code.byte_len(), &body);
        while !ops.eof() {
            let old = ops.original_position();
            let op = ops.read()?;
            let host_func = self.host_func(&op);
            if host_func.is_none() {
                moves.instruction(func.byte_len(), old);
            }
            match host_func {
                Some((host_func, offset)) => {
                    // A 32-bit memory's offsets are below 2^32; passed as the
                    // bits of an i32 and read back as u32 by the host.
                    moves.exact(func.byte_len(), old);
                    func.instruction(&wasm_encoder::Instruction::I32Const(offset as u32 as i32));
                    // The call is where a trap in the host function is
                    // reported: it stands for the original instruction.
                    moves.instruction(func.byte_len(), old);
                    func.instruction(&wasm_encoder::Instruction::Call(host_func));
                }
                None => {
                    func.instruction(&self.instruction(op)?);
                }
            }
        }
        moves.end(func.byte_len(), ops.original_position());
        self.map.end_function(moves);
        code.function(&func);
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
            ]
        );
        assert_eq!(atomics_left, 0);
        // The module's own functions moved past the three new imports, and
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

    #[test]
    fn modules_without_waits_are_left_alone() {
        let plain = r#"(module (import "env" "memory" (memory 1 1 shared))
            (export "memory" (memory 0)) (func (export "_start")))"#;
        assert!(rewrite(plain.as_bytes()).unwrap().is_none());
        let unshared = r#"(module (memory 1) (func (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))))"#;
        assert!(rewrite(unshared.as_bytes()).unwrap().is_none());
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
                let expected = match op.as_str() {
                    "MemoryAtomicWait32" | "MemoryAtomicWait64" | "MemoryAtomicNotify" => {
                        "I32Const"
                    }
                    op => op,
                };
                assert_eq!(
                    after.get(&new).map(String::as_str),
                    Some(expected),
                    "{offset:#x}"
                );
                assert_eq!(map.original_offset(new), Some(offset), "{offset:#x}");
            }
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
                let expected = match op.as_str() {
                    "MemoryAtomicWait32" | "MemoryAtomicWait64" | "MemoryAtomicNotify" => {
                        "I32Const"
                    }
                    op => op,
                };
                assert_eq!(
                    new_ops.get(&new).map(String::as_str),
                    Some(expected),
                    "{old:#x}"
                );
            }
        }
        assert!(on_instructions > 100);
    }
}
