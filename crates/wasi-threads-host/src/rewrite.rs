//! Rewriting `memory.atomic.wait32/64` and `memory.atomic.notify` on the
//! shared memory into calls of host functions.
//!
//! A thread parked in a native `memory.atomic.wait` is out of everyone's
//! reach: epoch interruption does not wake it, and `SharedMemory::atomic_notify`
//! only wakes an address one already knows. Routing every wait and notify of
//! the module through the host's own parking lot ([`crate::wait`]) lets the
//! supervisor wake every parked thread at once, whatever address it waits on.
//!
//! Each instruction becomes `i32.const <memarg offset>; call <host function>`:
//! the operands already on the stack stay where they are and the offset
//! travels as one more argument, so no locals are needed and every other part
//! of the module is re-encoded unchanged apart from function indices, which
//! shift by the three imports added after the module's own function imports.

use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{Operator, Parser, Payload, TypeRef};
use wasmtime::{Engine, Module, Result, bail, format_err};

/// The import module of the host functions the rewrite calls.
pub const HOST_MODULE: &str = "wasi-threads-host";
/// `(addr: i32, expected: i32, timeout_ns: i64, offset: i32) -> i32`
pub const WAIT32: &str = "memory.atomic.wait32";
/// `(addr: i32, expected: i64, timeout_ns: i64, offset: i32) -> i32`
pub const WAIT64: &str = "memory.atomic.wait64";
/// `(addr: i32, count: i32, offset: i32) -> i32`
pub const NOTIFY: &str = "memory.atomic.notify";

/// What the scan of a module found.
struct Scan {
    imported_funcs: u32,
    types: u32,
    /// The index of the memory to rewrite: the imported shared memory.
    shared_memory: Option<u32>,
    uses_atomics_on_it: bool,
    already_rewritten: bool,
}

fn scan(bytes: &[u8]) -> Result<Scan> {
    let mut scan = Scan {
        imported_funcs: 0,
        types: 0,
        shared_memory: None,
        uses_atomics_on_it: false,
        already_rewritten: false,
    };
    let mut memories = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    scan.types += group?.types().len() as u32;
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    if import.module == HOST_MODULE {
                        scan.already_rewritten = true;
                    }
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => scan.imported_funcs += 1,
                        TypeRef::Memory(ty) => {
                            if ty.shared && !ty.memory64 && scan.shared_memory.is_none() {
                                scan.shared_memory = Some(memories);
                            }
                            memories += 1;
                        }
                        _ => {}
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let Some(shared) = scan.shared_memory else {
                    continue;
                };
                if scan.uses_atomics_on_it {
                    continue;
                }
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    if wait_or_notify_memory(&ops.read()?) == Some(shared) {
                        scan.uses_atomics_on_it = true;
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(scan)
}

fn wait_or_notify_memory(op: &Operator<'_>) -> Option<u32> {
    match op {
        Operator::MemoryAtomicWait32 { memarg }
        | Operator::MemoryAtomicWait64 { memarg }
        | Operator::MemoryAtomicNotify { memarg } => Some(memarg.memory),
        _ => None,
    }
}

/// Compiles a module for use with [`WasiThreads`](crate::WasiThreads),
/// routing its atomic waits through the host so that the supervisor can wake
/// threads parked in them. Use it instead of `Module::new`: a module compiled
/// without it still runs, but threads parked in `memory.atomic.wait` when the
/// program ends cannot be stopped and are detached.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Module> {
    let binary = to_binary(bytes)?;
    Module::validate(engine, &binary)?;
    match rewrite(&binary)? {
        Some(rewritten) => {
            log::debug!("routed the module's atomic waits through the host");
            Module::new(engine, &rewritten)
        }
        None => Module::new(engine, &binary),
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
/// memory routed through the host, or `None` if it has none (or was already
/// rewritten). Text-format input is accepted and returned as binary.
pub fn rewrite(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let binary = to_binary(bytes)?;
    let scan = scan(&binary).map_err(|e| e.context("invalid WebAssembly module"))?;
    let Some(memory) = scan.shared_memory else {
        return Ok(None);
    };
    if !scan.uses_atomics_on_it || scan.already_rewritten {
        return Ok(None);
    }
    let mut rewriter = Rewriter {
        memory,
        imported_funcs: scan.imported_funcs,
        wait32_type: scan.types,
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), &binary)
        .map_err(|e| format_err!("cannot rewrite the module's atomic waits: {e}"))?;
    Ok(Some(module.finish()))
}

struct Rewriter {
    memory: u32,
    imported_funcs: u32,
    /// The first of the three types added at the end of the type section.
    wait32_type: u32,
}

const ADDED_FUNCS: u32 = 3;

impl Rewriter {
    fn wait32_func(&self) -> u32 {
        self.imported_funcs
    }
    fn wait64_func(&self) -> u32 {
        self.imported_funcs + 1
    }
    fn notify_func(&self) -> u32 {
        self.imported_funcs + 2
    }
}

impl Reencode for Rewriter {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(if func >= self.imported_funcs {
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
        use wasm_encoder::ValType::{I32, I64};
        types.ty().function([I32, I32, I64, I32], [I32]);
        types.ty().function([I32, I64, I64, I32], [I32]);
        types.ty().function([I32, I32, I32], [I32]);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_import_section(self, imports, section)?;
        use wasm_encoder::EntityType::Function;
        imports.import(HOST_MODULE, WAIT32, Function(self.wait32_type));
        imports.import(HOST_MODULE, WAIT64, Function(self.wait32_type + 1));
        imports.import(HOST_MODULE, NOTIFY, Function(self.wait32_type + 2));
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let mut func = self.new_function_with_parsed_locals(&body)?;
        let mut ops = body.get_operators_reader()?;
        while !ops.eof() {
            let op = ops.read()?;
            let target = match &op {
                Operator::MemoryAtomicWait32 { memarg } if memarg.memory == self.memory => {
                    Some((self.wait32_func(), memarg.offset))
                }
                Operator::MemoryAtomicWait64 { memarg } if memarg.memory == self.memory => {
                    Some((self.wait64_func(), memarg.offset))
                }
                Operator::MemoryAtomicNotify { memarg } if memarg.memory == self.memory => {
                    Some((self.notify_func(), memarg.offset))
                }
                _ => None,
            };
            match target {
                Some((host_func, offset)) => {
                    // A 32-bit memory's offsets are below 2^32; passed as the
                    // bits of an i32 and read back as u32 by the host.
                    func.instruction(&wasm_encoder::Instruction::I32Const(offset as u32 as i32));
                    func.instruction(&wasm_encoder::Instruction::Call(host_func));
                }
                None => {
                    func.instruction(&self.instruction(op)?);
                }
            }
        }
        code.function(&func);
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // DWARF describes code offsets the rewrite moved; wrong line numbers
        // would be worse than none.
        if section.name().starts_with(".debug_") {
            return Ok(());
        }
        reencode::utils::parse_custom_section(self, module, section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let plain =
            r#"(module (import "env" "memory" (memory 1 1 shared)) (func (export "_start")))"#;
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
}
