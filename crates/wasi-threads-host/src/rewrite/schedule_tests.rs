//! The schedule mode's instrumentation (see [`super::schedule`]).

use super::*;
use std::sync::Mutex;
use wasmparser::ValType;

/// Every kind of instruction the points are about, on the shared memory
/// (memory 0) and on a memory the module defines (memory 1), which gets no
/// points.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "memory" (memory $shared 1 1 shared))
  (import "env" "other" (func $other))
  (import "wasi_unstable" "sched_yield" (func $yield (result i32)))
  (memory $own 1)
  (global $g (mut i32) (i32.const 5))
  (data $d "xyz")
  (func $start (export "_start") (param $n i32)
    (drop (i32.atomic.load (i32.const 0)))
    (i32.atomic.store (i32.const 0) (i32.const 1))
    (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
    (drop (i64.atomic.rmw8.cmpxchg_u (i32.const 0) (i64.const 0) (i64.const 1)))
    (atomic.fence)
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 1) (i64.const 0)))
    (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))
    (drop (i32.load (i32.const 4)))
    (i64.store (i32.const 8) (i64.const 2))
    (memory.fill (i32.const 0) (i32.const 0) (i32.const 1))
    (memory.copy (i32.const 0) (i32.const 8) (i32.const 1))
    (memory.init $d (i32.const 0) (i32.const 0) (i32.const 1))
    (drop (call $fd_write (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (call $other)
    (drop (call $yield))
    (drop (i32.load $own (i32.const 0)))
    (drop (i32.atomic.load $own (i32.const 0)))
    (memory.copy $own $own (i32.const 0) (i32.const 8) (i32.const 1))
    (loop $l (br_if $l (i32.atomic.load (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
    (global.set $g (i32.const 6))))"#;

fn scheduled(module: &[u8], granularity: Granularity) -> (Vec<u8>, OffsetMap) {
    let binary = to_binary(module).unwrap();
    rewrite_as(&binary, Some(granularity))
        .unwrap()
        .expect("schedule mode always rewrites")
}

fn validate(module: &[u8]) {
    let features = wasmparser::WasmFeatures::default()
        | wasmparser::WasmFeatures::THREADS
        | wasmparser::WasmFeatures::MULTI_MEMORY;
    wasmparser::Validator::new_with_features(features)
        .validate_all(module)
        .unwrap();
}

/// What the scheduling-related parts of a module are.
#[derive(Debug, Default)]
struct Seen {
    /// `module.name: params -> results` of every imported function.
    func_imports: Vec<String>,
    /// Index of the imported `sched.point` and `sched.tick`.
    point: Option<u32>,
    tick: Option<u32>,
    imported_globals: u32,
    /// (mutable, value type, initializer) of every defined global.
    globals: Vec<(bool, ValType, Vec<String>)>,
    /// `(kind, the instruction the point precedes)`, in order.
    points: Vec<(i32, String)>,
    ticks: usize,
    /// `global.set` of the countdown's index (the last global) right after
    /// `call $sched.tick`.
    tick_sets: usize,
}

fn op_name(op: &Operator<'_>) -> String {
    let op = format!("{op:?}");
    op.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

fn seen(module: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let mut types = Vec::new();
    let mut funcs = 0;
    for payload in Parser::new(0).parse_all(module) {
        match payload.unwrap() {
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    types.push(ty.unwrap());
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.unwrap();
                    match import.ty {
                        TypeRef::Func(t) => {
                            let ty = &types[t as usize];
                            seen.func_imports.push(format!(
                                "{}.{}: {:?} -> {:?}",
                                import.module,
                                import.name,
                                ty.params(),
                                ty.results()
                            ));
                            if import.module == HOST_MODULE && import.name == SCHED_POINT {
                                seen.point = Some(funcs);
                            }
                            if import.module == HOST_MODULE && import.name == SCHED_TICK {
                                seen.tick = Some(funcs);
                            }
                            funcs += 1;
                        }
                        TypeRef::Global(_) => seen.imported_globals += 1,
                        _ => {}
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                for global in reader {
                    let global = global.unwrap();
                    let init = global
                        .init_expr
                        .get_operators_reader()
                        .into_iter()
                        .map(|op| format!("{:?}", op.unwrap()))
                        .collect();
                    seen.globals
                        .push((global.ty.mutable, global.ty.content_type, init));
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut reader = body.get_operators_reader().unwrap();
                let mut ops = Vec::new();
                while !reader.eof() {
                    ops.push(reader.read().unwrap());
                }
                let countdown = (seen.imported_globals + seen.globals.len() as u32).wrapping_sub(1);
                for (i, op) in ops.iter().enumerate() {
                    let Operator::Call { function_index } = op else {
                        continue;
                    };
                    if Some(*function_index) == seen.point {
                        let Some(Operator::I32Const { value }) = i.checked_sub(1).map(|j| &ops[j])
                        else {
                            panic!("a point without its kind")
                        };
                        seen.points.push((*value, op_name(&ops[i + 1])));
                    }
                    if Some(*function_index) == seen.tick {
                        seen.ticks += 1;
                        if let Some(Operator::GlobalSet { global_index }) = ops.get(i + 1)
                            && *global_index == countdown
                        {
                            seen.tick_sets += 1;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    seen
}

/// The stop checks of a module whose flag is memory `flag`.
fn stop_checks(module: &[u8], flag: u32) -> usize {
    let mut checks = 0;
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::CodeSectionEntry(body) = payload.unwrap() {
            let mut reader = body.get_operators_reader().unwrap();
            while !reader.eof() {
                if let Operator::I32AtomicLoad { memarg } = reader.read().unwrap()
                    && memarg.memory == flag
                {
                    checks += 1;
                }
            }
        }
    }
    checks
}

const ATOMIC_POINTS: [(i32, &str); 6] = [
    (point_kind::ATOMIC, "I32AtomicLoad"),
    (point_kind::ATOMIC, "I32AtomicStore"),
    (point_kind::ATOMIC, "I32AtomicRmwAdd"),
    (point_kind::ATOMIC, "I64AtomicRmw8CmpxchgU"),
    (point_kind::ATOMIC, "AtomicFence"),
    // The loop's, after its check.
    (point_kind::ATOMIC, "I32AtomicLoad"),
];

fn expected_points(accesses: bool) -> Vec<(i32, String)> {
    let mut points: Vec<(i32, &str)> = ATOMIC_POINTS[..5].to_vec();
    if accesses {
        for op in [
            "I32Load",
            "I64Store",
            "MemoryFill",
            "MemoryCopy",
            "MemoryInit",
        ] {
            points.push((point_kind::ACCESS, op));
        }
    }
    points.push((point_kind::WASI, "Call"));
    points.push((point_kind::WASI, "Call"));
    // The loop is small: unrolled, its body is there twice.
    points.push(ATOMIC_POINTS[5]);
    points.push(ATOMIC_POINTS[5]);
    points
        .into_iter()
        .map(|(k, op)| (k, op.to_string()))
        .collect()
}

#[test]
fn atomics_mode_points_before_atomics_and_wasi_calls_only() {
    for (granularity, accesses) in [(Granularity::Atomics, false), (Granularity::Accesses, true)] {
        let (out, _) = scheduled(GUEST.as_bytes(), granularity);
        validate(&out);
        assert_eq!(
            seen(&out).points,
            expected_points(accesses),
            "{granularity:?}"
        );
    }
}

#[test]
fn the_scheduler_functions_are_imported_after_the_routed_ones() {
    for granularity in [Granularity::Atomics, Granularity::Accesses] {
        let (out, map) = scheduled(GUEST.as_bytes(), granularity);
        let seen = seen(&out);
        assert_eq!(
            seen.func_imports,
            [
                "wasi_snapshot_preview1.fd_write: [I32, I32, I32, I32] -> [I32]",
                "env.other: [] -> []",
                "wasi_unstable.sched_yield: [] -> [I32]",
                "wasi-threads-host.memory.atomic.wait32: [I32, I32, I64, I32] -> [I32]",
                "wasi-threads-host.memory.atomic.wait64: [I32, I64, I64, I32] -> [I32]",
                "wasi-threads-host.memory.atomic.notify: [I32, I32, I32] -> [I32]",
                "wasi-threads-host.sched.point: [I32] -> []",
                "wasi-threads-host.sched.tick: [] -> [I32]",
            ]
        );
        assert_eq!((seen.point, seen.tick), (Some(6), Some(7)));
        // The module's own functions moved past all five.
        assert_eq!(map.original_func_index(8), Some(3));
        assert_eq!(map.original_func_index(6), None);
    }
}

#[test]
fn the_countdown_follows_every_check() {
    let (out, _) = scheduled(GUEST.as_bytes(), Granularity::Atomics);
    let seen = seen(&out);
    // The module's global, then the countdown, mutable, starting at 1.
    assert_eq!(seen.imported_globals, 0);
    assert_eq!(seen.globals.len(), 2);
    let (mutable, ty, init) = &seen.globals[1];
    assert!(mutable);
    assert_eq!(*ty, ValType::I32);
    assert_eq!(init, &["I32Const { value: 1 }", "End"]);
    // The flag is memory 1: after the imported one and before the defined
    // one.
    let checks = stop_checks(&out, 1);
    assert!(checks >= 2, "the loop and the import-calling entry");
    assert_eq!(seen.ticks, checks);
    assert_eq!(seen.tick_sets, checks);
}

#[test]
fn the_normal_rewrite_has_none_of_it() {
    let out = rewrite(GUEST.as_bytes()).unwrap().unwrap();
    validate(&out);
    let seen = seen(&out);
    assert!(seen.point.is_none() && seen.tick.is_none());
    assert!(seen.points.is_empty());
    assert_eq!(seen.globals.len(), 1, "no countdown");
    assert!(
        !seen
            .func_imports
            .iter()
            .any(|i| i.contains("wasi-threads-host.sched.")),
        "{:?}",
        seen.func_imports
    );
}

/// Modules without globals, imports, memory or code still get their
/// countdown (in a global section of its own) and imports.
#[test]
fn sections_the_module_lacks_are_added() {
    for wat in [
        "(module)",
        r#"(module (func (export "f") (loop (br 0))))"#,
        r#"(module (import "env" "memory" (memory 1 1 shared))
             (import "g" "g" (global i32))
             (func (export "f") (drop (i32.atomic.load (i32.const 0)))))"#,
    ] {
        for granularity in [Granularity::Atomics, Granularity::Accesses] {
            let (out, _) = scheduled(wat.as_bytes(), granularity);
            validate(&out);
            let seen = seen(&out);
            assert_eq!(
                seen.func_imports[seen.func_imports.len() - 2..],
                [
                    "wasi-threads-host.sched.point: [I32] -> []",
                    "wasi-threads-host.sched.tick: [] -> [I32]",
                ],
                "{wat}"
            );
            assert_eq!(seen.globals.len(), 1, "{wat}");
            // No waits: the point and tick are the first functions added.
            assert!(
                seen.point
                    .is_some_and(|p| !seen.func_imports[p as usize].contains("wait"))
            );
        }
    }
    // The imported global keeps index 0; the countdown is 1.
    let (out, _) = scheduled(
        br#"(module (import "g" "g" (global i32)) (func (loop (br 0))))"#,
        Granularity::Atomics,
    );
    let seen = seen(&out);
    assert_eq!((seen.imported_globals, seen.tick_sets), (1, 1));
}

#[test]
fn an_already_rewritten_module_is_refused() {
    let once = rewrite(GUEST.as_bytes()).unwrap().unwrap();
    let binary = to_binary(&once).unwrap();
    let err = rewrite_as(&binary, Some(Granularity::Atomics))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already rewritten"), "{err}");
    assert!(!err.contains('\n'));
    // A scheduled module is no module to rewrite again either.
    let (twice, _) = scheduled(GUEST.as_bytes(), Granularity::Atomics);
    assert!(rewrite(&twice).is_err());
    assert!(rewrite_as(&twice, Some(Granularity::Atomics)).is_err());
}

fn instructions(module: &[u8]) -> Vec<(usize, Operator<'_>)> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::CodeSectionEntry(body) = payload.unwrap() {
            let mut ops = body.get_operators_reader().unwrap();
            while !ops.eof() {
                out.push((ops.original_position(), ops.read().unwrap()));
            }
        }
    }
    out
}

/// Every original instruction maps to itself (a pointed one to its point's
/// `i32.const`, a routed wait to its call's) and back, and every
/// instruction of a point maps to the instruction it precedes, in both
/// copies of an unrolled loop's body.
#[test]
fn points_map_to_the_instruction_they_precede() {
    let unrolled = r#"(module (import "env" "memory" (memory 1 1 shared))
      (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
      (func (export "f") (param i32)
        (loop $l
          (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
          (i32.store (i32.const 4) (call $y))
          (br_if $l (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))))"#;
    for module in [GUEST, unrolled] {
        let binary = to_binary(module.as_bytes()).unwrap();
        let (out, map) = scheduled(&binary, Granularity::Accesses);
        validate(&out);
        let decoded = OffsetMap::decode(&map.encode().unwrap()).unwrap();
        let before = instructions(&binary);
        let after = instructions(&out);
        let after_at: std::collections::HashMap<usize, String> =
            after.iter().map(|(at, op)| (*at, op_name(op))).collect();
        let point = seen(&out).point.expect("imported");
        for (offset, op) in &before {
            let new = map.rewritten_offset(*offset).expect("mapped");
            let found = after_at.get(&new).map(String::as_str);
            let name = op_name(op);
            let pointed = found == Some("I32Const");
            assert!(
                found == Some(name.as_str())
                    || pointed
                    || (name == "Loop" && found == Some("Block")),
                "{name} at {offset:#x} became {found:?}"
            );
            assert_eq!(map.original_offset(new), Some(*offset), "{offset:#x}");
        }
        // Each point's two instructions are told as the one after them.
        let mut points = 0;
        for window in after.windows(3) {
            let [
                (c, Operator::I32Const { .. }),
                (call, Operator::Call { function_index }),
                (next, _),
            ] = window
            else {
                continue;
            };
            if *function_index != point {
                continue;
            }
            points += 1;
            let told = map.original_offset(*next).expect("in the code");
            assert_eq!(map.original_offset(*c), Some(told));
            assert_eq!(map.original_offset(*call), Some(told));
            assert_eq!(decoded.original_offset(*call), Some(told));
            let was = before.iter().find(|(at, _)| *at == told).map(|(_, op)| op);
            assert_eq!(
                was.map(op_name),
                Some(op_name(&window[2].1)),
                "a point at {c:#x} told as what it precedes"
            );
        }
        assert!(points >= 3, "{points}");
        if module == unrolled {
            // Both copies of the body have their points: 3 each.
            assert_eq!(points, 6);
        }
    }
}

#[test]
fn bodies_scheduled_on_several_threads_are_the_same_bytes_and_map() {
    let mut wat = String::from(
        r#"(module
          (import "env" "memory" (memory 1 1 shared))
          (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))"#,
    );
    for i in 0..48 {
        wat.push_str(&format!(
            r#"
          (func $f{i} (param $n i32) (result i32)
            (loop $small
              (i32.store offset={i} (i32.const 0) (i32.atomic.load (i32.const 0)))
              (br_if $small (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
            (drop (memory.atomic.wait32 (i32.const 0) (i32.const 1) (i64.const 0)))
            (drop (call $y))
            (if (local.get $n) (then (drop (call $f{i} (i32.const 0)))))
            (i32.load (i32.const {i})))"#
        ));
    }
    wat.push(')');
    let binary = wat::parse_str(&wat).unwrap();
    for granularity in [Granularity::Atomics, Granularity::Accesses] {
        let written = |threads| {
            parallel::FORCE_THREADS.set(Some(threads));
            let (bytes, map) = rewrite_as(&binary, Some(granularity)).unwrap().unwrap();
            parallel::FORCE_THREADS.set(None);
            (bytes, map.encode().unwrap())
        };
        let one = written(1);
        validate(&one.0);
        for threads in [2, 3, 8] {
            assert!(written(threads) == one, "{threads} threads differ");
        }
    }
}

/// A module with DWARF keeps it, remapped onto the instrumented code: every
/// line row of the original is still on an instruction.
#[test]
fn dwarf_is_carried_over() {
    const C_DEBUG_TRAP: &[u8] = include_bytes!("../../../../wasm-fixtures/c-debug-trap.wasm");
    let (out, map) = scheduled(C_DEBUG_TRAP, Granularity::Accesses);
    validate(&out);
    assert!(dwarf::carries_dwarf(&out));
    let seen = seen(&out);
    assert!(seen.points.iter().any(|(k, _)| *k == point_kind::WASI));
    assert!(seen.points.iter().any(|(k, _)| *k == point_kind::ACCESS));
    // The instruction starts the original DWARF's line table names are all
    // mapped to instruction starts.
    let starts: std::collections::HashSet<usize> =
        instructions(&out).into_iter().map(|(at, _)| at).collect();
    for (at, _) in instructions(C_DEBUG_TRAP) {
        let new = map.rewritten_offset(at).unwrap();
        assert!(starts.contains(&new), "{at:#x} -> {new:#x}");
    }
}

#[test]
fn compiled_modules_tell_their_mode() {
    let engine = Engine::new(&crate::engine_config()).unwrap();
    let normal = compile(&engine, GUEST.as_bytes()).unwrap();
    assert_eq!(normal.granularity(), None);
    let scheduled = compile_scheduled(&engine, GUEST.as_bytes(), Granularity::Accesses).unwrap();
    assert_eq!(scheduled.granularity(), Some(Granularity::Accesses));
    assert!(is_prepared(scheduled.module()));
    let err = compile_scheduled(
        &engine,
        &rewrite(GUEST.as_bytes()).unwrap().unwrap(),
        Granularity::Atomics,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already rewritten"), "{err}");
}

#[test]
fn the_cache_keeps_the_modes_apart() {
    let engine = Engine::new(&crate::engine_config()).unwrap();
    let dir = std::env::temp_dir().join(format!("wth-cache-sched-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = ModuleCache::new(&dir);
    let imports = |m: &CompiledModule| {
        m.module()
            .imports()
            .filter(|i| i.name().starts_with("sched."))
            .count()
    };
    for _ in 0..2 {
        // The second round comes from the cache.
        let normal = cache.compile(&engine, GUEST.as_bytes()).unwrap();
        let atomics = cache
            .compile_scheduled(&engine, GUEST.as_bytes(), Granularity::Atomics)
            .unwrap();
        let accesses = cache
            .compile_scheduled(&engine, GUEST.as_bytes(), Granularity::Accesses)
            .unwrap();
        assert_eq!((normal.granularity(), imports(&normal)), (None, 0));
        assert_eq!(
            (atomics.granularity(), imports(&atomics)),
            (Some(Granularity::Atomics), 2)
        );
        assert_eq!(
            (accesses.granularity(), imports(&accesses)),
            (Some(Granularity::Accesses), 2)
        );
    }
    let entries = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        })
        .count();
    assert_eq!(entries, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scheduled module runs with stub scheduler functions: every point is
/// reached with its kind, the first check ticks, and the countdown then
/// ticks every N checks, N being what the tick returned.
#[test]
fn a_scheduled_module_runs_against_stub_scheduler_functions() {
    use wasmtime::{Linker, SharedMemory, Store};
    let wat = r#"(module
      (import "env" "memory" (memory 1 1 shared))
      (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
      (func (export "run") (param $n i32) (result i32)
        (drop (call $y))
        (loop $l
          (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
          (i32.store (i32.const 4) (i32.load (i32.const 4)))
          (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
        (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))
        (i32.atomic.load (i32.const 0))))"#;
    let engine = Engine::new(&crate::engine_config()).unwrap();
    // Six checks: the entry's (the function calls an import) and five of
    // the loop, which is unrolled: ten iterations, a check every second.
    for (granularity, tick_every, expected_ticks) in [
        (Granularity::Atomics, 1, 6),
        // At the first check and the fourth.
        (Granularity::Accesses, 3, 2),
        // <= 0 is taken as 1 (as 0 or less, the countdown would not reach
        // 0 again for billions of checks).
        (Granularity::Atomics, 0, 6),
        (Granularity::Atomics, -5, 6),
    ] {
        let compiled = compile_scheduled(&engine, wat.as_bytes(), granularity).unwrap();
        let mut store = Store::new(&engine, ());
        let mut linker = Linker::new(&engine);
        let shared = |min| SharedMemory::new(&engine, wasmtime::MemoryType::shared(min, min));
        linker
            .define(&store, "env", "memory", shared(1).unwrap())
            .unwrap();
        linker
            .define(&store, HOST_MODULE, STOP_FLAG, shared(1).unwrap())
            .unwrap();
        linker
            .func_wrap("wasi_snapshot_preview1", "sched_yield", || 0i32)
            .unwrap();
        linker
            .func_wrap(HOST_MODULE, WAIT32, |_: i32, _: i32, _: i64, _: i32| 0i32)
            .unwrap();
        linker
            .func_wrap(HOST_MODULE, WAIT64, |_: i32, _: i64, _: i64, _: i32| 0i32)
            .unwrap();
        let notifies = Arc::new(Mutex::new(0));
        let n = notifies.clone();
        linker
            .func_wrap(HOST_MODULE, NOTIFY, move |_: i32, _: i32, _: i32| {
                *n.lock().unwrap() += 1;
                0i32
            })
            .unwrap();
        let points = Arc::new(Mutex::new(Vec::new()));
        let p = points.clone();
        linker
            .func_wrap(HOST_MODULE, SCHED_POINT, move |kind: i32| {
                p.lock().unwrap().push(kind)
            })
            .unwrap();
        let ticks = Arc::new(Mutex::new(0));
        let t = ticks.clone();
        linker
            .func_wrap(HOST_MODULE, SCHED_TICK, move || {
                *t.lock().unwrap() += 1;
                tick_every
            })
            .unwrap();
        let instance = linker.instantiate(&mut store, compiled.module()).unwrap();
        let run = instance
            .get_typed_func::<i32, i32>(&mut store, "run")
            .unwrap();
        assert_eq!(run.call(&mut store, 10).unwrap(), 10);
        let points = points.lock().unwrap().clone();
        let count = |kind| points.iter().filter(|k| **k == kind).count();
        let accesses = if granularity == Granularity::Accesses {
            20
        } else {
            0
        };
        assert_eq!(count(point_kind::WASI), 1);
        assert_eq!(count(point_kind::ATOMIC), 11, "10 adds and the load");
        assert_eq!(count(point_kind::ACCESS), accesses);
        assert_eq!(points.len(), 12 + accesses);
        assert_eq!(*notifies.lock().unwrap(), 1);
        assert_eq!(*ticks.lock().unwrap(), expected_ticks, "{tick_every}");
    }
}

/// Every guest the tests run (and the rewrite corpus) is instrumented into
/// a valid module at both granularities, or refused as the normal rewrite
/// refuses it.
#[test]
fn every_fixture_and_corpus_module_is_scheduled_validly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut modules = 0;
    for dir in ["tests/rewrite-corpus", "wasm-fixtures"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("wat" | "wasm")
            ) {
                continue;
            }
            let binary = to_binary(&std::fs::read(&path).unwrap())
                .unwrap()
                .into_owned();
            if let Err(normal) = rewrite_with_map(&binary) {
                let err = rewrite_as(&binary, Some(Granularity::Atomics)).unwrap_err();
                assert_eq!(err.to_string(), normal.to_string());
                continue;
            }
            modules += 1;
            for granularity in [Granularity::Atomics, Granularity::Accesses] {
                let (out, _) = scheduled(&binary, granularity);
                validate(&out);
                let seen = seen(&out);
                assert!(seen.point.is_some() && seen.tick.is_some(), "{path:?}");
            }
        }
    }
    assert!(modules > 30, "{modules}");
}

/// A scheduler that fails a point (as one stopping the thread there would)
/// leaves a backtrace told at the instruction the point precedes, in the
/// offsets of the module the user built.
#[test]
fn a_trap_in_a_point_is_told_at_the_instruction_it_precedes() {
    use wasmtime::{Linker, SharedMemory, Store, WasmBacktrace};
    let wat = r#"(module
      (import "env" "memory" (memory 1 1 shared))
      (func $inner (export "run")
        (i32.store (i32.const 4) (i32.const 1))
        (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))))"#;
    let binary = to_binary(wat.as_bytes()).unwrap().into_owned();
    let [atomic] = instructions(&binary)
        .into_iter()
        .filter(|(_, op)| matches!(op, Operator::I32AtomicRmwAdd { .. }))
        .map(|(at, _)| at)
        .collect::<Vec<_>>()[..]
    else {
        panic!("one atomic add")
    };
    let engine = Engine::new(&crate::engine_config()).unwrap();
    let compiled = compile_scheduled(&engine, &binary, Granularity::Accesses).unwrap();
    let mut store = Store::new(&engine, ());
    let mut linker = Linker::new(&engine);
    let shared = || SharedMemory::new(&engine, wasmtime::MemoryType::shared(1, 1)).unwrap();
    linker.define(&store, "env", "memory", shared()).unwrap();
    linker
        .define(&store, HOST_MODULE, STOP_FLAG, shared())
        .unwrap();
    linker
        .func_wrap(HOST_MODULE, SCHED_POINT, |kind: i32| -> Result<()> {
            match kind {
                point_kind::ATOMIC => bail!("stopped at a point"),
                _ => Ok(()),
            }
        })
        .unwrap();
    linker.func_wrap(HOST_MODULE, SCHED_TICK, || 1i32).unwrap();
    let instance = linker.instantiate(&mut store, compiled.module()).unwrap();
    let run = instance
        .get_typed_func::<(), ()>(&mut store, "run")
        .unwrap();
    let err = run.call(&mut store, ()).unwrap_err();
    let backtrace = err.downcast_ref::<WasmBacktrace>().expect("a backtrace");
    let frame = &backtrace.frames()[0];
    let offset = frame.module_offset().expect("an offset");
    assert_eq!(compiled.offsets().original_offset(offset), Some(atomic));
    let formatted = compiled.format_backtrace(backtrace);
    assert!(formatted.contains(&format!("{atomic:#8x}")), "{formatted}");
}
