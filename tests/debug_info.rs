//! Traps and debuggers see the user's own module: the rewrite keeps the
//! module's DWARF with its addresses remapped, and backtraces can be told in
//! the offsets of the file the user built.

mod common;

use std::ops::Range;
use wasi_threads_host::{CompiledModule, Outcome, Runner, compile, engine_config};
use wasmparser::{Operator, Parser, Payload};
use wasmtime::{Engine, Linker, Store, WasmBacktrace, WasmBacktraceDetails};

fn engine() -> Engine {
    let mut config = engine_config();
    config.wasm_backtrace_details(WasmBacktraceDetails::Enable);
    Engine::new(&config).unwrap()
}

/// The body range of the function whose name (name section) contains
/// `name`, in the original file.
fn function_body(bytes: &[u8], name: &str) -> Range<usize> {
    let mut imported = 0;
    let mut bodies = Vec::new();
    let mut index = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.unwrap() {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if matches!(import.unwrap().ty, wasmparser::TypeRef::Func(_)) {
                        imported += 1;
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body.range()),
            Payload::CustomSection(section) => {
                if let wasmparser::KnownCustom::Name(reader) = section.as_known() {
                    for subsection in reader {
                        if let wasmparser::Name::Function(map) = subsection.unwrap() {
                            for naming in map {
                                let naming = naming.unwrap();
                                if naming.name.contains(name) && index.is_none() {
                                    index = Some(naming.index);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let index = index.unwrap_or_else(|| panic!("no function named {name}"));
    bodies[(index - imported) as usize].clone()
}

/// The instructions (offset, operator name) of the code at `range`.
fn instructions(bytes: &[u8], body: Range<usize>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        if let Payload::CodeSectionEntry(b) = payload.unwrap()
            && b.range() == body
        {
            let mut ops = b.get_operators_reader().unwrap();
            while !ops.eof() {
                let at = ops.original_position();
                let op = ops.read().unwrap();
                out.push((at, operator_name(&op)));
            }
        }
    }
    out
}

fn operator_name(op: &Operator<'_>) -> String {
    let debug = format!("{op:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `(offset, function line)` of every frame of a Wasmtime-formatted
/// backtrace, and the `at file:line` lines under it.
fn frames(backtrace: &str) -> Vec<(usize, String, Vec<String>)> {
    let mut frames: Vec<(usize, String, Vec<String>)> = Vec::new();
    for line in backtrace.lines() {
        let trimmed = line.trim();
        if let Some(at) = trimmed.strip_prefix("at ") {
            if let Some(frame) = frames.last_mut() {
                frame.2.push(at.to_string());
            }
            continue;
        }
        let Some((index, rest)) = trimmed.split_once(": ") else {
            continue;
        };
        if index.parse::<usize>().is_err() {
            continue;
        }
        let Some((offset, name)) = rest.split_once(" - ") else {
            continue;
        };
        let Some(offset) = offset.trim().strip_prefix("0x") else {
            continue;
        };
        frames.push((
            usize::from_str_radix(offset, 16).unwrap(),
            name.to_string(),
            Vec::new(),
        ));
    }
    frames
}

/// Runs a fixture whose spawned thread traps; returns the module as
/// compiled and the backtrace the host reported.
fn trap_in_thread(fixture: &str) -> (Vec<u8>, CompiledModule, String) {
    let bytes = std::fs::read(common::fixture(fixture)).unwrap();
    let engine = engine();
    let guest = compile(&engine, &bytes).unwrap();
    assert!(!guest.offsets().is_identity(), "the fixture is rewritten");
    let outcome = Runner::new()
        .stdio(wasi_threads_host::Stdio::new())
        .run_module(&guest)
        .unwrap();
    let Outcome::Trap { trap, .. } = outcome else {
        panic!("expected a trap, got {outcome}");
    };
    let backtrace = trap.backtrace().expect("a backtrace").to_string();
    (bytes, guest, backtrace)
}

/// Checks the frame of `function`: its source line, and that its offset, as
/// the host reported it (in the original module's coordinates, not the
/// rewritten one's), is a `call` (or, for the trapping frame, the
/// instruction that trapped) inside that function's body in the fixture
/// file.
fn check_frame(
    bytes: &[u8],
    guest: &CompiledModule,
    backtrace: &str,
    (function, symbol): (&str, &str),
    source: &str,
    expected_op: &str,
) {
    let frames = frames(backtrace);
    let (offset, _, at) = frames
        .iter()
        .find(|(_, name, _)| name.contains(function))
        .unwrap_or_else(|| panic!("no frame {function} in\n{backtrace}"));
    assert!(
        at.iter().any(|at| at.contains(source)),
        "frame {function} is not at {source}: {at:?}\n{backtrace}"
    );
    let original = *offset;
    // The rewrite moved this code: the reported offset is not the rewritten
    // module's own.
    assert_ne!(
        guest.offsets().rewritten_offset(original),
        Some(original),
        "the fixture's code should have moved in the rewrite"
    );
    let body = function_body(bytes, symbol);
    assert!(
        body.contains(&original),
        "{original:#x} is outside {function} ({body:x?})"
    );
    let instructions = instructions(bytes, body);
    let op = instructions
        .iter()
        .find(|(at, _)| *at == original)
        .map(|(_, op)| op.as_str());
    assert_eq!(
        op,
        Some(expected_op),
        "at {original:#x} in the fixture: {instructions:?}"
    );
}

#[test]
fn rust_panic_in_a_thread_shows_the_users_file_line_and_offsets() {
    let (bytes, guest, backtrace) = trap_in_thread("rust-debug-trap.wasm");
    check_frame(
        &bytes,
        &guest,
        &backtrace,
        ("rust_debug_trap::boom", "rust_debug_trap4boom"),
        "src/main.rs:6:5",
        "Call",
    );
    check_frame(
        &bytes,
        &guest,
        &backtrace,
        (
            "rust_debug_trap::main::{{closure}}",
            "rust_debug_trap4main28_$u7b$$u7b$closure$u7d$$u7d$",
        ),
        "src/main.rs:13:9",
        "Call",
    );
}

#[test]
fn c_trap_in_a_thread_shows_the_users_file_line_and_offsets() {
    let (bytes, guest, backtrace) = trap_in_thread("c-debug-trap.wasm");
    check_frame(
        &bytes,
        &guest,
        &backtrace,
        ("boom", "boom"),
        "c-debug-trap.c:12:5",
        "Unreachable",
    );
    check_frame(
        &bytes,
        &guest,
        &backtrace,
        ("worker", "worker"),
        "c-debug-trap.c:19:5",
        "Call",
    );
}

/// `CompiledModule::format_backtrace` tells a trap in the offsets of the file
/// the user built, and function indices from before the rewrite's imports.
#[test]
fn backtraces_are_formatted_in_the_original_offsets() {
    let wat = r#"(module $demo
      (import "env" "memory" (memory 1 1 shared))
      (func $inner (export "inner")
        (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))
        unreachable)
      (func $outer (export "outer") (call $inner)))"#;
    let original = wat::parse_str(wat).unwrap();
    let engine = engine();
    let guest = compile(&engine, &original).unwrap();
    assert!(!guest.offsets().is_identity());

    let mut store = Store::new(&engine, ());
    let mut linker = Linker::new(&engine);
    let flag = wasmtime::SharedMemory::new(&engine, wasmtime::MemoryType::shared(1, 1)).unwrap();
    linker
        .define(&store, "wasi-threads-host", "stop-flag", flag)
        .unwrap();
    let memory = wasmtime::SharedMemory::new(&engine, wasmtime::MemoryType::shared(1, 1)).unwrap();
    linker.define(&store, "env", "memory", memory).unwrap();
    linker
        .func_wrap(
            "wasi-threads-host",
            "memory.atomic.wait32",
            |_: i32, _: i32, _: i64, _: i32| 0,
        )
        .unwrap();
    linker
        .func_wrap(
            "wasi-threads-host",
            "memory.atomic.wait64",
            |_: i32, _: i64, _: i64, _: i32| 0,
        )
        .unwrap();
    linker
        .func_wrap(
            "wasi-threads-host",
            "memory.atomic.notify",
            |_: i32, _: i32, _: i32| 0,
        )
        .unwrap();
    let instance = linker.instantiate(&mut store, guest.module()).unwrap();
    let outer = instance
        .get_typed_func::<(), ()>(&mut store, "outer")
        .unwrap();
    let err = outer.call(&mut store, ()).unwrap_err();
    let backtrace = err.downcast_ref::<WasmBacktrace>().unwrap();
    let text = guest.format_backtrace(backtrace);

    let inner = instructions(&original, function_body(&original, "inner"));
    let unreachable = inner.iter().find(|(_, op)| op == "Unreachable").unwrap().0;
    let outer_code = instructions(&original, function_body(&original, "outer"));
    let call = outer_code.iter().find(|(_, op)| op == "Call").unwrap().0;
    let frames = frames(&text);
    assert_eq!(frames.len(), 2, "{text}\n{backtrace}");
    assert_eq!(frames[0].0, unreachable, "{text}");
    assert!(frames[0].1.ends_with("demo!inner"), "{text}");
    assert_eq!(frames[1].0, call, "{text}");
    assert!(frames[1].1.ends_with("demo!outer"), "{text}");
    // Wasmtime's own text has the rewritten module's offsets.
    assert_ne!(backtrace.to_string(), text);
}

/// The DWARF of a rewritten module passes `llvm-dwarfdump --verify` as the
/// original does.
#[test]
fn rewritten_dwarf_passes_llvm_dwarfdump_verify() {
    let Some(tool) = ["llvm-dwarfdump-19", "llvm-dwarfdump"]
        .into_iter()
        .find(|tool| {
            std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        eprintln!("skipped: llvm-dwarfdump not found (apt-get install llvm-19)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("wasi-threads-dwarf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for fixture in ["c-debug-trap.wasm", "rust-debug-trap.wasm"] {
        let bytes = std::fs::read(common::fixture(fixture)).unwrap();
        let rewritten = wasi_threads_host::rewrite(&bytes).unwrap().unwrap();
        for (name, module) in [("original", &bytes), ("rewritten", &rewritten)] {
            let path = dir.join(format!("{name}-{fixture}"));
            std::fs::write(&path, module).unwrap();
            let out = std::process::Command::new(tool)
                .arg("--verify")
                .arg(&path)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{tool} --verify failed on the {name} {fixture}:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Keep the modules for a look with other tools when asked to.
    if std::env::var_os("KEEP_REWRITTEN_MODULES").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("modules kept in {}", dir.display());
    }
}

/// With `Config::debug_info`, Wasmtime transforms the module's DWARF for
/// native debuggers: the remapped DWARF must go through that transform, and
/// the program still runs (and traps) as without it.
#[test]
fn native_debug_info_accepts_the_remapped_dwarf() {
    let mut config = engine_config();
    config.debug_info(true);
    config.wasm_backtrace_details(WasmBacktraceDetails::Enable);
    let engine = Engine::new(&config).unwrap();
    for fixture in ["c-debug-trap.wasm", "rust-debug-trap.wasm"] {
        let bytes = std::fs::read(common::fixture(fixture)).unwrap();
        let guest = compile(&engine, &bytes).unwrap();
        let outcome = Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .run_module(&guest)
            .unwrap();
        let Outcome::Trap { trap, .. } = outcome else {
            panic!("{fixture}: expected a trap, got {outcome}");
        };
        let backtrace = trap.backtrace().unwrap_or_default();
        assert!(backtrace.contains("boom"), "{fixture}: {backtrace}");
    }
}
