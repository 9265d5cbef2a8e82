//! Differential testing of `wasi_threads_host::rewrite`.
//!
//! Every module the host runs passes through the rewrite, so a mistake in it
//! silently corrupts someone's program. This crate generates modules with
//! `wasm-smith` ([`generate`]), and [`check`] runs each before and after the
//! rewrite in Wasmtime on one thread, asserting that an embedder sees the
//! same: the result or trap of every exported function and every function in
//! a table, called with fixed arguments, the host imports called, and the
//! final memories, globals and tables. It also asserts that the rewritten
//! module validates and that rewriting it again changes nothing. Memories
//! and tables are capped alike on both sides ([`MAX_MEMORY_PAGES`],
//! [`MAX_TABLE_ELEMENTS`]), so that no observation copies a size the
//! generated module chose.
//!
//! Used by the `cargo fuzz` target in `fuzz/`, by the stable runner
//! (`cargo run --release -p rewrite-diff -- --seconds N`) and by the
//! `rewrite_fuzz` test, which replays `tests/rewrite-corpus/`.

mod generate;
mod run;

pub use generate::{generate, prepare};
pub use run::{
    Failure, MAX_MEMORY_PAGES, MAX_TABLE_ELEMENTS, Observation, Outcome, Value, engine, observe,
};

use wasmparser::{Operator, Parser, Payload, TypeRef};
use wasmtime::Module;

/// What comparing one module showed, when it showed no bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The rewrite rightly left the module alone (no wait or notify on an
    /// imported shared 32-bit memory).
    NotApplicable,
    /// Both sides ran to the end and agreed on everything.
    Same {
        /// Instantiation plus calls compared.
        steps: usize,
    },
    /// One side ran out of fuel or stack (which the rewrite legitimately
    /// changes): the steps before it agreed, the rest was not compared.
    Inconclusive { steps: usize },
    /// The host refuses the module at load: it waits on a shared memory the
    /// host cannot interrupt (a 64-bit one, or one the module defines), so
    /// such a wait could never be stopped.
    Refused,
}

/// A module on which the rewrite is wrong, or on which the harness itself
/// failed (a bug in the test).
#[derive(Debug, Clone)]
pub struct Bug(pub String);

impl std::fmt::Display for Bug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether the module waits on or notifies the memory the rewrite routes.
fn waits_on_rewritten_memory(wasm: &[u8]) -> Result<bool, String> {
    let mut target = None;
    let mut memories = 0u32;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    if let TypeRef::Memory(m) = import.map_err(|e| e.to_string())?.ty {
                        if m.shared && !m.memory64 && target.is_none() {
                            target = Some(memories);
                        }
                        memories += 1;
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let Some(target) = target else {
                    return Ok(false);
                };
                let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
                while !ops.eof() {
                    match ops.read().map_err(|e| e.to_string())? {
                        Operator::MemoryAtomicWait32 { memarg }
                        | Operator::MemoryAtomicWait64 { memarg }
                        | Operator::MemoryAtomicNotify { memarg }
                            if memarg.memory == target =>
                        {
                            return Ok(true);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// Checks one module (binary or text): the rewrite of a valid module must
/// succeed, validate, be a fixed point, and behave as the original does.
pub fn check(original: &[u8]) -> Result<Verdict, Bug> {
    let original = if original.starts_with(b"\0asm") {
        original.to_vec()
    } else {
        let text = std::str::from_utf8(original).map_err(|e| Bug(format!("harness: {e}")))?;
        wat::parse_str(text).map_err(|e| Bug(format!("harness: invalid text: {e}")))?
    };
    let engine = engine();
    let original_module = Module::new(engine, &original)
        .map_err(|e| Bug(format!("harness: the original module is invalid: {e:#}")))?;
    let should_rewrite =
        waits_on_rewritten_memory(&original).map_err(|e| Bug(format!("harness: {e}")))?;
    let rewritten = match wasi_threads_host::rewrite(&original) {
        Ok(Some(rewritten)) => rewritten,
        Ok(None) if should_rewrite => {
            return Err(Bug(
                "rewrite left alone a module that waits on its imported shared memory".into(),
            ));
        }
        Ok(None) => return Ok(Verdict::NotApplicable),
        Err(e) if format!("{e:#}").contains("could never be stopped") => {
            return Ok(Verdict::Refused);
        }
        Err(e) => return Err(Bug(format!("rewrite failed on a valid module: {e:#}"))),
    };
    let rewritten_module = Module::new(engine, &rewritten)
        .map_err(|e| Bug(format!("the rewritten module is invalid: {e:#}")))?;
    if waits_on_rewritten_memory(&rewritten).map_err(|e| Bug(format!("harness: {e}")))? {
        return Err(Bug("the rewritten module still waits natively".into()));
    }
    match wasi_threads_host::rewrite(&rewritten) {
        Ok(None) => {}
        Ok(Some(again)) if again == rewritten => {}
        Ok(Some(_)) => return Err(Bug("rewriting the rewritten module changed it".into())),
        Err(e) => return Err(Bug(format!("rewriting the rewritten module failed: {e:#}"))),
    }
    offset_map_round_trip(&original, &rewritten)?;

    let before = observe(&original_module).map_err(|e| Bug(format!("harness: {e}")))?;
    let after = observe(&rewritten_module).map_err(|e| Bug(format!("harness: {e}")))?;
    compare(&before, &after)
}

/// The rewrite's offset map: every instruction of the original maps to the
/// start of an instruction of the same kind in the rewritten module (a
/// routed wait or notify to the `i32.const` that begins its host call), and
/// back to itself.
fn offset_map_round_trip(original: &[u8], rewritten: &[u8]) -> Result<(), Bug> {
    let (again, map) = wasi_threads_host::rewrite_with_map(original)
        .map_err(|e| Bug(format!("rewrite_with_map failed: {e:#}")))?
        .ok_or_else(|| Bug("rewrite_with_map left alone a module rewrite changed".into()))?;
    if again != rewritten {
        return Err(Bug("the rewrite is not deterministic".into()));
    }
    let before = instructions(original).map_err(|e| Bug(format!("harness: {e}")))?;
    let after: std::collections::HashMap<usize, String> = instructions(rewritten)
        .map_err(|e| Bug(format!("harness: {e}")))?
        .into_iter()
        .collect();
    for (offset, kind) in before {
        let moved = map
            .rewritten_offset(offset)
            .ok_or_else(|| Bug(format!("{kind} at {offset:#x} has no rewritten offset")))?;
        let routed = matches!(
            kind.as_str(),
            "MemoryAtomicWait32" | "MemoryAtomicWait64" | "MemoryAtomicNotify"
        );
        match after.get(&moved) {
            // An unrolled loop maps to the block the rewrite put around it.
            Some(new)
                if *new == kind
                    || (routed && new == "I32Const")
                    || (kind == "Loop" && new == "Block") => {}
            other => {
                return Err(Bug(format!(
                    "{kind} at {offset:#x} maps to {moved:#x}, which is {other:?}"
                )));
            }
        }
        if map.original_offset(moved) != Some(offset) {
            return Err(Bug(format!(
                "{kind} at {offset:#x} maps to {moved:#x}, which maps back to {:?}",
                map.original_offset(moved)
            )));
        }
    }
    Ok(())
}

/// Every instruction of every function body: its offset in the module and
/// its kind (the operator's name).
fn instructions(bytes: &[u8]) -> wasmparser::Result<Vec<(usize, String)>> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        if let Payload::CodeSectionEntry(body) = payload? {
            let mut ops = body.get_operators_reader()?;
            while !ops.eof() {
                let (op, offset) = ops.read_with_offset()?;
                let name = format!("{op:?}");
                let kind = name
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .next()
                    .unwrap_or_default()
                    .to_string();
                out.push((offset, kind));
            }
        }
    }
    Ok(out)
}

fn compare(before: &Observation, after: &Observation) -> Result<Verdict, Bug> {
    let inconclusive = before.inconclusive() || after.inconclusive();
    let steps = before.steps.len().min(after.steps.len());
    // The last step of an inconclusive run says nothing: compare the ones
    // before it.
    let comparable = if inconclusive { steps - 1 } else { steps };
    for i in 0..comparable {
        if before.steps[i] != after.steps[i] {
            return Err(Bug(format!(
                "step {i} differs:\n  original:  {:?}\n  rewritten: {:?}",
                before.steps[i], after.steps[i]
            )));
        }
    }
    if inconclusive {
        return Ok(Verdict::Inconclusive { steps: comparable });
    }
    if before.steps.len() != after.steps.len() {
        return Err(Bug(format!(
            "different numbers of steps: {} before, {} after",
            before.steps.len(),
            after.steps.len()
        )));
    }
    if before.host_calls != after.host_calls {
        return Err(Bug(format!(
            "host imports called differently:\n  original:  {:?}\n  rewritten: {:?}",
            before.host_calls, after.host_calls
        )));
    }
    if before.globals != after.globals {
        return Err(Bug(format!(
            "globals differ:\n  original:  {:?}\n  rewritten: {:?}",
            before.globals, after.globals
        )));
    }
    if before.tables != after.tables {
        return Err(Bug(format!(
            "tables differ:\n  original:  {:?}\n  rewritten: {:?}",
            before.tables, after.tables
        )));
    }
    if before.memories.len() != after.memories.len() {
        return Err(Bug("different numbers of memories".into()));
    }
    for (i, (a, b)) in before.memories.iter().zip(&after.memories).enumerate() {
        if a != b {
            let first = a
                .iter()
                .zip(b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            return Err(Bug(format!(
                "memory {i} differs (sizes {} and {}), first at byte {first}",
                a.len(),
                b.len()
            )));
        }
    }
    Ok(Verdict::Same { steps })
}

/// The fuzzer input for a seed of the stable runner and the test: a
/// deterministic stream of bytes (SplitMix64), long enough for `wasm-smith`.
pub fn seed_bytes(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let len = 1024 + (next() % 8192) as usize;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The module for a seed of the stable runner and the test, and how many
/// inputs were drawn for it: the seed's own bytes and, while they make a
/// module this Wasmtime cannot run (see [`generate`]), bytes of derived
/// seeds.
pub fn module_for_seed(seed: u64) -> (Vec<u8>, u32) {
    let mut attempts = 0;
    loop {
        let bytes = seed_bytes(seed ^ (u64::from(attempts) << 48));
        attempts += 1;
        let mut u = arbitrary::Unstructured::new(&bytes);
        if let Ok(wasm) = generate(&mut u) {
            return (wasm, attempts);
        }
    }
}

/// The text form of a module, for saving a failing case to the corpus.
pub fn to_text(wasm: &[u8]) -> String {
    wasmprinter::print_bytes(wasm).unwrap_or_else(|e| format!(";; unprintable: {e}"))
}
